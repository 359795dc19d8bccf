"""The playlist chain's ingestion: Kaggle "Spotify Playlists"-format files streamed into DuckDB
(with a rejects table and blocking reject-rate and line-accounting gates).

With no Kaggle files in ``kaggle/`` of the data lake folder the chain runs on Kaggle-format files derived
from the synthetic world. Landed batches (see :mod:`.sensors`) are a dynamic partition of the
``kaggle_raw/landed_*`` assets and flow through the same SQL models (``dbt_like_sql/playlists``).
"""

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from ...core.plots import frame_markdown
from ...core.presentation import group_name, metric_value, rounded
from ...core.storage.artifacts import file_sha256  # the one file hash (sensors and tests import it from here)
from ...core.storage.paths import safe_name, source_version
from ...datasets.playlists import kaggle as kaggle_lib
from ...datasets.playlists.kaggle import KaggleFormatError
from ..resources import DUCKDB_POOL, DataLake, Warehouse, transaction

INGESTION_GROUP, LANDING_GROUP = group_name("playlists", "ingestion"), "playlists_landing"
SOURCE_FILES_KEY = dg.AssetKey(["kaggle", "source_files"])
BASE_KEYS = {
    name: dg.AssetKey(["kaggle_raw", name]) for name in ("entries", "rejects", "artist_genres", "track_features")
}
LANDED_KEYS = {name: dg.AssetKey(["kaggle_raw", name]) for name in ("landed_entries", "landed_rejects")}
SYNTHETIC_RAW_DEPS = [
    dg.AssetKey(["raw", t]) for t in ("plays", "songs", "artists", "genres", "song_genres", "artist_genres")
]
landing_batches = dg.DynamicPartitionsDefinition(name="landing_batches")


def kaggle_dir(lake: DataLake) -> Path:
    return lake.path / "kaggle"


def resolve_sources(lake: DataLake) -> dict[str, Path | None]:
    """The Kaggle files the chain reads: ``<lake>/kaggle/`` when ``spotify_dataset.csv`` is
    there (with the optional enrichments beside it), else the generated synthetic ones."""
    real = kaggle_dir(lake)
    folder = real if (real / "spotify_dataset.csv").exists() else real / "generated"
    optional = {name: folder / f"{name}.csv" for name in ("data_w_genres", "tracks_features")}
    return {
        "playlists": folder / "spotify_dataset.csv",
        **{name: (path if path.exists() else None) for name, path in optional.items()},
    }


@contextlib.contextmanager
def _ingest_transaction(con):
    """One warehouse transaction for an ingestion (nothing half-loaded), a malformed file reported
    as a Failure naming it."""
    try:
        with transaction(con):
            yield
    except KaggleFormatError as error:
        raise dg.Failure(description=str(error)) from error


class GateFailed(Exception):
    """A blocking gate failed inside an ingestion's transaction (raised there, so that it rolls
    back: the previous tables stay current)."""

    def __init__(self, stats: kaggle_lib.IngestStats, sample: str, failed: list[str]):
        super().__init__(f"{stats.source_file}: blocking gate(s) failed: {'; '.join(failed)}")
        self.stats, self.sample, self.failed = stats, sample, failed


def _check_gates(stats: kaggle_lib.IngestStats, max_rate: float, sample: str) -> None:
    """Stage, check, then swap: called inside the ingestion's transaction, before it commits."""
    failed = []
    if stats.reject_rate > max_rate:
        failed.append(
            f"reject_rate_within_threshold: {stats.rejected} of {stats.data_lines} lines rejected "
            f"({stats.reject_rate:.1%} > {max_rate:.1%}; {stats.reasons})"
        )
    if stats.unaccounted:
        failed.append(
            f"every_line_accounted: {stats.unaccounted} lines unaccounted ({stats.data_lines} data lines, "
            f"{stats.accepted} accepted, {stats.rejected} rejected)"
        )
    if failed:
        raise GateFailed(stats, sample, failed)


def _gate_failure(gate: GateFailed, max_rate: float, asset_key: dg.AssetKey, kept: str):
    """The failed checks (with the first rejects), then the run's Failure naming the file, the
    gates and what stayed current."""
    yield from _reject_checks(gate.stats, max_rate, asset_key, sample=gate.sample)
    raise dg.Failure(
        description=f"{gate}; nothing was written: {kept}", metadata={"first_rejects": dg.MetadataValue.md(gate.sample)}
    )


