"""Synthetic music-listening world: catalogue, users and a month of plays.

The model, from the catalogue to the plays:

* **Genres** (35 by default) have Zipf popularity: genre ``k`` weighs ``1 / (k + 1) ** s``, so
  genre 0 ("pop") is the most popular.
* **Artists** have heavy-tailed (lognormal) popularity and 1-3 distinct genres, drawn without
  replacement by genre popularity.
* **Songs**: every artist gets one song, the remaining songs go to artists by artist popularity.
  A song inherits its artist's genres; its popularity is its artist's popularity times lognormal
  song-level noise; its duration is lognormal around 3.5 min, clipped to [45 s, 12 min].
* **Users** are casual, regular or power listeners (50/35/15 % by default). A user's activity is
  the expected number of sessions per day (the type's mean times lognormal noise), and the type
  also sets the mean session length. The ground-truth genre affinity of a user is a Dirichlet draw
  concentrated on 2-4 favourite genres, which are picked by genre popularity.
* **Sessions**: per user and day a Poisson number of sessions; weekend days get
  ``weekend_session_multiplier`` times the weekday rate. A session starts at an hour drawn from an
  hour-of-day profile (evening peak, night trough, later on weekends) and holds a geometric number
  of plays.
* **Plays**: the first play of a session, and every play that is not a same-artist continuation,
  is a *fresh* draw: a genre from the user's affinity, then a song of that genre by song
  popularity. With probability ``same_artist_prob`` a play continues instead with a song (by
  popularity) of the artist of the run's last fresh draw. A play starts when the previous play of
  its session ended, plus a gap of a few seconds.
* **Skips**: the skip probability is logistic in the log of the user's affinity for the song's
  genres (relative to a uniform affinity), shifted a little by user type. Skipped plays stop after
  2-40 % of the track, the others play 80-100 % of it, so ``skipped == completion_ratio < 0.5``.

Everything is vectorised with numpy and polars. Weighted "pick one item of group g" draws
(user -> genre, genre -> song, artist -> song, day kind -> hour) are inverse-CDF searches over a
CSR layout (:class:`_GroupedSampler`), so no users x songs matrix is ever built. One
``numpy.random.Generator`` seeded from the settings is threaded through in a fixed order: the same
settings give identical tables and byte-identical Parquet files.
"""

from __future__ import annotations

import datetime
import math
import pathlib
from dataclasses import dataclass

import numpy as np
import polars as pl

TABLE_NAMES = ("genres", "artists", "artist_genres", "songs", "song_genres", "users", "plays", "user_genre_affinity")

GENRE_NAMES = (
    "pop", "hip hop", "rock", "rap", "r&b", "indie rock", "edm", "country", "latin pop", "k-pop",
    "alternative", "house", "soul", "jazz", "metal", "reggaeton", "folk", "techno", "punk",
    "classical", "blues", "funk", "indie pop", "trap", "dance pop", "lo-fi", "ambient", "disco",
    "afrobeats", "gospel", "synthwave", "drum and bass", "dubstep", "bossa nova", "grunge",
    "shoegaze", "ska", "reggae", "emo", "trip hop",
)  # fmt: skip
ARTIST_ADJECTIVES = (
    "Velvet", "Electric", "Silent", "Golden", "Neon", "Crimson", "Hollow", "Wild", "Lunar",
    "Paper", "Static", "Midnight", "Glass", "Iron", "Violet", "Northern", "Broken", "Cosmic",
    "Satin", "Rusty", "Frozen", "Burning", "Lonely", "Saint",
)  # fmt: skip
ARTIST_NOUNS = (
    "Foxes", "Echoes", "Tigers", "Pilots", "Rivers", "Ghosts", "Machines", "Wolves", "Lanterns",
    "Sirens", "Comets", "Harbors", "Kings", "Mirrors", "Owls", "Shadows", "Engines", "Daughters",
    "Parades", "Satellites", "Orchids", "Prophets", "Horizons", "Drifters",
)  # fmt: skip
TITLE_FIRST_WORDS = (
    "Midnight", "Summer", "Broken", "Golden", "Endless", "Electric", "Lost", "Sweet", "Silver",
    "Falling", "Neon", "Quiet", "Wild", "Paper", "Burning", "Blue", "Hollow", "Last",
)  # fmt: skip
TITLE_SECOND_WORDS = (
    "Highway", "Heart", "Dreams", "Rain", "Lights", "Fire", "Ocean", "City", "Love", "Signals",
    "Letters", "Skies", "Runaway", "Echo", "Motion", "Gravity", "Roses", "Static",
)  # fmt: skip

