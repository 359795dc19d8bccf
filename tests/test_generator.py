"""Tests of the synthetic world generator: schemas, integrity, determinism and the behaviours it
must show (daily and weekly rhythm, user types, genre affinity, same-artist runs, skips)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib

import polars as pl
import pytest

from spotify_engine_assets.datasets.listening.generator import (
    TABLE_NAMES,
    GeneratorConfigError,
    GeneratorSettings,
    SyntheticWorld,
    generate_world,
    write_world,
)

SMALL = GeneratorSettings(users=400, songs=2000, artists=200, genres=20, days=28, seed=7)

EXPECTED_SCHEMAS = {
    "genres": {"genre_id": pl.Int32, "name": pl.Utf8, "popularity": pl.Float64},
    "artists": {"artist_id": pl.Int32, "name": pl.Utf8, "popularity": pl.Float64},
    "artist_genres": {"artist_id": pl.Int32, "genre_id": pl.Int32},
    "songs": {
        "song_id": pl.Int32,
        "artist_id": pl.Int32,
        "title": pl.Utf8,
        "duration_ms": pl.Int32,
        "popularity": pl.Float64,
    },
    "song_genres": {"song_id": pl.Int32, "genre_id": pl.Int32},
    "users": {"user_id": pl.Int32, "user_type": pl.Utf8, "activity": pl.Float64},
    "plays": {
        "play_id": pl.Int64,
        "session_id": pl.Int64,
        "user_id": pl.Int32,
        "song_id": pl.Int32,
        "position_in_session": pl.Int16,
        "played_at": pl.Datetime("us"),
        "ms_played": pl.Int32,
        "track_duration_ms": pl.Int32,
        "completion_ratio": pl.Float64,
        "skipped": pl.Boolean,
    },
    "user_genre_affinity": {"user_id": pl.Int32, "genre_id": pl.Int32, "affinity": pl.Float64},
}


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return generate_world(SMALL)


def _plays_with_artist(world: SyntheticWorld) -> pl.DataFrame:
    return world.plays.join(world.songs.select("song_id", "artist_id"), on="song_id", how="left")


def _same_artist_rate(world: SyntheticWorld) -> float:
    """Share of consecutive play pairs within a session that have the same artist."""
    pairs = (
        _plays_with_artist(world)
        .sort("session_id", "position_in_session")
        .with_columns(previous_artist=pl.col("artist_id").shift(1).over("session_id"))
        .filter(pl.col("position_in_session") > 0)
    )
    return float((pairs["artist_id"] == pairs["previous_artist"]).mean())


# --- schema and integrity ----------------------------------------------------------------------


def test_every_table_has_the_exact_schema(world: SyntheticWorld) -> None:
    tables = world.tables()
    assert tuple(tables) == TABLE_NAMES
    assert set(TABLE_NAMES) == {field.name for field in dataclasses.fields(SyntheticWorld)}
    for name, expected in EXPECTED_SCHEMAS.items():
        assert dict(tables[name].schema) == expected, name


def test_catalogue_sizes_and_popularities(world: SyntheticWorld) -> None:
    assert world.genres.height == SMALL.genres
    assert world.artists.height == SMALL.artists
    assert world.songs.height == SMALL.songs
    assert world.users.height == SMALL.users
    assert world.genres["name"].n_unique() == SMALL.genres
    for table in (world.genres, world.artists, world.songs):
        assert table["popularity"].sum() == pytest.approx(1.0)
        assert table["popularity"].min() > 0
    genre_popularity = world.genres.sort("genre_id")["popularity"].to_list()
    assert genre_popularity == sorted(genre_popularity, reverse=True)  # Zipf by genre id
    assert genre_popularity[0] / genre_popularity[9] > 8
    top_tenth = world.artists["popularity"].sort(descending=True).head(SMALL.artists // 10).sum()
    assert top_tenth > 0.35  # heavy tail: 10 % of artists hold far more than 10 % of popularity
    assert world.songs["duration_ms"].min() >= 45_000
    assert world.songs["duration_ms"].max() <= 720_000
    assert 180_000 < world.songs["duration_ms"].median() < 240_000
    assert set(world.users["user_type"].unique()) == {"casual", "regular", "power"}


def test_referential_integrity(world: SyntheticWorld) -> None:
    song_ids = set(world.songs["song_id"])
    assert set(world.plays["song_id"]) <= song_ids
    assert set(world.plays["user_id"]) <= set(world.users["user_id"])
    assert set(world.songs["artist_id"]) == set(world.artists["artist_id"])  # every artist has a song
    assert set(world.song_genres["song_id"]) == song_ids  # every song has a genre
    assert set(world.song_genres["genre_id"]) <= set(world.genres["genre_id"])
    assert world.artist_genres.is_duplicated().sum() == 0
    genres_per_artist = world.artist_genres.group_by("artist_id").len()
    assert genres_per_artist.height == SMALL.artists
    assert genres_per_artist["len"].min() >= 1
    assert genres_per_artist["len"].max() <= 3
    inherited = world.songs.join(world.artist_genres, on="artist_id").select("song_id", "genre_id").sort(pl.all())
    assert world.song_genres.sort(pl.all()).equals(inherited)


def test_ground_truth_affinity_is_a_distribution_per_user(world: SyntheticWorld) -> None:
    affinity = world.user_genre_affinity
    assert affinity.height == SMALL.users * SMALL.genres
    assert affinity["affinity"].min() >= 0
    row_sums = affinity.group_by("user_id").agg(pl.col("affinity").sum())["affinity"]
    assert (row_sums - 1.0).abs().max() < 1e-9
    top_three = affinity.group_by("user_id").agg(pl.col("affinity").top_k(3).sum())["affinity"]
    assert top_three.mean() > 0.6  # concentrated on a few favourites


def test_completion_and_skip_are_consistent(world: SyntheticWorld) -> None:
    plays = world.plays.join(world.songs.select("song_id", "duration_ms"), on="song_id")
    assert (plays["track_duration_ms"] == plays["duration_ms"]).all()
    assert (plays["completion_ratio"] == plays["ms_played"] / plays["track_duration_ms"]).all()
    assert plays["completion_ratio"].min() >= 0
    assert plays["completion_ratio"].max() <= 1
    assert (plays["skipped"] == (plays["completion_ratio"] < 0.5)).all()
    assert 0.05 < plays["skipped"].mean() < 0.6


def test_play_ids_and_session_positions(world: SyntheticWorld) -> None:
    plays = world.plays
    assert plays["play_id"].to_list() == list(range(plays.height))
    sessions = plays.group_by("session_id").agg(
        pl.col("user_id").n_unique().alias("users"),
        pl.len().alias("plays"),
        pl.col("position_in_session").min().alias("first"),
        pl.col("position_in_session").max().alias("last"),
        pl.col("position_in_session").n_unique().alias("positions"),
    )
    assert (sessions["users"] == 1).all()
    assert (sessions["first"] == 0).all()
    assert (sessions["last"].cast(pl.Int64) == sessions["plays"] - 1).all()
    assert (sessions["positions"] == sessions["plays"]).all()
    assert sessions["plays"].mean() > 3


def test_timestamps_stay_in_the_window_and_follow_each_other(world: SyntheticWorld) -> None:
    window_start = datetime.datetime.combine(SMALL.start_date, datetime.time())
    window_end = window_start + datetime.timedelta(days=SMALL.days + 1)
    assert world.plays["played_at"].min() >= window_start
    assert world.plays["played_at"].max() < window_end
    steps = (
        world.plays.sort("session_id", "position_in_session")
        .with_columns(
            previous_at=pl.col("played_at").shift(1).over("session_id"),
            previous_ms=pl.col("ms_played").shift(1).over("session_id"),
        )
        .filter(pl.col("position_in_session") > 0)
        .select(gap_ms=(pl.col("played_at") - pl.col("previous_at")).dt.total_milliseconds() - pl.col("previous_ms"))[
            "gap_ms"
        ]
    )
    assert steps.min() >= 1_000  # the next play starts after the previous one ended ...
    assert steps.max() <= 10_000  # ... after a gap of a few seconds


# --- determinism -------------------------------------------------------------------------------


def test_same_settings_give_identical_frames_and_parquet_bytes(world: SyntheticWorld, tmp_path) -> None:
    again = generate_world(SMALL)
    for name, frame in world.tables().items():
        assert frame.equals(again.tables()[name]), name

    def digests(directory) -> dict[str, str]:
        paths = write_world(generate_world(SMALL), directory)
        assert set(paths) == set(TABLE_NAMES)
        assert all(path.name == f"{name}.parquet" for name, path in paths.items())
        return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in paths.items()}

    assert digests(tmp_path / "first") == digests(tmp_path / "second")
    round_trip = pl.read_parquet(tmp_path / "first" / "plays.parquet")
    assert round_trip.equals(world.plays)


def test_different_seed_gives_different_plays(world: SyntheticWorld) -> None:
    other = generate_world(dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    assert not other.plays.equals(world.plays)
    assert not other.user_genre_affinity.equals(world.user_genre_affinity)


# --- behaviour ---------------------------------------------------------------------------------


def test_evening_peak_and_night_trough(world: SyntheticWorld) -> None:
    hours = world.plays["played_at"].dt.hour()
    evening_share = hours.is_between(18, 21).mean()  # 18:00-21:59
    night_share = hours.is_between(2, 4).mean()  # 02:00-04:59
    assert evening_share > 3 * night_share


def test_weekend_days_have_more_plays(world: SyntheticWorld) -> None:
    last_day = SMALL.start_date + datetime.timedelta(days=SMALL.days - 1)
    per_day = (
        world.plays.group_by(day=pl.col("played_at").dt.date())
        .len()
        .filter(pl.col("day") <= last_day)
        .with_columns(weekend=pl.col("day").dt.weekday() >= 6)
    )
    assert per_day.height == SMALL.days
    weekend = per_day.filter(pl.col("weekend"))["len"].mean()
    weekday = per_day.filter(~pl.col("weekend"))["len"].mean()
    assert weekend >= 1.15 * weekday


def test_power_users_play_more_than_regular_more_than_casual(world: SyntheticWorld) -> None:
    plays_per_user = world.users.join(world.plays.group_by("user_id").len(), on="user_id", how="left").with_columns(
        pl.col("len").fill_null(0)
    )
    mean_by_type = dict(plays_per_user.group_by("user_type").agg(pl.col("len").mean()).iter_rows())
    assert mean_by_type["power"] > 1.5 * mean_by_type["regular"]
    assert mean_by_type["regular"] > 1.5 * mean_by_type["casual"]
    stats = world.stats()
    assert stats["mean_plays_per_user_by_type"] == pytest.approx(mean_by_type)
    assert stats["rows"] == {name: frame.height for name, frame in world.tables().items()}
    assert stats["skip_rate"] == pytest.approx(world.plays["skipped"].mean())


def test_plays_follow_the_users_top_genre(world: SyntheticWorld) -> None:
    top_genre = (
        world.user_genre_affinity.sort("affinity", descending=True)
        .group_by("user_id")
        .agg(top_genre=pl.col("genre_id").first())
    )
    plays = world.plays.select("play_id", "user_id", "song_id").join(top_genre, on="user_id")
    in_top_genre = plays.join(
        world.song_genres, left_on=["song_id", "top_genre"], right_on=["song_id", "genre_id"], how="semi"
    )
    global_share = (
        world.song_genres.join(world.plays.select("song_id"), on="song_id")
        .group_by("genre_id")
        .agg(global_share=pl.len() / world.plays.height)
    )
    per_user = (
        plays.group_by("user_id", "top_genre")
        .agg(plays=pl.len())
        .join(in_top_genre.group_by("user_id").agg(in_top=pl.len()), on="user_id", how="left")
        .join(global_share, left_on="top_genre", right_on="genre_id", how="left")
        .fill_null(0)
        .with_columns(share=pl.col("in_top") / pl.col("plays"))
    )
    assert per_user["share"].mean() > 1.8 * per_user["global_share"].mean()
    assert per_user["share"].mean() > per_user["global_share"].mean() + 0.2


def test_same_artist_continuations() -> None:
    settings = dataclasses.replace(SMALL, users=250)
    with_runs = _same_artist_rate(generate_world(settings))
    without_runs = _same_artist_rate(generate_world(dataclasses.replace(settings, same_artist_prob=0.0)))
    assert with_runs >= 0.8 * settings.same_artist_prob
    assert with_runs > without_runs + 0.5 * settings.same_artist_prob


def test_low_affinity_plays_are_skipped_more(world: SyntheticWorld) -> None:
    best_affinity = (
        world.plays.select("play_id", "user_id", "song_id", "skipped")
        .join(world.song_genres, on="song_id")
        .join(world.user_genre_affinity, on=["user_id", "genre_id"])
        .group_by("play_id", "skipped")
        .agg(pl.col("affinity").max())
    )
    assert best_affinity.height == world.plays.height
    uniform = 1.0 / SMALL.genres
    low = best_affinity.filter(pl.col("affinity") < uniform)["skipped"]
    high = best_affinity.filter(pl.col("affinity") >= uniform)["skipped"]
    assert low.len() > 200
    assert low.mean() > high.mean() + 0.15


# --- settings validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"users": 0}, "users"),
        ({"songs": 100, "artists": 200}, "songs"),
        ({"genres": 0}, "genres"),
        ({"genres": 2}, "genres"),
        ({"days": -1}, "days"),
        ({"same_artist_prob": 1.5}, "same_artist_prob"),
        ({"same_artist_prob": -0.1}, "same_artist_prob"),
        ({"user_type_shares": (0.5, 0.5, 0.5)}, "user_type_shares"),
        ({"weekend_session_multiplier": 0.0}, "weekend_session_multiplier"),
        ({"seed": -3}, "seed"),
    ],
)
def test_invalid_settings_name_the_field(changes: dict, field: str) -> None:
    settings = dataclasses.replace(SMALL, **changes)
    with pytest.raises(GeneratorConfigError, match=f"^{field} "):
        settings.validate()
    with pytest.raises(ValueError, match=f"^{field} "):
        generate_world(settings)


def test_default_settings_are_valid_and_sized_for_about_100k_plays() -> None:
    GeneratorSettings().validate()
    world = generate_world(GeneratorSettings())
    assert 80_000 <= world.plays.height <= 150_000
    assert world.genres.height == 35
    assert world.songs["artist_id"].n_unique() == 500
    assert world.song_genres["song_id"].n_unique() == 5000