# --- ingestion --------------------------------------------------------------------------------


@dg.asset(
    key=SOURCE_FILES_KEY,
    deps=SYNTHETIC_RAW_DEPS,
    group_name=INGESTION_GROUP,
    kinds={"csv"},
    pool=DUCKDB_POOL,
    code_version=source_version(kaggle_lib),
)
def kaggle_source_files(
    context: dg.AssetExecutionContext, lake: DataLake, warehouse: Warehouse
) -> dg.MaterializeResult:
    """The Kaggle-format files of the playlist chain. ``kaggle/spotify_dataset.csv`` in the data lake folder
    (``$SPOTIFY_ENGINE_DATA_LAKE``, default the repository's ``data_lake/``)
    (and optional ``data_w_genres.csv``, ``tracks_features.csv``) when present; otherwise
    Kaggle-format CSVs written from the synthetic world (one playlist per user and genre)."""
    if (kaggle_dir(lake) / "spotify_dataset.csv").exists():
        origin = "data lake (real Kaggle files)"
    else:
        with warehouse.connect(read_only=True) as con:
            try:
                rows = kaggle_lib.write_synthetic_kaggle_files(con, kaggle_dir(lake) / "generated")
            except Exception as error:
                raise dg.Failure(
                    f"cannot derive Kaggle files from the synthetic world ({error}); materialize synthetic_world first"
                ) from error
        context.log.info(f"wrote Kaggle-format files from the synthetic world: {rows}")
        origin = "generated from the synthetic world"
    sources = resolve_sources(lake)
    return dg.MaterializeResult(
        metadata={
            "origin": origin,
            **{name: dg.MetadataValue.path(str(path)) if path else "absent" for name, path in sources.items()},
            "size_mb": rounded(sum(path.stat().st_size for path in sources.values() if path) / 2**20),
        }
    )


class KaggleIngestConfig(dg.Config):
    max_reject_rate: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Blocking gate: rejected / data lines above this fails the run."
    )
    memory_limit: str = Field(
        default="1GB", description="DuckDB memory cap while ingesting (larger intermediates spill to disk)."
    )


def _ingest_results(
    stats: kaggle_lib.IngestStats, sample: str, entries: dg.AssetKey, rejects: dg.AssetKey, **entries_metadata
):
    """The entries and rejects materializations of one ingestion (``sample``: its first rejects)."""
    yield dg.MaterializeResult(
        asset_key=entries,
        metadata={
            "dagster/row_count": stats.accepted,
            "source_file": dg.MetadataValue.path(stats.source_file),
            "source_mb": rounded(stats.bytes / 2**20),
            "data_lines": stats.data_lines,
            "accepted_rows": stats.accepted,
            "rejected_rows": stats.rejected,
            "unaccounted_lines": stats.unaccounted,
            "reject_rate": metric_value(stats.reject_rate),
            "reject_reasons": dg.MetadataValue.json(stats.reasons),
            **entries_metadata,
        },
    )
    yield dg.MaterializeResult(
        asset_key=rejects,
        metadata={
            "dagster/row_count": stats.rejected,
            "reject_reasons": dg.MetadataValue.json(stats.reasons),
            "first_rejects": dg.MetadataValue.md(sample),
        },
    )


_REJECT_CHECKS = {
    "reject_rate_within_threshold": "Rejected lines / data lines stay at or below the configured max_reject_rate.",
    "every_line_accounted": "An independent newline count equals accepted + rejected rows + the header.",
}


def _reject_checks(
    stats: kaggle_lib.IngestStats, max_rate: float, asset_key: dg.AssetKey, sample: str | None = None
) -> list[dg.AssetCheckResult]:
    rejects = (
        {"reject_reasons": dg.MetadataValue.json(stats.reasons), "first_rejects": dg.MetadataValue.md(sample)}
        if sample
        else {}
    )
    return [
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name="reject_rate_within_threshold",
            passed=stats.reject_rate <= max_rate,
            metadata={
                "reject_rate": metric_value(stats.reject_rate),
                "threshold": max_rate,
                "rejected_rows": stats.rejected,
                "data_lines": stats.data_lines,
                **rejects,
            },
        ),
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name="every_line_accounted",
            passed=stats.unaccounted == 0,
            metadata={
                "data_lines": stats.data_lines,
                "accepted": stats.accepted,
                "rejected": stats.rejected,
                "unaccounted": stats.unaccounted,
            },
        ),
    ]