MAX_GENRES_PER_ARTIST = 3
ARTIST_GENRE_COUNT_PROBS = (0.5, 0.35, 0.15)  # P(an artist has 1, 2, 3 genres)
FAVOURITE_GENRE_COUNTS = (2, 3, 4)  # a user's number of favourite genres, uniform
ACTIVITY_SIGMA = 0.5  # lognormal spread of activity within a user type
MEDIAN_DURATION_MS = 210_000
DURATION_SIGMA = 0.3
MIN_DURATION_MS = 45_000
MAX_DURATION_MS = 720_000
# 50 plays x (12 min + 5 s gap) is under 11 h: a session starting on the last day ends before the
# play window closes at start_date + days + 1 day.
MAX_SESSION_LENGTH = 50
GAP_SECONDS = (1, 6)  # gap between consecutive plays of a session, [low, high)
SKIP_BASE_LOGIT = 0.5
SKIPPED_COMPLETION = (0.02, 0.4)
COMPLETED_COMPLETION = (0.8, 1.0)
MICROSECONDS_PER_SECOND = 1_000_000

# Relative session-start weights per hour of day (index = hour).
WEEKDAY_HOUR_WEIGHTS = (
    1.0, 0.6, 0.3, 0.2, 0.2, 0.4,  # 0-5 h: night trough
    1.2, 2.4, 3.0, 2.4, 2.0, 2.2,  # 6-11 h: commute and morning
    2.6, 2.4, 2.2, 2.4, 2.8, 3.6,  # 12-17 h: afternoon
    4.6, 5.2, 5.4, 5.0, 3.6, 2.0,  # 18-23 h: evening peak
)  # fmt: skip
WEEKEND_HOUR_WEIGHTS = (
    2.6, 1.8, 1.0, 0.5, 0.3, 0.3,  # late nights, late mornings
    0.4, 0.6, 1.0, 1.6, 2.4, 2.8,
    3.0, 3.0, 3.0, 3.0, 3.2, 3.6,
    4.2, 4.8, 5.4, 5.4, 4.8, 3.6,
)  # fmt: skip


@dataclass(frozen=True)
class UserTypeProfile:
    """Listening behaviour shared by all users of one type."""

    name: str
    sessions_per_day: float  # mean activity of the type
    mean_session_length: float  # plays per session (geometric mean, before the cap)
    skip_logit_offset: float  # added to the skip logit of every play of the type


USER_TYPE_PROFILES = (
    UserTypeProfile("casual", sessions_per_day=0.25, mean_session_length=4.0, skip_logit_offset=0.2),
    UserTypeProfile("regular", sessions_per_day=0.6, mean_session_length=6.0, skip_logit_offset=0.0),
    UserTypeProfile("power", sessions_per_day=1.2, mean_session_length=9.0, skip_logit_offset=-0.2),
)
USER_TYPE_NAMES = tuple(profile.name for profile in USER_TYPE_PROFILES)


# (field, minimum, strict): the knob must be a finite number >= minimum (> minimum when strict).
_KNOB_LOWER_BOUNDS = (
    ("weekend_session_multiplier", 0.0, True),
    ("genre_zipf_exponent", 0.0, False),
    ("artist_popularity_sigma", 0.0, False),
    ("song_popularity_sigma", 0.0, False),
    ("affinity_concentration", 0.0, True),
    ("favourite_genre_boost", 0.0, False),
    ("skip_affinity_slope", 0.0, False),
)


class GeneratorConfigError(ValueError):
    """Invalid :class:`GeneratorSettings`; the message names the offending field."""


