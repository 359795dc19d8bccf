"""The Kaggle playlists loader (spotify_engine_assets.datasets.playlists.kaggle): the real sample, crafted bad
rows with exact line numbers and reasons, bad files, enrichments and the synthetic default."""

import re
from pathlib import Path

import duckdb
import pytest

from spotify_engine_assets.datasets.playlists import kaggle
from spotify_engine_assets.datasets.playlists.kaggle import KAGGLE_HEADER, KaggleFormatError, ingest_playlist_csv

SAMPLE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "kaggle_spotify_playlists_sample"
    / "spotify_dataset_sample.csv"
)
GENRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "spotify_genres" / "data_w_genres.csv"


@pytest.fixture()
def con():
    connection = duckdb.connect()
    yield connection
    connection.close()


def _write(path: Path, lines: list[bytes], newline: bytes = b"\n") -> Path:
    path.write_bytes(newline.join([KAGGLE_HEADER.encode(), *lines]) + newline)
    return path


def _rejects(con, batch="b") -> dict[int, str]:
    return dict(
        con.sql("SELECT line, reason FROM kaggle_raw.rejects WHERE batch = ? ORDER BY line", params=[batch]).fetchall()
    )


@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/data (real Kaggle sample) is absent on this machine")
def test_real_sample_every_line_accounted(con):
    stats = ingest_playlist_csv(con, SAMPLE, "sample")
    assert (stats.data_lines, stats.accepted, stats.rejected, stats.unaccounted) == (500, 499, 1, 0)
    assert _rejects(con, "sample") == {391: "empty artistname"}
    first = con.sql(
        "SELECT line, artistname, trackname, playlistname FROM kaggle_raw.entries ORDER BY line LIMIT 1"
    ).fetchall()[0]
    assert first == (2, "Spice Girls", "Wannabe - Radio Edit", "Lol HiGh Sk00l MeMorIeZ")


def test_crafted_bad_rows_land_in_rejects_with_line_and_reason(con, tmp_path):
    path = _write(
        tmp_path / "bad.csv",
        [
            b"u1,Artist,Track,PL",  # 2 ok
            b'u1,"Comma, Artist",Track "x",PL',  # 3 stray quote
            b"u2,A,B,C,D",  # 4 too many fields
            b"u2,A,B",  # 5 too few
            b"u3,  ,Song,PL",  # 6 empty artist
            b'u3,"Quoted ""x""",Song,PL',  # 7 ok, unescaped
            b"u4,Bad\xff\xfeBytes,Song,PL",  # 8 not UTF-8
            b"",  # 9 blank
            b'u5,"unterminated,Song,PL',  # 10 unbalanced quote
            b"u6,Last,Song,PL",  # 11 ok
        ],
    )
    stats = ingest_playlist_csv(con, path, "b")
    assert stats.unaccounted == 0 and stats.accepted == 3 and stats.rejected == 7
    rejects = _rejects(con)
    assert rejects[3] == "stray quote in an unquoted field"
    assert rejects[4] == "wrong field count: 5 (expected 4)"
    assert rejects[5] == "wrong field count: 3 (expected 4)"
    assert rejects[6] == "empty artistname"
    assert rejects[8].startswith("INVALID ENCODING")
    assert rejects[9] == "blank line"
    assert rejects[10] == "unbalanced quote"
    rows = con.sql("SELECT line, artistname FROM kaggle_raw.entries ORDER BY line").fetchall()
    assert rows == [(2, "Artist"), (7, 'Quoted "x"'), (11, "Last")]
    assert stats.reasons["wrong field count"] == 2


