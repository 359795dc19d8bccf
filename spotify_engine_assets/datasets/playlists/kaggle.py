r"""Streaming loader for the Kaggle "Spotify Playlists" CSV format, into DuckDB.

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
  reason - ``blank line``, ``carriage return inside a line`` (a bare ``\r``),
  ``control character U+XXXX`` (NUL, ``\x1f`` and the other C0 controls but tab),
  ``repeated header line`` (concatenated exports), ``unbalanced quote``,
  ``stray quote in an unquoted field``, ``wrong field count: N (expected 4)``,
  ``empty <column>``, or a line DuckDB's reader itself rejected (``INVALID ENCODING`` for bytes
  that are not UTF-8, ...), taken from its ``store_rejects`` tables.

Lines end in ``\n`` or ``\r\n``, mixed in one file (concatenated exports) or not; only ``\n``
ends a line, so line numbers are the file's own. DuckDB's reader also splits at a bare ``\r``:
a file holding any ``\r`` is read through a normalized temporary copy (``\r\n`` -> ``\n``, a
bare ``\r`` -> a marker rejected as above), with the same lines. A byte-order mark at the start
of a data line is removed and counted (``IngestStats.cleaned``).

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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.data.sqlmodels import quote_identifier, quote_table

if TYPE_CHECKING:
    import duckdb

KAGGLE_COLUMNS = ("user_id", "artistname", "trackname", "playlistname")
KAGGLE_HEADER = 'user_id," ""artistname"""," ""trackname"""," ""playlistname"""'
HEADER_PROBE_BYTES = 1 << 16
# The warehouse tables the playlist SQL models read (schema ``kaggle_raw``).
KAGGLE_SOURCES = tuple(
    f"kaggle_raw.{table}"
    for table in ("entries", "rejects", "landed_entries", "landed_rejects", "artist_genres", "track_features")
)

ENTRY_COLUMNS = "batch VARCHAR, source_file VARCHAR, line BIGINT, user_id VARCHAR, artistname VARCHAR, trackname VARCHAR, playlistname VARCHAR"
REJECT_COLUMNS = "batch VARCHAR, source_file VARCHAR, line BIGINT, reason VARCHAR, raw_line VARCHAR"
GENRE_COLUMNS = "artist_name VARCHAR, genre VARCHAR"
FEATURE_NAMES = (
    "danceability",
    "energy",
    "loudness",
    "speechiness",
    "acousticness",
    "instrumentalness",
    "liveness",
    "valence",
    "tempo",
)
FEATURE_COLUMNS = "artist_name VARCHAR, track_name VARCHAR, " + ", ".join(f"{name} DOUBLE" for name in FEATURE_NAMES)

# C0 control characters other than tab (\n never occurs inside a line; a bare \r is marked, see
# BARE_CR_MARK): never part of a field, so a line holding one fails the line pattern.
_CONTROL = r"\x00-\x08\x0b-\x1f\x7f"
_CONTROL_PATTERN = f"[{_CONTROL}]"
# One CSV field: a quoted field with "" escapes, or an unquoted field without quotes or commas.
_FIELD = rf'"(?:[^"{_CONTROL}]|"")*"|[^,"{_CONTROL}]*'
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
    lines: int  # physical lines counted independently (header included)
    accepted: int
    rejected: int
    reasons: dict[str, int]
    cleaned: dict[str, int] = field(default_factory=dict)  # accepted lines changed on the way in, by what

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
        return {
            **asdict(self),
            "data_lines": self.data_lines,
            "unaccounted": self.unaccounted,
            "reject_rate": self.reject_rate,
        }


def count_lines(path: Path, chunk_size: int = 1 << 20) -> int:
    """Physical lines of a file (a last line without a newline counts), streamed in chunks."""
    return scan_lines(path, chunk_size)[0]


def scan_lines(path: Path, chunk_size: int = 1 << 20) -> tuple[int, bool]:
    r"""(physical lines, whether the file holds any ``\r``), streamed in chunks. Only ``\n``
    ends a line; a last line without one counts."""
    lines, last, carriage = 0, b"\n", False
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            lines += chunk.count(b"\n")
            carriage = carriage or b"\r" in chunk
            last = chunk[-1:]
    return lines + (last != b"\n"), carriage


# A bare \r in a normalized copy: bytes a valid line never holds (they are control characters,
# rejected anyway), so the line keeps its place and is rejected as a carriage return.
BARE_CR_MARK = b"\x00\x01\x02"
# The header line again (a second export appended), quoted or not, any case: one anchored match.
_HEADER_PATTERN = "(?i)" + ",".join(f'[" ]*{name}[" ]*' for name in KAGGLE_COLUMNS)