@dataclass(frozen=True)
class GeneratorSettings:
    """Size, seed and behavioural knobs of the synthetic world."""

    users: int = 1000
    songs: int = 5000
    artists: int = 500
    genres: int = 35
    days: int = 30
    seed: int = 42
    start_date: datetime.date = datetime.date(2024, 1, 1)  # a Monday
    same_artist_prob: float = 0.35  # P(next play of a session is by the previous play's artist)
    user_type_shares: tuple[float, float, float] = (0.5, 0.35, 0.15)  # casual, regular, power
    weekend_session_multiplier: float = 1.4  # sessions per weekend day / per weekday
    genre_zipf_exponent: float = 1.1
    artist_popularity_sigma: float = 1.5  # lognormal sigma of artist popularity
    song_popularity_sigma: float = 0.8  # lognormal sigma of song-level popularity noise
    affinity_concentration: float = 0.1  # Dirichlet concentration of every genre
    favourite_genre_boost: float = 4.0  # extra Dirichlet concentration of a favourite genre
    skip_affinity_slope: float = 0.8  # how strongly a low genre affinity raises the skip logit

    def validate(self) -> None:
        """Raise :class:`GeneratorConfigError` naming the first invalid field."""
        for name in ("users", "songs", "artists", "genres", "days"):
            _require_positive_int(name, getattr(self, name))
        if self.songs < self.artists:
            raise GeneratorConfigError(
                f"songs must be >= artists (every artist needs a song), got songs={self.songs} "
                f"and artists={self.artists}"
            )
        if self.genres < MAX_GENRES_PER_ARTIST:
            raise GeneratorConfigError(f"genres must be >= {MAX_GENRES_PER_ARTIST}, got {self.genres}")
        if not _is_int(self.seed) or self.seed < 0:
            raise GeneratorConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.start_date, datetime.date) or isinstance(self.start_date, datetime.datetime):
            raise GeneratorConfigError(f"start_date must be a datetime.date, got {self.start_date!r}")
        _require_probability("same_artist_prob", self.same_artist_prob)
        shares = self.user_type_shares
        if (
            not isinstance(shares, tuple)
            or len(shares) != len(USER_TYPE_PROFILES)
            or not all(_is_real(share) and share >= 0 for share in shares)
            or not math.isclose(sum(shares), 1.0, abs_tol=1e-9)
        ):
            raise GeneratorConfigError(
                f"user_type_shares must be {len(USER_TYPE_PROFILES)} non-negative numbers "
                f"(casual, regular, power) summing to 1, got {shares!r}"
            )
        for name, minimum, strict in _KNOB_LOWER_BOUNDS:
            _require_number(name, getattr(self, name), minimum=minimum, strict=strict)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _require_positive_int(name: str, value: object) -> None:
    if not _is_int(value) or value <= 0:
        raise GeneratorConfigError(f"{name} must be a positive integer, got {value!r}")


def _require_probability(name: str, value: object) -> None:
    if not _is_real(value) or not 0.0 <= value <= 1.0:
        raise GeneratorConfigError(f"{name} must be a probability in [0, 1], got {value!r}")


def _require_number(name: str, value: object, *, minimum: float, strict: bool = False) -> None:
    too_small = _is_real(value) and (value <= minimum if strict else value < minimum)
    if not _is_real(value) or not math.isfinite(value) or too_small:
        relation = ">" if strict else ">="
        raise GeneratorConfigError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")