def test_crlf_file_and_reingest_is_idempotent(con, tmp_path):
    path = _write(tmp_path / "crlf.csv", [b"u1,A,T1,P", b'u1,"A, B",T2,P', b"u1,A"], newline=b"\r\n")
    for _ in range(2):
        stats = ingest_playlist_csv(con, path, "b")
    assert (stats.accepted, stats.rejected, stats.unaccounted) == (2, 1, 0)
    assert con.sql("SELECT count(*) FROM kaggle_raw.entries").fetchall()[0] == (2,)
    assert con.sql("SELECT artistname FROM kaggle_raw.entries WHERE line = 3").fetchall()[0] == ("A, B",)
    assert _rejects(con) == {4: "wrong field count: 2 (expected 4)"}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"\x00\x01\x02binary\xff\n\x00", "NUL bytes"),
        (b"\xff\xfeuser_id,artistname\n", "not UTF-8"),
        (b"user_id,artistname,trackname\nu,a,t\n", "missing columns ['playlistname']"),
        (b"user_id,artist,trackname,playlistname\n", "unexpected columns ['artist']"),
        (b"playlistname,user_id,artistname,trackname\n", "wrong order"),
    ],
)
def test_bad_files_fail_naming_file_and_problem(con, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(KaggleFormatError, match=re.escape(message)) as error:
        ingest_playlist_csv(con, path, "b")
    assert str(path) in str(error.value)


def test_header_only_file_has_zero_rows(con, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("user_id,artistname,trackname,playlistname\n")
    stats = ingest_playlist_csv(con, path, "b")
    assert (stats.data_lines, stats.accepted, stats.rejected, stats.reject_rate) == (0, 0, 0, 0.0)


def test_artist_genres_parse_lists_and_plain_names(con, tmp_path):
    path = tmp_path / "genres.csv"
    path.write_text(
        "genres,artists,popularity\n"
        "\"['dance pop', 'pop']\",Artist One,1\n"
        "[],Nobody,2\n"
        "show tunes,Cast,3\n"
        '"rock, indie rock",Band,5\n'
        '"[""children\'s music""]",Kids,4\n'
    )
    assert kaggle.load_artist_genres(con, path) == 6
    rows = set(con.sql("SELECT artist_name, genre FROM kaggle_raw.artist_genres").fetchall())
    assert rows == {
        ("Artist One", "dance pop"),
        ("Artist One", "pop"),
        ("Cast", "show tunes"),
        ("Kids", "children's music"),
        ("Band", "rock"),
        ("Band", "indie rock"),
    }
    (tmp_path / "no_genres.csv").write_text("artists,popularity\nA,1\n")
    with pytest.raises(KaggleFormatError, match="missing columns \\['genres'\\]"):
        kaggle.load_artist_genres(con, tmp_path / "no_genres.csv")


@pytest.mark.skipif(not GENRES.exists(), reason="../shared/data (real data_w_genres.csv) is absent on this machine")
def test_real_genre_table_loads(con):
    rows = kaggle.load_artist_genres(con, GENRES)
    artists = con.sql("SELECT count(DISTINCT artist_name) FROM kaggle_raw.artist_genres").fetchall()[0][0]
    assert artists == 18823 and rows > artists


def test_track_features_first_artist_and_mean(con, tmp_path):
    names = ",".join(kaggle.FEATURE_NAMES)
    path = tmp_path / "tracks_features.csv"
    values = ",".join(["0.5"] * len(kaggle.FEATURE_NAMES))
    path.write_text(
        f"id,name,artists,{names}\n1,Song,\"['A', 'B']\",{values}\n2,Song,\"['A']\",{values.replace('0.5', '1.5')}\n"
    )
    assert kaggle.load_track_features(con, path) == 1
    assert con.sql("SELECT artist_name, track_name, energy FROM kaggle_raw.track_features").fetchall()[0] == (
        "A",
        "Song",
        1.0,
    )


def test_synthetic_world_round_trips_through_the_loader(con, tmp_path):
    from spotify_engine_assets.datasets.listening.generator import GeneratorSettings, generate_world

    world = generate_world(GeneratorSettings(users=20, songs=80, artists=10, genres=4, days=3, seed=1))
    con.execute("CREATE SCHEMA raw")
    for name, frame in world.tables().items():
        con.register("frame", frame)
        con.execute(f"CREATE TABLE raw.{name} AS SELECT * FROM frame")
        con.unregister("frame")
    rows = kaggle.write_synthetic_kaggle_files(con, tmp_path)
    assert (tmp_path / "spotify_dataset.csv").read_text().splitlines()[0] == KAGGLE_HEADER
    stats = ingest_playlist_csv(con, tmp_path / "spotify_dataset.csv", "synthetic")
    pairs = world.plays.select("user_id", "song_id").unique().height
    assert stats.accepted == rows["spotify_dataset.csv"] == pairs and stats.rejected == 0
    assert kaggle.load_artist_genres(con, tmp_path / "data_w_genres.csv") == world.artist_genres.height


def test_count_lines_streams_in_chunks(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"a\nb\nc")
    assert kaggle.count_lines(path, chunk_size=2) == 3
    path.write_bytes(b"a\nb\n")
    assert kaggle.count_lines(path, chunk_size=1) == 2


# --- issue 19: line endings and control characters ---------------------------------------------


def test_mixed_line_endings_keep_true_line_numbers(con, tmp_path):
    """An LF header with CRLF rows (a concatenated export) used to reject every row as a "blank
    line" at line numbers past the end of the file; a bare \\r split a line in two."""
    path = tmp_path / "mixed.csv"
    path.write_bytes(KAGGLE_HEADER.encode() + b"\nu1,A,T1,P\r\nu2,B,T2,P\r\nu3,C\rX,T3,P\nu4,D,T4,P\r\n")
    stats = ingest_playlist_csv(con, path, "b", work_dir=tmp_path / "work")
    assert (stats.lines, stats.accepted, stats.rejected, stats.unaccounted) == (5, 3, 1, 0)
    assert con.sql("SELECT line, user_id, playlistname FROM kaggle_raw.entries ORDER BY line").fetchall() == [
        (2, "u1", "P"),
        (3, "u2", "P"),
        (5, "u4", "P"),
    ]
    assert _rejects(con) == {4: "carriage return inside a line (a bare \\r)"}
    raw = con.sql("SELECT raw_line FROM kaggle_raw.rejects").fetchall()[0][0]
    assert raw == "u3,C\rX,T3,P"
    assert not list((tmp_path / "work").iterdir())  # the normalized copy is gone


def test_control_characters_are_rejected_and_a_bom_is_removed_and_counted(con, tmp_path):
    path = _write(
        tmp_path / "controls.csv",
        [
            b"u1,A\x00X,T,P",  # 2 NUL
            b"u2,A\x1fX,T,P",  # 3 unit separator (the reader's own delimiter)
            b"\xef\xbb\xbfu3,BOM,T,P",  # 4 BOM at the start of a data line: removed, kept
            b"u4,Tab\there,T,P",  # 5 a tab is text
            b"\xef\xbb\xbf" + KAGGLE_HEADER.encode(),  # 6 a second export's header
            b"u5,Last,T,P",  # 7
        ],
    )
    stats = ingest_playlist_csv(con, path, "b")
    assert _rejects(con) == {2: "control character U+0000", 3: "control character U+001F", 6: "repeated header line"}
    assert con.sql("SELECT line, user_id FROM kaggle_raw.entries ORDER BY line").fetchall() == [
        (4, "u3"),
        (5, "u4"),
        (7, "u5"),
    ]
    assert stats.cleaned == {"byte order mark removed": 1} and stats.unaccounted == 0
    assert stats.reasons == {"control character U+0000": 1, "control character U+001F": 1, "repeated header line": 1}


@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/data (real Kaggle sample) is absent on this machine")
def test_real_sample_concatenated_with_crlf_rows_reads_as_the_original(con, tmp_path):
    """The real 500 rows with every second data line ending in CRLF and a second export (BOM,
    header, its rows) appended: the same rows at the same line numbers, the second header rejected."""
    header, *rows = SAMPLE.read_bytes().rstrip(b"\n").split(b"\n")
    mixed = header + b"\n" + b"".join(row + (b"\r\n" if i % 2 else b"\n") for i, row in enumerate(rows))
    path = tmp_path / "concatenated.csv"
    path.write_bytes(mixed + b"\xef\xbb\xbf" + header + b"\r\n" + rows[0] + b"\r\n")
    stats = ingest_playlist_csv(con, path, "mixed")
    original = ingest_playlist_csv(con, SAMPLE, "sample")
    assert (stats.data_lines, stats.accepted, stats.rejected, stats.unaccounted) == (502, 500, 2, 0)
    assert _rejects(con, "mixed") == {391: "empty artistname", 502: "repeated header line"}
    same = "SELECT line, user_id, artistname, trackname, playlistname FROM kaggle_raw.entries WHERE batch = ? AND line <= 501 ORDER BY line"
    assert con.sql(same, params=["mixed"]).fetchall() == con.sql(same, params=["sample"]).fetchall()
    assert original.accepted == 499
