"""Streaming loader for the Kaggle "Spotify Playlists" CSV format, into DuckDB.

The Kaggle file ``spotify_dataset.csv`` (1.2 GB, 12.9M rows) has four columns, ``user_id``,
``artistname``, ``trackname``, ``playlistname``, and an odd header (see ``KAGGLE_HEADER``):
each name but the first is quoted with a leading space and doubled quotes.

Some of its rows carry stray quotes or too many fields. The loader never holds the file in
Python memory: DuckDB's own CSV reader streams it, one *physical line* per row (no delimiter,
no quoting), and SQL splits each line into its four fields with an RFC-4180 field pattern.
Every line therefore ends up in exactly one place:

* ``entries``: a line of exactly four fields, each non-empty after trimming, quoted fields
  unescaped (``""`` -> ``"``);
* ``rejects``: everything else, with its physical line number (the header is line 1) and a
  reason - ``blank line``, ``unbalanced quote``, ``stray quote in an unquoted field``,
  ``wrong field count: N (expected 4)``, ``empty <column>``, or a line DuckDB's reader itself
  rejected (``INVALID ENCODING`` for bytes that are not UTF-8, ...), taken from its
  ``store_rejects`` tables.

An independent newline count of the file (streamed in 1 MiB chunks) must equal accepted +
rejected + 1: :class:`IngestStats` records both, so no row disappears unaccounted. A quoted
field spanning lines is not supported (the Kaggle format has none): both halves are rejected
with their line numbers.

Also here: the optional enrichments (artist genres from a ``data_w_genres.csv``-format table,
audio features from a ``tracks_features.csv``-format table) and the writer of Kaggle-format
CSVs derived from the synthetic world (the offline default).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

KAGGLE_COLUMNS = ("user_id", "artistname", "trackname", "playlistname")
KAGGLE_HEADER = 'user_id," ""artistname"""," ""trackname"""," ""playlistname"""'
HEADER_PROBE_BYTES = 1 << 16
# The warehouse tables the playlist SQL models read (schema ``kaggle_raw``).
KAGGLE_SOURCES = (
    "kaggle_raw.entries",
    "kaggle_raw.rejects",
    "kaggle_raw.landed_entries",
    "kaggle_raw.landed_rejects",
    "kaggle_raw.artist_genres",
    "kaggle_raw.track_features",
)

ENTRY_COLUMNS = "batch VARCHAR, source_file VARCHAR, line BIGINT, user_id VARCHAR, artistname VARCHAR, trackname VARCHAR, playlistname VARCHAR"
REJECT_COLUMNS = "batch VARCHAR, source_file VARCHAR, line BIGINT, reason VARCHAR, raw_line VARCHAR"
GENRE_COLUMNS = "artist_name VARCHAR, genre VARCHAR"
FEATURE_NAMES = ("danceability", "energy", "loudness", "speechiness", "acousticness", "instrumentalness", "liveness", "valence", "tempo")
FEATURE_COLUMNS = "artist_name VARCHAR, track_name VARCHAR, " + ", ".join(f"{name} DOUBLE" for name in FEATURE_NAMES)

# One CSV field: a quoted field with "" escapes, or an unquoted field without quotes or commas.
_FIELD = r'"(?:[^"]|"")*"|[^,"]*'
_LINE_PATTERN = "^" + ",".join(f"(?P<f{i}>{_FIELD})" for i in range(4)) + "$"


_UNQUOTE_SQL = ", ".join(
    f"""trim(CASE WHEN f.f{i} LIKE '"%' THEN replace(f.f{i}[2:-2], '""', '"') ELSE f.f{i} END) AS {name}"""
    for i, name in enumerate(KAGGLE_COLUMNS)
)
_EMPTY_SQL = " ".join(f"WHEN {name} = '' THEN 'empty {name}'" for name in KAGGLE_COLUMNS)


class KaggleFormatError(ValueError):
    """A file is not in the Kaggle playlists format (message names the file and the problem)."""