def _reject_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset_key, blocking=True, description=text)
        for name, text in _REJECT_CHECKS.items()
    ]


def _sample_rejects(con, table: str, batch: str) -> str:
    frame = con.sql(
        f"SELECT line, reason, raw_line FROM {table} WHERE batch = ? ORDER BY line LIMIT 10", params=[batch]
    ).pl()
    return frame_markdown(frame) if frame.height else "no rejected lines"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            BASE_KEYS["entries"],
            deps=[SOURCE_FILES_KEY],
            group_name=INGESTION_GROUP,
            kinds={"duckdb"},
            description="Accepted rows of the Kaggle playlists file (batch 'base'), with their line numbers.",
        ),
        dg.AssetSpec(
            BASE_KEYS["rejects"],
            deps=[SOURCE_FILES_KEY],
            group_name=INGESTION_GROUP,
            kinds={"duckdb"},
            description="Every rejected line of the Kaggle playlists file with its line number and reason.",
        ),
        dg.AssetSpec(
            BASE_KEYS["artist_genres"],
            deps=[SOURCE_FILES_KEY],
            group_name=INGESTION_GROUP,
            kinds={"duckdb"},
            description="Optional enrichment: (artist name, genre) from a data_w_genres.csv-format file; empty when absent.",
        ),
        dg.AssetSpec(
            BASE_KEYS["track_features"],
            deps=[SOURCE_FILES_KEY],
            group_name=INGESTION_GROUP,
            kinds={"duckdb"},
            description="Optional enrichment: audio features from a tracks_features.csv-format file; empty when absent.",
        ),
    ],
    check_specs=_reject_check_specs(BASE_KEYS["entries"]),
    pool=DUCKDB_POOL,
    code_version=source_version(kaggle_lib),
    name="kaggle_ingest",
)
def kaggle_ingest(context: dg.AssetExecutionContext, config: KaggleIngestConfig, lake: DataLake, warehouse: Warehouse):
    """Stream the Kaggle playlists file into DuckDB with DuckDB's CSV reader (one transaction).

    Stage, check, then swap: the blocking gates are evaluated inside the transaction, and a
    failed gate rolls it back, so the previous ``kaggle_raw`` tables stay current."""
    sources = resolve_sources(lake)
    gate = None
    with warehouse.connect() as con:
        con.execute("SET preserve_insertion_order = true")
        kaggle_lib.limit_memory(con, config.memory_limit, lake.path / "duckdb_tmp")
        try:
            with _ingest_transaction(con):
                stats = kaggle_lib.ingest_playlist_csv(
                    con,
                    sources["playlists"],
                    "base",
                    "kaggle_raw.entries",
                    "kaggle_raw.rejects",
                    work_dir=lake.path / "duckdb_tmp",
                )
                if stats.data_lines == 0:  # inside the transaction: the previous tables stay
                    raise KaggleFormatError(
                        f"{stats.source_file}: header only, no data rows; the previous kaggle_raw tables are kept"
                    )
                sample = _sample_rejects(con, '"kaggle_raw"."rejects"', "base")
                _check_gates(stats, config.max_reject_rate, sample)
                kaggle_lib.create_tables(con, "kaggle_raw.landed_entries", "kaggle_raw.landed_rejects")
                kaggle_lib.create_empty_enrichments(con, "kaggle_raw.artist_genres", "kaggle_raw.track_features")
                genre_rows = (
                    kaggle_lib.load_artist_genres(con, sources["data_w_genres"]) if sources["data_w_genres"] else 0
                )
                feature_rows = (
                    kaggle_lib.load_track_features(con, sources["tracks_features"]) if sources["tracks_features"] else 0
                )
        except GateFailed as failed:
            gate = failed
    if gate:
        yield from _gate_failure(
            gate, config.max_reject_rate, BASE_KEYS["entries"], "the previous kaggle_raw tables stay current"
        )
    context.log.info(f"ingested {stats.accepted} rows, rejected {stats.rejected} ({stats.reasons})")
    yield from _ingest_results(stats, sample, BASE_KEYS["entries"], BASE_KEYS["rejects"])
    enrichments = (("artist_genres", genre_rows, "data_w_genres"), ("track_features", feature_rows, "tracks_features"))
    for key, rows, source in enrichments:
        metadata = {"dagster/row_count": rows, "source": str(sources[source] or "absent")}
        yield dg.MaterializeResult(asset_key=BASE_KEYS[key], metadata=metadata)
    yield from _reject_checks(stats, config.max_reject_rate, BASE_KEYS["entries"])