@dataclass
class SyntheticWorld:
    """The generated tables; ``user_genre_affinity`` is the ground truth behind ``plays``."""

    genres: pl.DataFrame
    artists: pl.DataFrame
    artist_genres: pl.DataFrame
    songs: pl.DataFrame
    song_genres: pl.DataFrame
    users: pl.DataFrame
    plays: pl.DataFrame
    user_genre_affinity: pl.DataFrame

    def tables(self) -> dict[str, pl.DataFrame]:
        """Every table by name, in :data:`TABLE_NAMES` order."""
        return {name: getattr(self, name) for name in TABLE_NAMES}

    def stats(self) -> dict:
        """Row counts and headline behaviour of the world, as plain Python numbers."""
        plays_per_user = self.users.join(self.plays.group_by("user_id").len(name="plays"), on="user_id", how="left")
        per_type = plays_per_user.group_by("user_type").agg(users=pl.len(), plays=pl.col("plays").fill_null(0).sum())
        by_type = (
            pl.DataFrame({"user_type": USER_TYPE_NAMES})
            .join(per_type, on="user_type", how="left", maintain_order="left")
            .fill_null(0)
        )
        users_by_type = dict(zip(USER_TYPE_NAMES, by_type["users"].to_list()))
        plays_by_type = dict(zip(USER_TYPE_NAMES, by_type["plays"].to_list()))
        sessions = self.plays["session_id"].n_unique()
        return {
            "rows": {name: frame.height for name, frame in self.tables().items()},
            "sessions": sessions,
            "mean_session_length": self.plays.height / sessions if sessions else 0.0,
            "skip_rate": float(self.plays["skipped"].mean() or 0.0),
            "mean_completion_ratio": float(self.plays["completion_ratio"].mean() or 0.0),
            "users_by_type": users_by_type,
            "plays_by_type": plays_by_type,
            "mean_plays_per_user_by_type": {
                name: plays_by_type[name] / users if users else 0.0 for name, users in users_by_type.items()
            },
        }