@dataclass(frozen=True)
class IngestStats:
    """What one ingestion did with every line of one file."""

    source_file: str
    batch: str
    bytes: int
    lines: int            # physical lines counted independently (header included)
    accepted: int
    rejected: int
    reasons: dict[str, int]

    @property
    def data_lines(self) -> int:
        return max(self.lines - 1, 0)

    @property
    def unaccounted(self) -> int:
        return self.data_lines - self.accepted - self.rejected

    @property
    def reject_rate(self) -> float:
        return self.rejected / self.data_lines if self.data_lines else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "data_lines": self.data_lines, "unaccounted": self.unaccounted, "reject_rate": self.reject_rate}


def count_lines(path: Path, chunk_size: int = 1 << 20) -> int:
    """Physical lines of a file (a last line without a newline counts), streamed in chunks."""
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _normalize_header_field(field: str) -> str:
    return field.replace('"', "").strip().lower()


def check_header(path: Path, expected: tuple[str, ...] = KAGGLE_COLUMNS) -> str:
    """Fail with a clear message unless ``path`` starts with a header naming ``expected``.

    Accepts the real file's odd quoting (``KAGGLE_HEADER``) as well as a plain header.
    Returns the file's line ending (``"\\r\\n"`` or ``"\\n"``, read from the header line).
    """
    path = Path(path)
    if not path.exists():
        raise KaggleFormatError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise KaggleFormatError(f"{path}: empty file (0 bytes), expected a header {','.join(expected)}")
    with open(path, "rb") as handle:
        probe = handle.read(HEADER_PROBE_BYTES)
    raw_first = probe.split(b"\n", 1)[0]
    newline = "\r\n" if raw_first.endswith(b"\r") else "\n"
    first = raw_first.rstrip(b"\r")
    if b"\x00" in first:
        raise KaggleFormatError(f"{path}: line 1 contains NUL bytes: binary data, not a CSV file")
    try:
        header = first.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise KaggleFormatError(f"{path}: line 1 (header) is not UTF-8 text ({error.reason} at byte {error.start})") from None
    fields = [_normalize_header_field(f) for f in header.split(",")]
    if tuple(fields) != expected:
        missing = [c for c in expected if c not in fields]
        unknown = [f for f in fields if f not in expected]
        details = []
        if missing:
            details.append(f"missing columns {missing}")
        if unknown:
            details.append(f"unexpected columns {[u[:40] for u in unknown[:8]]}")
        if not details:
            details.append(f"columns in the wrong order {fields}")
        raise KaggleFormatError(f"{path}: header {header[:200]!r} does not match {list(expected)}: {'; '.join(details)}")
    return newline


def create_tables(con: duckdb.DuckDBPyConnection, entries: str, rejects: str) -> None:
    """Create the entries and rejects tables (schema-qualified names) when they do not exist."""
    for table, columns in ((entries, ENTRY_COLUMNS), (rejects, REJECT_COLUMNS)):
        schema = table.split(".")[0]
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        con.execute(f"CREATE TABLE IF NOT EXISTS {_quoted(table)} ({columns})")


def _quoted(table: str) -> str:
    return ".".join(f'"{part}"' for part in table.split("."))


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def limit_memory(con: duckdb.DuckDBPyConnection, memory_limit: str | None, temp_directory: Path | None = None) -> None:
    """Cap DuckDB's memory (e.g. ``"1GB"``); beyond it, intermediate tables spill to disk."""
    if memory_limit:
        con.execute(f"SET memory_limit = {_sql_str(memory_limit)}")
    if temp_directory:
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {_sql_str(str(temp_directory))}")