def normalized_copy(path: Path, target: Path, chunk_size: int = 1 << 20) -> Path:
    r"""Copy ``path`` to ``target`` with ``\r\n`` -> ``\n`` and every other ``\r`` ->
    :data:`BARE_CR_MARK` (a ``\r`` just before the end of the file ends the last line), so
    that DuckDB's reader, which also splits at a bare ``\r``, sees the file's own lines."""
    carry = b""
    with open(path, "rb") as source, open(target, "wb") as out:
        while chunk := source.read(chunk_size):
            data = carry + chunk
            carry = b"\r" if data.endswith(b"\r") else b""
            data = data[:-1] if carry else data
            out.write(data.replace(b"\r\n", b"\n").replace(b"\r", BARE_CR_MARK))
    return Path(target)


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
        raise KaggleFormatError(
            f"{path}: line 1 (header) is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    fields = [field.replace('"', "").strip().lower() for field in header.split(",")]
    if tuple(fields) != expected:
        missing = [c for c in expected if c not in fields]
        unknown = [f[:40] for f in fields if f not in expected][:8]
        details = [f"missing columns {missing}"] if missing else []
        details += [f"unexpected columns {unknown}"] if unknown else []
        details = details or [f"columns in the wrong order {fields}"]
        raise KaggleFormatError(
            f"{path}: header {header[:200]!r} does not match {list(expected)}: {'; '.join(details)}"
        )
    return newline


def create_tables(con: duckdb.DuckDBPyConnection, entries: str, rejects: str) -> None:
    """Create the entries and rejects tables (schema-qualified names) when they do not exist."""
    for table, columns in ((entries, ENTRY_COLUMNS), (rejects, REJECT_COLUMNS)):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(table.split('.')[0])}")
        con.execute(f"CREATE TABLE IF NOT EXISTS {quote_table(table)} ({columns})")


# File names, batch ids and settings never become SQL text: they are bound as parameters (``?``)
# and table names are quoted identifiers (``quote_table``).


def limit_memory(con: duckdb.DuckDBPyConnection, memory_limit: str | None, temp_directory: Path | None = None) -> None:
    """Cap DuckDB's memory (e.g. ``"1GB"``); beyond it, intermediate tables spill to disk."""
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    if temp_directory:
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute("SET temp_directory = ?", [str(temp_directory)])


def ingest_playlist_csv(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    batch: str,
    entries: str = "kaggle_raw.entries",
    rejects: str = "kaggle_raw.rejects",
    work_dir: Path | None = None,
) -> IngestStats:
    """Stream one Kaggle-format CSV into ``entries``, every other line into ``rejects``.

    Rows of ``batch`` already in either table are replaced, so re-ingesting a file is
    idempotent. Runs in the caller's transaction (if any); the header is checked first and a
    file that is not in the format raises :class:`KaggleFormatError` before anything changes.
    ``work_dir``: where a normalized copy of a file holding a carriage return is written (default: the
    system's temporary folder).
    """
    path = Path(path).resolve()
    check_header(path)
    lines, carriage = scan_lines(path)
    create_tables(con, entries, rejects)
    source = str(path)
    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".kaggle-lines-") as folder:
        readable = normalized_copy(path, Path(folder) / "lines.csv") if carriage else path
        accepted, reasons, cleaned = _ingest_lines(con, readable, source, batch, entries, rejects)
    return IngestStats(
        source_file=source,
        batch=batch,
        bytes=path.stat().st_size,
        lines=lines,
        accepted=int(accepted),
        rejected=int(sum(reasons.values())),
        reasons={str(k): int(v) for k, v in reasons.items()},
        cleaned=cleaned,
    )