# --- landed batches ---------------------------------------------------------------------------


def archive_path(lake: DataLake, batch: str, name: str) -> Path:
    return lake.landing_dir / "archive" / safe_name(batch, "landing batch") / name


class LandedBatchConfig(dg.Config):
    path: str = Field(description="The landed file (set by the landing sensor).")
    sha256: str = Field(description="Its content hash when the sensor took it.")
    kind: Literal["kaggle", "sessions"] = Field(
        default="kaggle", description="'kaggle' (Kaggle-format CSV) or 'sessions' (synthetic plays, Parquet or CSV)."
    )
    max_reject_rate: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Blocking gate on the batch's reject rate."
    )
    memory_limit: str = Field(default="1GB", description="DuckDB memory cap while ingesting.")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            LANDED_KEYS["landed_entries"],
            group_name=LANDING_GROUP,
            kinds={"duckdb"},
            description="Accepted rows of landed batches (one dynamic partition per batch): files dropped into "
            "landing/ of the data lake folder ($SPOTIFY_ENGINE_DATA_LAKE) - a Kaggle-format playlist CSV or a "
            "listening-session file (user_id, song_id, played_at; Parquet or CSV) with a `<file>.done` marker "
            "beside it - and taken by landing_sensor.",
        ),
        dg.AssetSpec(
            LANDED_KEYS["landed_rejects"],
            group_name=LANDING_GROUP,
            kinds={"duckdb"},
            description="Rejected lines of landed batches with line numbers and reasons.",
        ),
    ],
    check_specs=_reject_check_specs(LANDED_KEYS["landed_entries"]),
    partitions_def=landing_batches,
    pool=DUCKDB_POOL,
    code_version=source_version(kaggle_lib),
    name="landed_batch",
)
def landed_batch(context: dg.AssetExecutionContext, config: LandedBatchConfig, lake: DataLake, warehouse: Warehouse):
    """Ingest one landed Kaggle-format file (its batch replaces any earlier rows of the same
    batch), then archive it to ``landing/archive/<batch>/``. A header-only file is a recorded
    skip (no rows).

    Stage, check, then swap: the blocking gates run inside the ingestion's transaction, and a
    failed gate rolls it back (the batch's rows never reach ``kaggle_raw.landed_*``) and leaves
    the file in ``landing/``. So does a file that changed while it was read, or that a process
    still holds open for writing."""
    batch = context.partition_key
    try:  # never a file outside landing/: no '..', no symbolic link
        source = kaggle_lib.confined_landing_file(lake.landing_dir, config.path)
    except kaggle_lib.LandingPathError as error:
        raise dg.Failure(f"landed_batch [{batch}]: {error}") from error
    archived = archive_path(lake, batch, source.name)
    if not source.exists() and archived.exists():
        source = archived  # a re-execution after the file was archived
    if not source.exists():
        raise dg.Failure(f"landed file {config.path} is gone (and not in {archived.parent})")
    if source != archived:  # before anything is written: a folder the file cannot be archived to
        _archive_folder(archived.parent, lake.landing_dir)
    before = _signature(source)
    digest = file_sha256(source)
    if digest != config.sha256:
        raise dg.Failure(
            f"landed file {source} changed since the sensor took it (sha256 {digest[:12]} != {config.sha256[:12]})"
        )
    gate = None
    with warehouse.connect() as con:
        kaggle_lib.limit_memory(con, config.memory_limit, lake.path / "duckdb_tmp")
        try:
            with _ingest_transaction(con):
                if config.kind == "kaggle":
                    stats = kaggle_lib.ingest_playlist_csv(
                        con,
                        source,
                        batch,
                        "kaggle_raw.landed_entries",
                        "kaggle_raw.landed_rejects",
                        work_dir=lake.path / "duckdb_tmp",
                    )
                else:
                    stats = _ingest_sessions(con, source, batch, lake)
                sample = _sample_rejects(con, '"kaggle_raw"."landed_rejects"', batch)
                _check_unchanged(source, before)
                _check_gates(stats, config.max_reject_rate, sample)
        except GateFailed as failed:
            gate = failed
    if gate:
        yield from _gate_failure(
            gate,
            config.max_reject_rate,
            LANDED_KEYS["landed_entries"],
            f"no row of batch {batch} was committed and {source} stays in landing/ (a recorded failure)",
        )
    if source != archived:
        archived.parent.mkdir(exist_ok=True)
        os.replace(source, archived)
        marker = source.with_name(source.name + ".done")
        if marker.exists():
            os.replace(marker, archived.with_name(marker.name))
    skipped = "header only: no data rows (recorded skip)" if stats.data_lines == 0 else ""
    if skipped:
        context.log.warning(f"{source.name}: {skipped}")
    yield from _ingest_results(
        stats,
        sample,
        LANDED_KEYS["landed_entries"],
        LANDED_KEYS["landed_rejects"],
        archived_to=dg.MetadataValue.path(str(archived)),
        skipped=skipped or "no",
    )
    yield from _reject_checks(stats, config.max_reject_rate, LANDED_KEYS["landed_entries"])