def ingest_playlist_csv(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    batch: str,
    entries: str = "kaggle_raw.entries",
    rejects: str = "kaggle_raw.rejects",
) -> IngestStats:
    """Stream one Kaggle-format CSV into ``entries``, every other line into ``rejects``.

    Rows of ``batch`` already in either table are replaced, so re-ingesting a file is
    idempotent. Runs in the caller's transaction (if any); the header is checked first and a
    file that is not in the format raises :class:`KaggleFormatError` before anything changes.
    """
    path = Path(path).resolve()
    newline = "\\r\\n" if check_header(path) == "\r\n" else "\\n"
    create_tables(con, entries, rejects)
    source = str(path)
    scan_table, scan_name = "kaggle_reject_errors", "kaggle_reject_scans"
    con.execute(f"DROP TABLE IF EXISTS {scan_table}")
    con.execute(f"DROP TABLE IF EXISTS {scan_name}")
    # One physical line per row: a delimiter that never occurs, no quoting. Lines DuckDB itself
    # rejects (invalid UTF-8, a stray \x1f) land in its rejects tables with their line number.
    reader = (
        f"read_csv({_sql_str(source)}, columns={{'text': 'VARCHAR'}}, header=false, skip=1, delim='\\x1f', "
        f"quote='', escape='', new_line='{newline}', auto_detect=false, strict_mode=false, "
        f"store_rejects=true, rejects_table='{scan_table}', rejects_scan='{scan_name}', max_line_size=10000000)"
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE kaggle_lines AS
        SELECT row_number() OVER () AS seq, rtrim(text, chr(13)) AS text FROM {reader}
        """
    )
    # Physical line numbers: the header is line 1; each line DuckDB rejected is missing from
    # kaggle_lines, so a kept row's line = seq + 1 + (rejected lines before it).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE kaggle_engine_rejects AS
        SELECT line, error_type || ': ' || error_message AS reason, csv_line AS raw_line,
               line - 1 - (row_number() OVER (ORDER BY line) - 1) AS offset_seq,
               row_number() OVER (ORDER BY line) AS n_before
        FROM (SELECT DISTINCT ON (line) line, error_type, error_message, csv_line FROM {scan_table} ORDER BY line)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE kaggle_parsed AS
        WITH numbered AS (
            SELECT l.seq + 1 + coalesce(r.n_before, 0) AS line, l.text
            FROM kaggle_lines AS l ASOF LEFT JOIN kaggle_engine_rejects AS r ON l.seq >= r.offset_seq
        ),
        split AS (
            SELECT line, text, regexp_full_match(coalesce(text, ''), {_sql_str(_LINE_PATTERN)}) AS ok,
                   regexp_extract(coalesce(text, ''), {_sql_str(_LINE_PATTERN)}, ['f0', 'f1', 'f2', 'f3']) AS f
            FROM numbered
        ),
        unquoted AS (
            SELECT line, text, ok,
                {_UNQUOTE_SQL}
            FROM split
        )
        SELECT line, text, {", ".join(KAGGLE_COLUMNS)},
            CASE
                WHEN text IS NULL OR trim(text) = '' THEN 'blank line'
                WHEN NOT ok AND (length(text) - length(replace(text, '"', ''))) % 2 = 1 THEN 'unbalanced quote'
                WHEN NOT ok AND length(regexp_replace(text, '"(?:[^"]|"")*"', '', 'g'))
                              - length(replace(regexp_replace(text, '"(?:[^"]|"")*"', '', 'g'), ',', '')) <> 3
                    THEN 'wrong field count: '
                         || (1 + length(regexp_replace(text, '"(?:[^"]|"")*"', '', 'g'))
                               - length(replace(regexp_replace(text, '"(?:[^"]|"")*"', '', 'g'), ',', '')))::VARCHAR
                         || ' (expected 4)'
                WHEN NOT ok THEN 'stray quote in an unquoted field'
                {_EMPTY_SQL}
                ELSE NULL
            END AS reason
        FROM unquoted
        """
    )
    batch_sql, source_sql = _sql_str(batch), _sql_str(source)
    con.execute(f"DELETE FROM {_quoted(entries)} WHERE batch = {batch_sql}")
    con.execute(f"DELETE FROM {_quoted(rejects)} WHERE batch = {batch_sql}")
    con.execute(
        f"INSERT INTO {_quoted(entries)} SELECT {batch_sql}, {source_sql}, line, {', '.join(KAGGLE_COLUMNS)} "
        "FROM kaggle_parsed WHERE reason IS NULL ORDER BY line"
    )
    con.execute(
        f"""
        INSERT INTO {_quoted(rejects)}
        SELECT {batch_sql}, {source_sql}, line, reason, raw_line FROM (
            SELECT line, reason, left(text, 1000) AS raw_line FROM kaggle_parsed WHERE reason IS NOT NULL
            UNION ALL
            SELECT line, reason, left(raw_line, 1000) FROM kaggle_engine_rejects
        ) ORDER BY line
        """
    )
    ((accepted,),) = con.sql("SELECT count(*) FROM kaggle_parsed WHERE reason IS NULL").fetchall()
    reasons = dict(
        con.sql(
            f"SELECT regexp_replace(reason, ': .*', '') AS kind, count(*) FROM {_quoted(rejects)} "
            f"WHERE batch = {batch_sql} GROUP BY kind ORDER BY kind"
        ).fetchall()
    )
    for table in ("kaggle_lines", "kaggle_engine_rejects", "kaggle_parsed"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return IngestStats(
        source_file=source,
        batch=batch,
        bytes=path.stat().st_size,
        lines=count_lines(path),
        accepted=int(accepted),
        rejected=int(sum(reasons.values())),
        reasons={str(k): int(v) for k, v in reasons.items()},
    )


# --- enrichments -------------------------------------------------------------------------------


def _read_csv_auto(path: Path) -> str:
    return f"read_csv({_sql_str(str(Path(path).resolve()))}, header=true, all_varchar=true, quote='\"', escape='\"', strict_mode=false)"


def _require_columns(con: duckdb.DuckDBPyConnection, path: Path, required: tuple[str, ...]) -> None:
    columns = [row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {_read_csv_auto(path)}").fetchall()]
    missing = [c for c in required if c not in columns]
    if missing:
        raise KaggleFormatError(f"{path}: missing columns {missing} (found {columns[:20]})")


def load_artist_genres(con: duckdb.DuckDBPyConnection, path: Path, table: str = "kaggle_raw.artist_genres") -> int:
    """``data_w_genres.csv`` format (columns ``artists``, ``genres``) -> one row per (artist, genre).

    ``genres`` is a Python-literal list as text (``"['dance pop', 'pop']"``, ``[]``) or plain
    comma-separated names (``"dance pop, pop"``, as in some copies of the file). Replaces ``table``; returns its row count.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise KaggleFormatError(f"{path}: empty file (0 bytes)")
    _require_columns(con, path, ("artists", "genres"))
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.split(".")[0]}"')
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {_quoted(table)} AS
        WITH raw AS (SELECT trim(artists) AS artist_name, trim(coalesce(genres, '')) AS genres FROM {_read_csv_auto(path)}),
        items AS (
            SELECT artist_name, unnest(
                CASE WHEN genres LIKE '[%' THEN
                    list_concat(regexp_extract_all(genres, '''([^'']*)''', 1), regexp_extract_all(genres, '"([^"]*)"', 1))
                ELSE string_split(genres, ',') END) AS genre
            FROM raw
        )
        SELECT DISTINCT artist_name, trim(genre) AS genre FROM items
        WHERE artist_name IS NOT NULL AND artist_name <> '' AND trim(genre) <> ''
        """
    )
    ((rows,),) = con.sql(f"SELECT count(*) FROM {_quoted(table)}").fetchall()
    return int(rows)


def load_track_features(con: duckdb.DuckDBPyConnection, path: Path, table: str = "kaggle_raw.track_features") -> int:
    """``tracks_features.csv`` format (``name``, ``artists`` as a Python list, audio features)
    -> one row per (first artist, track name) with the mean of each feature. Replaces ``table``."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise KaggleFormatError(f"{path}: empty file (0 bytes)")
    _require_columns(con, path, ("name", "artists", *FEATURE_NAMES))
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.split(".")[0]}"')
    features = ", ".join(f"avg(TRY_CAST({name} AS DOUBLE)) AS {name}" for name in FEATURE_NAMES)
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {_quoted(table)} AS
        WITH raw AS (
            SELECT coalesce(regexp_extract(artists, '^\\[[''"](.*?)[''"][,\\]]', 1), artists) AS artist_name,
                   trim(name) AS track_name, *
            FROM {_read_csv_auto(path)}
        )
        SELECT trim(artist_name) AS artist_name, track_name, {features}
        FROM raw WHERE artist_name IS NOT NULL AND artist_name <> '' AND track_name IS NOT NULL AND track_name <> ''
        GROUP BY ALL
        """
    )
    ((rows,),) = con.sql(f"SELECT count(*) FROM {_quoted(table)}").fetchall()
    return int(rows)