def _ingest_lines(con, readable: Path, source: str, batch: str, entries: str, rejects: str) -> tuple[int, dict, dict]:
    """The body of :func:`ingest_playlist_csv` over ``readable`` (the file, or its normalized
    copy), rows recorded as from ``source``: (accepted, reject reasons, cleaned counts)."""
    scan_table, scan_name = "kaggle_reject_errors", "kaggle_reject_scans"
    con.execute(f"DROP TABLE IF EXISTS {scan_table}")
    con.execute(f"DROP TABLE IF EXISTS {scan_name}")
    # One physical line per row: a delimiter that never occurs, no quoting. Lines DuckDB itself
    # rejects (invalid UTF-8, a stray \x1f) land in its rejects tables with their line number.
    reader = (
        f"read_csv(?, columns={{'text': 'VARCHAR'}}, header=false, skip=1, delim='\\x1f', "
        f"quote='', escape='', new_line='\\n', auto_detect=false, strict_mode=false, "
        f"store_rejects=true, rejects_table='{scan_table}', rejects_scan='{scan_name}', max_line_size=10000000)"
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE kaggle_lines AS
        SELECT row_number() OVER () AS seq, text FROM {reader}
        """,
        [str(readable)],
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
        WITH raw AS (
            SELECT l.seq + 1 + coalesce(r.n_before, 0) AS line, l.text
            FROM kaggle_lines AS l ASOF LEFT JOIN kaggle_engine_rejects AS r ON l.seq >= r.offset_seq
        ),
        numbered AS (  -- a byte-order mark starting a data line is removed (and counted)
            SELECT line, CASE WHEN bom THEN text[2:] ELSE text END AS text, bom
            FROM (SELECT line, text, coalesce(starts_with(text, chr(65279)), false) AS bom FROM raw)
        ),
        split AS (
            SELECT line, text, bom, regexp_full_match(coalesce(text, ''), $pattern) AS ok,
                   regexp_extract(coalesce(text, ''), $pattern, ['f0', 'f1', 'f2', 'f3']) AS f
            FROM numbered
        ),
        unquoted AS (
            SELECT line, text, bom, ok,
                {_UNQUOTE_SQL}
            FROM split
        )
        SELECT line, text, bom, {", ".join(KAGGLE_COLUMNS)},
            CASE
                WHEN text IS NULL OR trim(text) = '' THEN 'blank line'
                WHEN NOT ok AND contains(text, $bare_cr) THEN 'carriage return inside a line (a bare \\r)'
                WHEN NOT ok AND regexp_matches(text, $control)
                    THEN printf('control character U+%04X', unicode(regexp_extract(text, $control)))
                WHEN regexp_full_match(text, $header) THEN 'repeated header line'
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
        """,
        {
            "pattern": _LINE_PATTERN,
            "bare_cr": BARE_CR_MARK.decode(),
            "control": _CONTROL_PATTERN,
            "header": _HEADER_PATTERN,
        },
    )
    con.execute(f"DELETE FROM {quote_table(entries)} WHERE batch = ?", [batch])
    con.execute(f"DELETE FROM {quote_table(rejects)} WHERE batch = ?", [batch])
    con.execute(
        f"INSERT INTO {quote_table(entries)} SELECT $batch, $source, line, {', '.join(KAGGLE_COLUMNS)} "
        "FROM kaggle_parsed WHERE reason IS NULL ORDER BY line",
        {"batch": batch, "source": source},
    )
    con.execute(
        f"""
        INSERT INTO {quote_table(rejects)}
        SELECT $batch, $source, line, reason, raw_line FROM (
            SELECT line, reason, left(replace(text, $bare_cr, chr(13)), 1000) AS raw_line FROM kaggle_parsed WHERE reason IS NOT NULL
            UNION ALL
            SELECT line, reason, left(raw_line, 1000) FROM kaggle_engine_rejects
        ) ORDER BY line
        """,
        {"batch": batch, "source": source, "bare_cr": BARE_CR_MARK.decode()},
    )
    ((accepted, boms),) = con.sql(
        "SELECT count(*), count(*) FILTER (bom) FROM kaggle_parsed WHERE reason IS NULL"
    ).fetchall()
    reasons = dict(
        con.execute(
            f"SELECT regexp_replace(reason, ': .*', '') AS kind, count(*) FROM {quote_table(rejects)} "
            "WHERE batch = ? GROUP BY kind ORDER BY kind",
            [batch],
        ).fetchall()
    )
    for table in ("kaggle_lines", "kaggle_engine_rejects", "kaggle_parsed"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return int(accepted), reasons, ({"byte order mark removed": int(boms)} if boms else {})


# --- enrichments -------------------------------------------------------------------------------


# A headed CSV read as text; the file name is the statement's parameter ``$path``.
_READ_CSV_AUTO = "read_csv($path, header=true, all_varchar=true, quote='\"', escape='\"', strict_mode=false)"


def _path_param(path: Path) -> dict[str, str]:
    return {"path": str(Path(path).resolve())}


def _load_enrichment(con: duckdb.DuckDBPyConnection, path: Path, table: str, required: tuple, query: str) -> int:
    """Replace ``table`` with ``query`` over the headed CSV ``path`` (checked non-empty and holding
    the ``required`` columns); returns the table's row count."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise KaggleFormatError(f"{path}: empty file (0 bytes)")
    columns = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {_READ_CSV_AUTO}", _path_param(path)).fetchall()]
    missing = [c for c in required if c not in columns]
    if missing:
        raise KaggleFormatError(f"{path}: missing columns {missing} (found {columns[:20]})")
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(table.split('.')[0])}")
    con.execute(f"CREATE OR REPLACE TABLE {quote_table(table)} AS {query}", _path_param(path))
    ((rows,),) = con.sql(f"SELECT count(*) FROM {quote_table(table)}").fetchall()
    return int(rows)


def load_artist_genres(con: duckdb.DuckDBPyConnection, path: Path, table: str = "kaggle_raw.artist_genres") -> int:
    """``data_w_genres.csv`` format (columns ``artists``, ``genres``) -> one row per (artist, genre).

    ``genres`` is a Python-literal list as text (``"['dance pop', 'pop']"``, ``[]``) or plain
    comma-separated names (``"dance pop, pop"``, as in some copies of the file). Replaces ``table``; returns its row count.
    """
    return _load_enrichment(
        con,
        path,
        table,
        ("artists", "genres"),
        f"""
        WITH raw AS (SELECT trim(artists) AS artist_name, trim(coalesce(genres, '')) AS genres FROM {_READ_CSV_AUTO}),
        items AS (
            SELECT artist_name, unnest(
                CASE WHEN genres LIKE '[%' THEN
                    list_concat(regexp_extract_all(genres, '''([^'']*)''', 1), regexp_extract_all(genres, '"([^"]*)"', 1))
                ELSE string_split(genres, ',') END) AS genre
            FROM raw
        )
        SELECT DISTINCT artist_name, trim(genre) AS genre FROM items
        WHERE artist_name IS NOT NULL AND artist_name <> '' AND trim(genre) <> ''
        """,
    )


def load_track_features(con: duckdb.DuckDBPyConnection, path: Path, table: str = "kaggle_raw.track_features") -> int:
    """``tracks_features.csv`` format (``name``, ``artists`` as a Python list, audio features)
    -> one row per (first artist, track name) with the mean of each feature. Replaces ``table``."""
    features = ", ".join(f"avg(TRY_CAST({name} AS DOUBLE)) AS {name}" for name in FEATURE_NAMES)
    return _load_enrichment(
        con,
        path,
        table,
        ("name", "artists", *FEATURE_NAMES),
        f"""
        WITH raw AS (
            SELECT coalesce(regexp_extract(artists, '^\\[[''"](.*?)[''"][,\\]]', 1), artists) AS artist_name,
                   trim(name) AS track_name, *
            FROM {_READ_CSV_AUTO}
        )
        SELECT trim(artist_name) AS artist_name, track_name, {features}
        FROM raw WHERE artist_name IS NOT NULL AND artist_name <> '' AND track_name IS NOT NULL AND track_name <> ''
        GROUP BY ALL
        """,
    )


def create_empty_enrichments(con: duckdb.DuckDBPyConnection, genres: str, features: str) -> None:
    """Empty enrichment tables (same columns) for when the optional files are absent."""
    for table, columns in ((genres, GENRE_COLUMNS), (features, FEATURE_COLUMNS)):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(table.split('.')[0])}")
        con.execute(f"CREATE OR REPLACE TABLE {quote_table(table)} ({columns})")


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
        con.execute(f"COPY ({query}) TO ? (FORMAT csv, HEADER false, QUOTE '\"')", [body])
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
    rows = {
        "spotify_dataset.csv": write_kaggle_csv_from_query(con, SYNTHETIC_PLAYLISTS_SQL, folder / "spotify_dataset.csv")
    }
    genres_path = folder / "data_w_genres.csv"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".data_w_genres.", suffix=".tmp")
    os.close(fd)
    try:
        con.execute(f"COPY ({SYNTHETIC_GENRES_SQL}) TO ? (FORMAT csv, HEADER true)", [tmp])
        os.replace(tmp, genres_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    ((rows["data_w_genres.csv"],),) = con.sql(f"SELECT count(*) FROM ({SYNTHETIC_GENRES_SQL})").fetchall()
    return rows


# --- landed files ------------------------------------------------------------------------------


class LandingPathError(ValueError):
    """A landed file's path escapes the landing folder (``..``, a symbolic link, elsewhere)."""


def confined_landing_file(landing: Path, path: Path | str) -> Path:
    """``path`` resolved, if it names a file inside ``landing`` (a sub-folder such as
    ``archive/<batch>/`` included); raises :class:`LandingPathError` naming it otherwise.

    Refused: a ``..`` component, a symbolic link (the file or any folder between ``landing`` and
    it) and anything that resolves outside ``landing``, so a run config or a crafted name can
    never make the platform read a file elsewhere on the machine.
    """
    raw, landing = Path(path), Path(landing)
    if ".." in raw.parts:
        raise LandingPathError(
            f"landed file {str(path)!r}: '..' is not allowed in a landing path (must stay inside {landing})"
        )
    absolute = raw if raw.is_absolute() else landing / raw
    for root in (landing, landing.resolve()):
        try:
            relative = absolute.relative_to(root)
            break
        except ValueError:
            continue
    else:
        raise LandingPathError(f"landed file {str(path)!r} is outside the landing folder {landing}")
    current = root
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            raise LandingPathError(
                f"landed file {str(path)!r}: {current} is a symbolic link (landing files must be regular files inside {landing})"
            )
    if not str(absolute.resolve()).startswith(str(landing.resolve()) + os.sep):
        raise LandingPathError(f"landed file {str(path)!r} resolves outside the landing folder {landing}")
    return absolute


def open_for_writing(paths: list[Path], proc: Path = Path("/proc")) -> tuple[dict[Path, list[int]], list[int] | None]:
    """Which processes hold each of ``paths`` open for writing, read from ``/proc/<pid>/fd`` and
    ``fdinfo`` (Linux): ``({path: [pid, ...]}, unseen)``, where ``unseen`` lists the processes
    whose open files could not be read (another user's, without the right to see them) and is
    ``None`` when ``/proc`` cannot be read at all. A file is confirmed closed only when it is
    not in the first and ``unseen`` is empty.
    """
    targets = {str(Path(path).resolve()): Path(path) for path in paths}
    writers: dict[Path, list[int]] = {}
    if not targets:
        return writers, []
    try:
        pids = [entry for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        return writers, None
    unseen = []
    for pid in pids:
        try:
            descriptors = os.listdir(proc / pid / "fd")
        except PermissionError:
            unseen.append(int(pid))
            continue
        except OSError:  # the process ended
            continue
        for fd in descriptors:
            try:
                target = os.readlink(proc / pid / "fd" / fd)
                if target not in targets:
                    continue
                flags = next(
                    line for line in (proc / pid / "fdinfo" / fd).read_text().splitlines() if line.startswith("flags:")
                )
            except (OSError, StopIteration):
                continue
            if int(flags.split()[1], 8) & (os.O_WRONLY | os.O_RDWR):
                writers.setdefault(targets[target], []).append(int(pid))
    return writers, unseen


# --- landed listening sessions (the synthetic schema) -------------------------------------------

SESSION_COLUMNS = ("user_id", "song_id", "played_at")
# Optional columns of the synthetic plays schema that are checked when a file has them.
SESSION_DURATIONS = ("ms_played", "track_duration_ms")
SESSION_ID_COLUMN = "play_id"


def session_reader(path: Path) -> str:
    """DuckDB table function reading a sessions file (Parquet, or CSV with a header); the file
    name is the statement's parameter ``$path`` (see :func:`_path_param`)."""
    if Path(path).suffix.lower() == ".parquet":
        return "read_parquet($path)"
    return _READ_CSV_AUTO


def session_columns(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """Column names of a sessions file; fails naming the file unless it is a readable sessions
    file with the required columns."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        raise KaggleFormatError(f"{path}: empty or missing file")
    try:
        columns = [
            row[0]
            for row in con.execute(f"DESCRIBE SELECT * FROM {session_reader(path)}", _path_param(path)).fetchall()
        ]
    except Exception as error:  # noqa: BLE001 - any reader error names the file
        raise KaggleFormatError(f"{path}: not a readable sessions file ({str(error).splitlines()[0]})") from None
    missing = [c for c in SESSION_COLUMNS if c not in columns]
    if missing:
        raise KaggleFormatError(
            f"{path}: missing columns {missing} for a listening-sessions file (found {columns[:12]})"
        )
    return columns


def _optional_session_checks(columns: list[str]) -> tuple[str, str]:
    """(select list, CASE branches) for the optional columns present in a sessions file.

    Durations: empty -> ``missing <column>``, not a number -> ``invalid <column>``, below 0 ->
    ``negative <column>``. ``play_id``: empty or invalid is rejected, and every repeat of an id
    after its first line is rejected as ``duplicate play_id (first on line N)``.
    """
    selects, cases = [], []
    for column in SESSION_DURATIONS:
        if column in columns:
            raw, value = quote_identifier(column), quote_identifier(f"{column}_value")
            selects.append(
                f"{raw}::VARCHAR AS {quote_identifier(column + '_raw')}, TRY_CAST({raw}::VARCHAR AS DOUBLE) AS {value}"
            )
            cases += [
                f"WHEN p.{quote_identifier(column + '_raw')} IS NULL OR trim(p.{quote_identifier(column + '_raw')}) = '' THEN 'missing {column}'",
                f"WHEN p.{value} IS NULL THEN 'invalid {column}'",
                f"WHEN p.{value} < 0 THEN 'negative {column}'",
            ]
    if SESSION_ID_COLUMN in columns:
        selects.append("play_id::VARCHAR AS play_raw, TRY_CAST(play_id::VARCHAR AS BIGINT) AS play_value")
        cases += [
            "WHEN p.play_raw IS NULL OR trim(p.play_raw) = '' THEN 'empty play_id'",
            "WHEN p.play_value IS NULL THEN 'invalid play_id'",
            "WHEN p.line > min(p.line) OVER (PARTITION BY p.play_value) "
            "THEN 'duplicate play_id (first on line ' || (min(p.line) OVER (PARTITION BY p.play_value))::VARCHAR || ')'",
        ]
    return "".join(", " + s for s in selects), " ".join(cases)


def sessions_to_kaggle(
    con: duckdb.DuckDBPyConnection, path: Path, out_csv: Path, not_after: datetime | None = None
) -> dict:
    """Landed plays (synthetic schema) -> Kaggle-format playlist entries, the way the synthetic
    default builds playlists: one per (user, genre of the song), songs in order of first play.

    Plays that cannot be used are *quarantined*, not loaded: they go to the temporary table
    ``session_rejects`` (line: the CSV line, header = 1, or the Parquet row number; reason; raw
    values) and the rest of the file is used. Reasons: empty or invalid ``user_id`` /
    ``song_id`` / ``played_at``; ``played_at`` in the future (after ``not_after``, default: now,
    UTC); with the optional columns, a missing, invalid or negative ``ms_played`` /
    ``track_duration_ms`` and an empty, invalid or repeated ``play_id``; a ``song_id`` the
    warehouse's ``raw.songs`` does not know. Returns counts: plays, used, rejected, entries.
    """
    path = Path(path)
    columns = session_columns(con, path)
    first_line = 2 if path.suffix.lower() != ".parquet" else 1
    not_after = not_after or datetime.now(UTC).replace(tzinfo=None)
    optional_selects, optional_cases = _optional_session_checks(columns)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE session_plays AS
        SELECT row_number() OVER () - 1 + {first_line} AS line,
               user_id::VARCHAR AS user_raw, song_id::VARCHAR AS song_raw, played_at::VARCHAR AS played_raw,
               TRY_CAST(user_id::VARCHAR AS INTEGER) AS user_id, TRY_CAST(song_id::VARCHAR AS INTEGER) AS song_id,
               TRY_CAST(played_at::VARCHAR AS TIMESTAMP) AS played_at{optional_selects}
        FROM {session_reader(path)}
        """,
        _path_param(path),
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE session_checked AS
        SELECT p.line, p.user_raw, p.song_raw, p.played_raw, p.user_id, p.song_id, p.played_at, CASE
            WHEN p.user_raw IS NULL OR trim(p.user_raw) = '' THEN 'empty user_id'
            WHEN p.user_id IS NULL THEN 'invalid user_id'
            WHEN p.song_raw IS NULL OR trim(p.song_raw) = '' THEN 'empty song_id'
            WHEN p.song_id IS NULL THEN 'invalid song_id'
            WHEN p.played_at IS NULL THEN 'invalid played_at'
            WHEN p.played_at > $not_after THEN 'played_at in the future (after ' || strftime($not_after, '%Y-%m-%d %H:%M:%S') || ' UTC)'
            {optional_cases}
            WHEN s.song_id IS NULL THEN 'unknown song_id (not in raw.songs)'
            ELSE NULL END AS reason
        FROM session_plays AS p LEFT JOIN raw.songs AS s ON s.song_id = p.song_id
        ORDER BY p.line
        """,
        {"not_after": not_after},
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