def _archive_folder(folder: Path, landing: Path) -> None:
    """Check, before anything is ingested, that the batch's archive folder can be made: create
    ``landing/archive`` or fail naming what is in the way (a regular file named ``archive``)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as error:
        blocker = next((p for p in (landing / "archive", folder) if p.exists() and not p.is_dir()), folder)
        raise dg.Failure(
            f"cannot archive landed files to {folder}: {blocker} is not a folder ({error.strerror}); "
            "nothing was ingested, the file stays in landing/"
        ) from error


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _check_unchanged(source: Path, before: tuple[int, int]) -> None:
    """Inside the transaction, after reading: the file must be as it was when its hash was taken,
    and no process may hold it open for writing (a writer that paused)."""
    after = _signature(source)
    if after != before:
        raise KaggleFormatError(
            f"landed file {source} changed while it was being ingested (size {before[0]} -> {after[0]} bytes, "
            "modified again): still being written; nothing was committed, the file stays in landing/"
        )
    writers = kaggle_lib.open_for_writing([source])[0].get(source)
    if writers:
        raise KaggleFormatError(
            f"landed file {source} is still open for writing by process(es) {writers}; "
            "nothing was committed, the file stays in landing/"
        )


def _ingest_sessions(con, source: Path, batch: str, lake: DataLake) -> kaggle_lib.IngestStats:
    """Landed plays -> playlist entries of the batch; unusable plays -> landed_rejects."""
    with tempfile.TemporaryDirectory(dir=lake.path, prefix=".sessions-") as folder:
        counts = kaggle_lib.sessions_to_kaggle(con, source, Path(folder) / "entries.csv")
        derived = kaggle_lib.ingest_playlist_csv(
            con, Path(folder) / "entries.csv", batch, "kaggle_raw.landed_entries", "kaggle_raw.landed_rejects"
        )
    if derived.rejected:  # derived rows come from warehouse names: a reject here is a bug upstream
        raise dg.Failure(f"{source}: {derived.rejected} derived playlist rows were rejected ({derived.reasons})")
    con.execute("UPDATE kaggle_raw.landed_entries SET source_file = ? WHERE batch = ?", [str(source), batch])
    con.execute(
        "INSERT INTO kaggle_raw.landed_rejects SELECT ?, ?, line, reason, raw_line FROM session_rejects ORDER BY line",
        [batch, str(source)],
    )
    reasons = dict(con.sql("SELECT reason, count(*) FROM session_rejects GROUP BY reason ORDER BY reason").fetchall())
    return kaggle_lib.IngestStats(
        source_file=str(source),
        batch=batch,
        bytes=source.stat().st_size,
        lines=counts["plays"] + 1,
        accepted=counts["used"],
        rejected=counts["rejected"],
        reasons={str(k): int(v) for k, v in reasons.items()},
    )


defs = dg.Definitions(assets=[kaggle_source_files, kaggle_ingest, landed_batch])