def create_empty_enrichments(con: duckdb.DuckDBPyConnection, genres: str, features: str) -> None:
    """Empty enrichment tables (same columns) for when the optional files are absent."""
    for table, columns in ((genres, GENRE_COLUMNS), (features, FEATURE_COLUMNS)):
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.split(".")[0]}"')
        con.execute(f"CREATE OR REPLACE TABLE {_quoted(table)} ({columns})")


# --- the offline default: Kaggle-format files from the synthetic world -------------------------


def write_kaggle_csv_from_query(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> int:
    """Write ``query`` (columns user_id, artistname, trackname, playlistname) as a Kaggle-format
    CSV with the real file's header, atomically (temporary file, then rename). Returns rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, body = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.body.", suffix=".tmp")
    os.close(fd)
    fd, final_tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        con.execute(f"COPY ({query}) TO {_sql_str(body)} (FORMAT csv, HEADER false, QUOTE '\"')")
        ((rows,),) = con.sql(f"SELECT count(*) FROM ({query})").fetchall()
        with open(final_tmp, "wb") as out, open(body, "rb") as src:
            out.write((KAGGLE_HEADER + "\n").encode())
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(final_tmp, path)
    finally:
        Path(body).unlink(missing_ok=True)
        Path(final_tmp).unlink(missing_ok=True)
    return int(rows)


# Playlists of the synthetic world: one per (user, genre) - the songs of that genre the user
# played, in order of first play, named after the genre.
SYNTHETIC_PLAYLISTS_SQL = """
WITH song_genre AS (SELECT song_id, min(genre_id) AS genre_id FROM raw.song_genres GROUP BY song_id),
firsts AS (
    SELECT p.user_id, p.song_id, min(p.played_at) AS first_played, min(p.play_id) AS first_play
    FROM raw.plays AS p GROUP BY p.user_id, p.song_id
)
SELECT md5('user-' || f.user_id::VARCHAR) AS user_id, a.name AS artistname, s.title AS trackname,
       g.name AS playlistname
FROM firsts AS f
JOIN raw.songs AS s USING (song_id)
JOIN raw.artists AS a ON a.artist_id = s.artist_id
JOIN song_genre AS sg USING (song_id)
JOIN raw.genres AS g ON g.genre_id = sg.genre_id
ORDER BY f.user_id, sg.genre_id, f.first_played, f.first_play
"""

SYNTHETIC_GENRES_SQL = """
SELECT a.name AS artists, '[' || string_agg('''' || g.name || '''', ', ' ORDER BY g.genre_id) || ']' AS genres
FROM raw.artist_genres AS ag JOIN raw.artists AS a USING (artist_id) JOIN raw.genres AS g USING (genre_id)
GROUP BY a.artist_id, a.name ORDER BY a.artist_id
"""


def write_synthetic_kaggle_files(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, int]:
    """Kaggle-format ``spotify_dataset.csv`` and ``data_w_genres.csv`` from the warehouse's
    ``raw`` synthetic tables. Returns rows per file."""
    folder = Path(folder)
    rows = {"spotify_dataset.csv": write_kaggle_csv_from_query(con, SYNTHETIC_PLAYLISTS_SQL, folder / "spotify_dataset.csv")}
    genres_path = folder / "data_w_genres.csv"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".data_w_genres.", suffix=".tmp")
    os.close(fd)
    try:
        con.execute(f"COPY ({SYNTHETIC_GENRES_SQL}) TO {_sql_str(tmp)} (FORMAT csv, HEADER true)")
        os.replace(tmp, genres_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    ((rows["data_w_genres.csv"],),) = con.sql(f"SELECT count(*) FROM ({SYNTHETIC_GENRES_SQL})").fetchall()
    return rows


# --- landed listening sessions (the synthetic schema) -------------------------------------------

SESSION_COLUMNS = ("user_id", "song_id", "played_at")


def session_reader(path: Path) -> str:
    """DuckDB table function reading a sessions file (Parquet, or CSV with a header)."""
    path = Path(path).resolve()
    if path.suffix.lower() == ".parquet":
        return f"read_parquet({_sql_str(str(path))})"
    return f"read_csv({_sql_str(str(path))}, header=true, all_varchar=true, quote='\"', escape='\"', strict_mode=false)"


def check_sessions(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Fail naming the file unless it is a readable sessions file with the required columns."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        raise KaggleFormatError(f"{path}: empty or missing file")
    try:
        columns = [row[0] for row in con.sql(f"DESCRIBE SELECT * FROM {session_reader(path)}").fetchall()]
    except Exception as error:  # noqa: BLE001 - any reader error names the file
        raise KaggleFormatError(f"{path}: not a readable sessions file ({str(error).splitlines()[0]})") from None
    missing = [c for c in SESSION_COLUMNS if c not in columns]
    if missing:
        raise KaggleFormatError(f"{path}: missing columns {missing} for a listening-sessions file (found {columns[:12]})")


def sessions_to_kaggle(con: duckdb.DuckDBPyConnection, path: Path, out_csv: Path) -> dict:
    """Landed plays (synthetic schema) -> Kaggle-format playlist entries, the way the synthetic
    default builds playlists: one per (user, genre of the song), songs in order of first play.

    Plays that cannot be used (empty or invalid user_id / song_id / played_at, a song_id the
    warehouse's ``raw.songs`` does not know) go to the temporary table ``session_rejects``
    (line: the CSV line, header = 1, or the Parquet row number; reason; raw values).
    Returns counts: plays, used, rejected, entries.
    """
    path = Path(path)
    check_sessions(con, path)
    first_line = 2 if path.suffix.lower() != ".parquet" else 1
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE session_plays AS
        SELECT row_number() OVER () - 1 + {first_line} AS line,
               user_id::VARCHAR AS user_raw, song_id::VARCHAR AS song_raw, played_at::VARCHAR AS played_raw,
               TRY_CAST(user_id::VARCHAR AS INTEGER) AS user_id, TRY_CAST(song_id::VARCHAR AS INTEGER) AS song_id,
               TRY_CAST(played_at::VARCHAR AS TIMESTAMP) AS played_at
        FROM {session_reader(path)}
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE session_checked AS
        SELECT p.*, CASE
            WHEN p.user_raw IS NULL OR trim(p.user_raw) = '' THEN 'empty user_id'
            WHEN p.user_id IS NULL THEN 'invalid user_id'
            WHEN p.song_raw IS NULL OR trim(p.song_raw) = '' THEN 'empty song_id'
            WHEN p.song_id IS NULL THEN 'invalid song_id'
            WHEN p.played_at IS NULL THEN 'invalid played_at'
            WHEN s.song_id IS NULL THEN 'unknown song_id (not in raw.songs)'
            ELSE NULL END AS reason
        FROM session_plays AS p LEFT JOIN raw.songs AS s ON s.song_id = p.song_id
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE session_rejects AS
        SELECT line, reason, concat_ws(',', user_raw, song_raw, played_raw) AS raw_line
        FROM session_checked WHERE reason IS NOT NULL
        """
    )
    query = SYNTHETIC_PLAYLISTS_SQL.replace(
        "FROM raw.plays AS p GROUP BY",
        "FROM (SELECT user_id, song_id, played_at, line AS play_id FROM session_checked WHERE reason IS NULL) AS p GROUP BY",
    )
    entries = write_kaggle_csv_from_query(con, query, out_csv)
    ((plays, rejected),) = con.sql("SELECT count(*), count(reason) FROM session_checked").fetchall()
    return {"plays": int(plays), "used": int(plays - rejected), "rejected": int(rejected), "entries": entries}