class _GroupedSampler:
    """Vectorised weighted draws of "one item of group ``g``" for many groups at once.

    Items are laid out CSR-style, sorted by group. Each item's key is its group id plus the
    cumulative weight share of its group up to and including the item, so keys increase across
    the whole array and one ``searchsorted`` of ``g + u`` (``u ~ U[0, 1)``) draws from any mix of
    groups. Zero-weight items are dropped; only groups with positive total weight may be drawn.
    """

    def __init__(self, group_of_item: np.ndarray, items: np.ndarray, weights: np.ndarray, n_groups: int):
        order = np.argsort(group_of_item, kind="stable")
        keep = weights[order] > 0
        groups = group_of_item[order][keep]
        kept_weights = weights[order][keep]
        self._items = items[order][keep]
        group_ids = np.arange(n_groups)
        self._first = np.searchsorted(groups, group_ids, side="left")
        self._last = np.searchsorted(groups, group_ids, side="right") - 1
        cumulative = np.cumsum(kept_weights)
        first_of_item = self._first[groups]
        before_group = cumulative[first_of_item] - kept_weights[first_of_item]
        group_total = cumulative[self._last[groups]] - before_group
        self._keys = groups + (cumulative - before_group) / group_total

    def sample(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``groups``, drawn by weight within that group."""
        positions = np.searchsorted(self._keys, groups + rng.random(groups.size), side="right")
        # Rounding of ``g + u`` may land one position outside the group: clamp it back.
        return self._items[np.clip(positions, self._first[groups], self._last[groups])]


@dataclass(frozen=True)
class _Catalogue:
    """Numpy view of genres, artists and songs used while drawing plays."""

    genre_popularity: np.ndarray  # (genres,)
    artist_popularity: np.ndarray  # (artists,)
    artist_genre_mask: np.ndarray  # (artists, genres) bool
    song_artist: np.ndarray  # (songs,) songs are sorted by artist
    song_popularity: np.ndarray  # (songs,)
    song_duration_ms: np.ndarray  # (songs,) int32
    song_genre_slots: np.ndarray  # (songs, MAX_GENRES_PER_ARTIST), padded with the value `genres`


def generate_world(settings: GeneratorSettings) -> SyntheticWorld:
    """Generate the whole synthetic world described in the module docstring."""
    settings.validate()
    rng = np.random.default_rng(settings.seed)
    catalogue = _draw_catalogue(settings, rng)
    user_type = rng.choice(len(USER_TYPE_PROFILES), size=settings.users, p=settings.user_type_shares)
    activity = _draw_activity(user_type, rng)
    genre_has_songs = catalogue.artist_genre_mask.any(axis=0)
    affinity = _draw_genre_affinity(settings, catalogue.genre_popularity, genre_has_songs, rng)
    session_user, session_start_us = _draw_sessions(settings, activity, rng)
    plays = _draw_plays(settings, catalogue, user_type, affinity, session_user, session_start_us, rng)
    return SyntheticWorld(
        genres=_genres_frame(catalogue.genre_popularity),
        artists=_artists_frame(catalogue.artist_popularity, rng),
        artist_genres=_artist_genres_frame(catalogue.artist_genre_mask),
        songs=_songs_frame(catalogue, rng),
        song_genres=_song_genres_frame(catalogue.song_genre_slots, settings.genres),
        users=_users_frame(user_type, activity),
        plays=plays,
        user_genre_affinity=_affinity_frame(affinity),
    )


def write_world(world: SyntheticWorld, directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """Write one ``<table>.parquet`` per table into ``directory``; return table name -> path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in world.tables().items():
        paths[name] = directory / f"{name}.parquet"
        frame.write_parquet(paths[name])
    return paths


# --- catalogue ---------------------------------------------------------------------------------


def _draw_catalogue(settings: GeneratorSettings, rng: np.random.Generator) -> _Catalogue:
    genre_popularity = _normalise(1.0 / np.arange(1, settings.genres + 1) ** settings.genre_zipf_exponent)
    artist_popularity = _normalise(rng.lognormal(0.0, settings.artist_popularity_sigma, settings.artists))
    genre_counts = rng.choice(np.arange(1, MAX_GENRES_PER_ARTIST + 1), settings.artists, p=ARTIST_GENRE_COUNT_PROBS)
    artist_genre_mask = _weighted_top_k_mask(
        np.broadcast_to(np.log(genre_popularity), (settings.artists, settings.genres)), genre_counts, rng
    )
    extra_song_artists = rng.choice(settings.artists, size=settings.songs - settings.artists, p=artist_popularity)
    song_artist = np.sort(np.concatenate([np.arange(settings.artists), extra_song_artists]))
    song_noise = rng.lognormal(0.0, settings.song_popularity_sigma, settings.songs)
    durations = np.rint(rng.lognormal(np.log(MEDIAN_DURATION_MS), DURATION_SIGMA, settings.songs))
    song_duration_ms = np.clip(durations, MIN_DURATION_MS, MAX_DURATION_MS).astype(np.int32)
    return _Catalogue(
        genre_popularity=genre_popularity,
        artist_popularity=artist_popularity,
        artist_genre_mask=artist_genre_mask,
        song_artist=song_artist,
        song_popularity=_normalise(artist_popularity[song_artist] * song_noise),
        song_duration_ms=song_duration_ms,
        song_genre_slots=_genre_slots(artist_genre_mask)[song_artist],
    )


def _normalise(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


def _weighted_top_k_mask(log_weights: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, mark ``k[row]`` distinct columns sampled by weight without replacement.

    Gumbel-top-k: the ``k`` largest ``log weight + Gumbel noise`` keys are a weighted sample
    without replacement. Columns with weight 0 (``-inf``) are never marked.
    """
    keys = log_weights + rng.gumbel(size=log_weights.shape)
    ranks = np.argsort(np.argsort(-keys, axis=1, kind="stable"), axis=1, kind="stable")
    return (ranks < k[:, None]) & np.isfinite(log_weights)


def _genre_slots(genre_mask: np.ndarray) -> np.ndarray:
    """Each row's marked genre ids, left-aligned in ``MAX_GENRES_PER_ARTIST`` slots.

    Unused slots hold ``genres`` (one past the last id), which indexes a zero-affinity column.
    """
    n_genres = genre_mask.shape[1]
    genre_or_pad = np.where(genre_mask, np.arange(n_genres), n_genres)
    return np.sort(genre_or_pad, axis=1)[:, :MAX_GENRES_PER_ARTIST]


# --- users -------------------------------------------------------------------------------------


def _draw_activity(user_type: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Expected sessions per day: the type's mean times mean-one lognormal noise."""
    type_mean = np.array([profile.sessions_per_day for profile in USER_TYPE_PROFILES])
    noise = rng.lognormal(-(ACTIVITY_SIGMA**2) / 2, ACTIVITY_SIGMA, user_type.size)
    return type_mean[user_type] * noise


def _draw_genre_affinity(
    settings: GeneratorSettings, genre_popularity: np.ndarray, genre_has_songs: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(users, genres) Dirichlet affinities, boosted on 2-4 favourites; genres without songs get 0."""
    favourite_counts = rng.choice(FAVOURITE_GENRE_COUNTS, size=settings.users)
    log_popularity = np.where(genre_has_songs, np.log(genre_popularity), -np.inf)
    log_popularity = np.broadcast_to(log_popularity, (settings.users, settings.genres))
    favourites = _weighted_top_k_mask(log_popularity, favourite_counts, rng)
    concentration = np.where(genre_has_songs, settings.affinity_concentration, 0.0)
    gamma_draws = rng.gamma(concentration + settings.favourite_genre_boost * favourites)
    return gamma_draws / gamma_draws.sum(axis=1, keepdims=True)


# --- sessions ----------------------------------------------------------------------------------


def _weekend_days(settings: GeneratorSettings) -> np.ndarray:
    """Boolean per day of the window: is it a Saturday or Sunday?"""
    weekday = (settings.start_date.weekday() + np.arange(settings.days)) % 7
    return weekday >= 5


def _day_rate_multipliers(settings: GeneratorSettings) -> np.ndarray:
    """Per-day session-rate multipliers, averaging 1 over a week (activity stays sessions/day)."""
    multiplier = settings.weekend_session_multiplier
    weekly_mean = (5 + 2 * multiplier) / 7
    return np.where(_weekend_days(settings), multiplier, 1.0) / weekly_mean


def _epoch_microseconds(day: datetime.date) -> int:
    return (day - datetime.date(1970, 1, 1)).days * 86_400 * MICROSECONDS_PER_SECOND


def _draw_sessions(
    settings: GeneratorSettings, activity: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Session users and start times (epoch microseconds), sorted by start time, then user."""
    sessions_per_cell = rng.poisson(activity[:, None] * _day_rate_multipliers(settings)[None, :])
    cell = np.repeat(np.arange(sessions_per_cell.size), sessions_per_cell.ravel())
    user, day = np.divmod(cell, settings.days)
    hour_sampler = _GroupedSampler(
        np.repeat([0, 1], 24), np.tile(np.arange(24), 2), np.array(WEEKDAY_HOUR_WEIGHTS + WEEKEND_HOUR_WEIGHTS), 2
    )
    hour = hour_sampler.sample(_weekend_days(settings)[day].astype(np.int64), rng)
    second_of_hour = rng.integers(0, 3600, size=cell.size)
    seconds = (day * 24 + hour) * 3600 + second_of_hour
    start_us = _epoch_microseconds(settings.start_date) + seconds * MICROSECONDS_PER_SECOND
    order = np.lexsort((user, start_us))
    return user[order].astype(np.int32), start_us[order]


# --- plays -------------------------------------------------------------------------------------


def _draw_plays(
    settings: GeneratorSettings,
    catalogue: _Catalogue,
    user_type: np.ndarray,
    affinity: np.ndarray,
    session_user: np.ndarray,
    session_start_us: np.ndarray,
    rng: np.random.Generator,
) -> pl.DataFrame:
    mean_length = np.array([profile.mean_session_length for profile in USER_TYPE_PROFILES])
    lengths = np.minimum(rng.geometric(1.0 / mean_length[user_type[session_user]]), MAX_SESSION_LENGTH)
    session_first_play = np.cumsum(lengths) - lengths
    play_session = np.repeat(np.arange(lengths.size), lengths)
    position = np.arange(play_session.size) - session_first_play[play_session]
    play_user = session_user[play_session]

    song = _draw_play_songs(settings, catalogue, affinity, play_user, position, rng)
    skip_probability = _skip_probability(settings, catalogue, user_type, affinity, play_user, song)
    skipped = rng.random(song.size) < skip_probability
    duration_ms = catalogue.song_duration_ms[song]
    ms_played = _draw_ms_played(skipped, duration_ms, rng)

    gap_ms = rng.integers(*GAP_SECONDS, size=song.size) * 1000
    offset_ms = _exclusive_cumsum_by_segment(ms_played.astype(np.int64) + gap_ms, session_first_play, lengths)
    played_at_us = session_start_us[play_session] + offset_ms * 1000
    return pl.DataFrame(
        {
            "play_id": np.arange(song.size, dtype=np.int64),
            "session_id": play_session.astype(np.int64),
            "user_id": play_user.astype(np.int32),
            "song_id": song.astype(np.int32),
            "position_in_session": position.astype(np.int16),
            "played_at": played_at_us.astype("datetime64[us]"),
            "ms_played": ms_played,
            "track_duration_ms": duration_ms,
            "completion_ratio": ms_played / duration_ms,
            "skipped": skipped,
        }
    )


def _draw_play_songs(
    settings: GeneratorSettings,
    catalogue: _Catalogue,
    affinity: np.ndarray,
    play_user: np.ndarray,
    position: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fresh draws go user -> genre -> song; continuations go run artist -> song."""
    n_users, n_genres = affinity.shape
    n_songs = catalogue.song_artist.size
    genre_sampler = _GroupedSampler(
        np.repeat(np.arange(n_users), n_genres), np.tile(np.arange(n_genres), n_users), affinity.ravel(), n_users
    )
    song_slots = catalogue.song_genre_slots
    slot_used = song_slots < n_genres
    song_in_genre_sampler = _GroupedSampler(
        group_of_item=song_slots[slot_used],
        items=np.broadcast_to(np.arange(n_songs)[:, None], song_slots.shape)[slot_used],
        weights=np.broadcast_to(catalogue.song_popularity[:, None], song_slots.shape)[slot_used],
        n_groups=n_genres,
    )
    song_of_artist_sampler = _GroupedSampler(
        catalogue.song_artist, np.arange(n_songs), catalogue.song_popularity, catalogue.artist_popularity.size
    )

    fresh = (position == 0) | (rng.random(position.size) >= settings.same_artist_prob)
    song = np.empty(position.size, dtype=np.int64)
    fresh_genre = genre_sampler.sample(play_user[fresh], rng)
    song[fresh] = song_in_genre_sampler.sample(fresh_genre, rng)
    # Each play's latest fresh draw (a session always starts fresh, so runs never cross sessions).
    last_fresh = np.maximum.accumulate(np.where(fresh, np.arange(position.size), 0))
    run_artist = catalogue.song_artist[song[last_fresh[~fresh]]]
    song[~fresh] = song_of_artist_sampler.sample(run_artist, rng)
    return song


def _skip_probability(
    settings: GeneratorSettings,
    catalogue: _Catalogue,
    user_type: np.ndarray,
    affinity: np.ndarray,
    play_user: np.ndarray,
    song: np.ndarray,
) -> np.ndarray:
    """Logistic in log(1 + genres * the user's best affinity among the song's genres)."""
    padded_affinity = np.hstack([affinity, np.zeros((affinity.shape[0], 1))])
    genre_match = padded_affinity[play_user[:, None], catalogue.song_genre_slots[song]].max(axis=1)
    type_offset = np.array([profile.skip_logit_offset for profile in USER_TYPE_PROFILES])
    logit = (
        SKIP_BASE_LOGIT
        + type_offset[user_type[play_user]]
        - settings.skip_affinity_slope * np.log1p(settings.genres * genre_match)
    )
    return 1.0 / (1.0 + np.exp(-logit))


def _draw_ms_played(skipped: np.ndarray, duration_ms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Milliseconds listened: 2-40 % of the track if skipped, else 80-100 %."""
    low = np.where(skipped, SKIPPED_COMPLETION[0], COMPLETED_COMPLETION[0])
    high = np.where(skipped, SKIPPED_COMPLETION[1], COMPLETED_COMPLETION[1])
    completion = low + (high - low) * rng.random(skipped.size)
    return np.rint(completion * duration_ms).astype(np.int32)


def _exclusive_cumsum_by_segment(values: np.ndarray, segment_starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per element, the sum of the earlier elements of its (contiguous, non-empty) segment."""
    exclusive = np.cumsum(values) - values
    return exclusive - np.repeat(exclusive[segment_starts], lengths)


# --- frames ------------------------------------------------------------------------------------


def _genres_frame(genre_popularity: np.ndarray) -> pl.DataFrame:
    n_genres = genre_popularity.size
    named = min(n_genres, len(GENRE_NAMES))
    names = list(GENRE_NAMES[:named]) + [f"genre_{genre:02d}" for genre in range(named, n_genres)]
    ids = np.arange(n_genres, dtype=np.int32)
    return pl.DataFrame({"genre_id": ids, "name": pl.Series(names, dtype=pl.Utf8), "popularity": genre_popularity})


def _word_pairs(first: tuple, second: tuple, first_idx: np.ndarray, second_idx: np.ndarray) -> pl.Series:
    """``"<first word> <second word>"`` per index pair."""
    return pl.Series(first).gather(first_idx) + " " + pl.Series(second).gather(second_idx)


def _artists_frame(artist_popularity: np.ndarray, rng: np.random.Generator) -> pl.DataFrame:
    """Unique names "The <Adjective> <Noun>", with a numeric suffix once the pairs run out."""
    n_artists = artist_popularity.size
    n_pairs = len(ARTIST_ADJECTIVES) * len(ARTIST_NOUNS)
    codes = rng.choice(max(n_artists, n_pairs), size=n_artists, replace=False)
    edition, pair = np.divmod(codes, n_pairs)
    noun_idx, adjective_idx = np.divmod(pair, len(ARTIST_ADJECTIVES))
    base_names = "The " + _word_pairs(ARTIST_ADJECTIVES, ARTIST_NOUNS, adjective_idx, noun_idx)
    names = (
        pl.DataFrame({"base": base_names, "edition": edition + 1})
        .select(pl.when(pl.col("edition") > 1).then(pl.concat_str("base", pl.lit(" "), "edition")).otherwise("base"))
        .to_series()
    )
    ids = np.arange(n_artists, dtype=np.int32)
    return pl.DataFrame({"artist_id": ids, "name": names, "popularity": artist_popularity})


def _artist_genres_frame(artist_genre_mask: np.ndarray) -> pl.DataFrame:
    artist, genre = np.nonzero(artist_genre_mask)
    return pl.DataFrame({"artist_id": artist.astype(np.int32), "genre_id": genre.astype(np.int32)})


def _songs_frame(catalogue: _Catalogue, rng: np.random.Generator) -> pl.DataFrame:
    n_songs = catalogue.song_artist.size
    first_words = rng.integers(0, len(TITLE_FIRST_WORDS), n_songs)
    second_words = rng.integers(0, len(TITLE_SECOND_WORDS), n_songs)
    titles = _word_pairs(TITLE_FIRST_WORDS, TITLE_SECOND_WORDS, first_words, second_words)
    return pl.DataFrame(
        {
            "song_id": np.arange(n_songs, dtype=np.int32),
            "artist_id": catalogue.song_artist.astype(np.int32),
            "title": titles,
            "duration_ms": catalogue.song_duration_ms,
            "popularity": catalogue.song_popularity,
        }
    )


def _song_genres_frame(song_genre_slots: np.ndarray, n_genres: int) -> pl.DataFrame:
    song, slot = np.nonzero(song_genre_slots < n_genres)
    return pl.DataFrame({"song_id": song.astype(np.int32), "genre_id": song_genre_slots[song, slot].astype(np.int32)})


def _users_frame(user_type: np.ndarray, activity: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": np.arange(user_type.size, dtype=np.int32),
            "user_type": pl.Series(USER_TYPE_NAMES, dtype=pl.Utf8).gather(user_type),
            "activity": activity,
        }
    )


def _affinity_frame(affinity: np.ndarray) -> pl.DataFrame:
    n_users, n_genres = affinity.shape
    return pl.DataFrame(
        {
            "user_id": np.repeat(np.arange(n_users, dtype=np.int32), n_genres),
            "genre_id": np.tile(np.arange(n_genres, dtype=np.int32), n_users),
            "affinity": affinity.ravel(),
        }
    )
