"""Playlist completion on the Kaggle "Spotify Playlists" format: ingestion into DuckDB (with a
rejects table and a blocking reject-rate gate), the ``playlists`` SQL models, the playlist
``HeteroData``, the position-based split with its leakage gate, models partitioned by config
(``configs/playlist_models.yaml``), RecSys 2018 metric reports and their comparison.

With no Kaggle files in ``<data lake>/kaggle/`` the chain runs on Kaggle-format files derived
from the synthetic world. Landed batches (see :mod:`.sensors`) are a dynamic partition of the
``kaggle_raw/landed_*`` assets and flow through the same SQL models.
"""


import contextlib
import hashlib
import os
from pathlib import Path

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ..lib import kaggle as kaggle_lib
from ..lib import playlist_models as models_lib
from ..lib import playlists as playlists_lib
from ..lib import recsys_metrics as recsys_lib
from ..lib.artifacts import atomic_write_bytes
from ..lib.kaggle import KAGGLE_SOURCES, KaggleFormatError
from ..lib.paths import source_version
from ..lib.playlist_models import PlaylistConfigError, default_playlist_registry
from ..lib.playlists import CONTAINS, PlaylistGraphError
from ..lib.plots import frame_markdown
from .resources import DUCKDB_POOL, DataLake, LakeIOManager, TorchRuntime, Warehouse

INGESTION_GROUP, SQL_GROUP, GRAPH_GROUP, TRAINING_GROUP = "playlist_ingestion", "playlist_sql", "playlist_graph", "playlist_training"
LANDING_GROUP = "playlist_landing"
SOURCE_FILES_KEY = dg.AssetKey(["kaggle", "source_files"])
BASE_KEYS = {name: dg.AssetKey(["kaggle_raw", name]) for name in ("entries", "rejects", "artist_genres", "track_features")}
LANDED_KEYS = {name: dg.AssetKey(["kaggle_raw", name]) for name in ("landed_entries", "landed_rejects")}
SYNTHETIC_RAW_DEPS = [dg.AssetKey(["raw", t]) for t in ("plays", "songs", "artists", "genres", "song_genres", "artist_genres")]
landing_batches = dg.DynamicPartitionsDefinition(name="landing_batches")
playlist_configs = dg.StaticPartitionsDefinition(sorted(default_playlist_registry().configs))
REPORT_METRICS = ("r_precision", "r_precision_track", "ndcg@10", "ndcg@500", "recall@10", "recall@50", "recall@500", "clicks")


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
    """One warehouse transaction for an ingestion: committed when the block ends, rolled back on
    any error (nothing half-loaded), a malformed file reported as a Failure naming it."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except KaggleFormatError as error:
        con.execute("ROLLBACK")
        raise _ingest_failure(error) from error
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _ingest_failure(error: Exception) -> dg.Failure:
    return dg.Failure(description=str(error))


# --- ingestion --------------------------------------------------------------------------------


@dg.asset(
    key=SOURCE_FILES_KEY,
    deps=SYNTHETIC_RAW_DEPS,
    group_name=INGESTION_GROUP,
    kinds={"csv"},
    pool=DUCKDB_POOL,
    code_version=source_version(kaggle_lib),
)
def kaggle_source_files(context: dg.AssetExecutionContext, lake: DataLake, warehouse: Warehouse) -> dg.MaterializeResult:
    """The Kaggle-format files of the playlist chain. ``<data lake>/kaggle/spotify_dataset.csv``
    (and optional ``data_w_genres.csv``, ``tracks_features.csv``) when present; otherwise
    Kaggle-format CSVs written from the synthetic world (one playlist per user and genre)."""
    real = kaggle_dir(lake) / "spotify_dataset.csv"
    if real.exists():
        sources = resolve_sources(lake)
        origin = "data lake (real Kaggle files)"
    else:
        with warehouse.connect(read_only=True) as con:
            try:
                rows = kaggle_lib.write_synthetic_kaggle_files(con, kaggle_dir(lake) / "generated")
            except Exception as error:  # noqa: BLE001 - named with the cause
                raise dg.Failure(f"cannot derive Kaggle files from the synthetic world ({error}); materialize synthetic_world first") from error
        context.log.info(f"wrote Kaggle-format files from the synthetic world: {rows}")
        sources = resolve_sources(lake)
        origin = "generated from the synthetic world"
    return dg.MaterializeResult(
        metadata={
            "origin": origin,
            **{name: dg.MetadataValue.path(str(path)) if path else "absent" for name, path in sources.items()},
            "bytes": sum(path.stat().st_size for path in sources.values() if path),
        }
    )


class KaggleIngestConfig(dg.Config):
    max_reject_rate: float = Field(default=0.05, description="Blocking gate: rejected / data lines above this fails the run.")
    memory_limit: str = Field(default="1GB", description="DuckDB memory cap while ingesting (larger intermediates spill to disk).")


def _stats_metadata(stats: kaggle_lib.IngestStats) -> dict:
    return {
        "source_file": dg.MetadataValue.path(stats.source_file),
        "bytes": stats.bytes,
        "data_lines": stats.data_lines,
        "accepted_rows": stats.accepted,
        "rejected_rows": stats.rejected,
        "unaccounted_lines": stats.unaccounted,
        "reject_rate": stats.reject_rate,
        "reject_reasons": dg.MetadataValue.json(stats.reasons),
    }


def _reject_checks(stats: kaggle_lib.IngestStats, max_rate: float, asset_key: dg.AssetKey) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name="reject_rate_within_threshold",
            passed=stats.reject_rate <= max_rate,
            metadata={"reject_rate": stats.reject_rate, "threshold": max_rate, "rejected_rows": stats.rejected, "data_lines": stats.data_lines},
        ),
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name="every_line_accounted",
            passed=stats.unaccounted == 0,
            metadata={"data_lines": stats.data_lines, "accepted": stats.accepted, "rejected": stats.rejected, "unaccounted": stats.unaccounted},
        ),
    ]


def _reject_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "reject_rate_within_threshold", asset=asset_key, blocking=True,
            description="Rejected lines / data lines stay at or below the configured max_reject_rate.",
        ),
        dg.AssetCheckSpec(
            "every_line_accounted", asset=asset_key, blocking=True,
            description="An independent newline count equals accepted + rejected rows + the header.",
        ),
    ]


def _sample_rejects(con, table: str, batch: str) -> str:
    frame = con.sql(f'SELECT line, reason, raw_line FROM {table} WHERE batch = ? ORDER BY line LIMIT 10', params=[batch]).pl()
    return frame_markdown(frame) if frame.height else "no rejected lines"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(BASE_KEYS["entries"], deps=[SOURCE_FILES_KEY], group_name=INGESTION_GROUP, kinds={"duckdb"},
                     description="Accepted rows of the Kaggle playlists file (batch 'base'), with their line numbers."),
        dg.AssetSpec(BASE_KEYS["rejects"], deps=[SOURCE_FILES_KEY], group_name=INGESTION_GROUP, kinds={"duckdb"},
                     description="Every rejected line of the Kaggle playlists file with its line number and reason."),
        dg.AssetSpec(BASE_KEYS["artist_genres"], deps=[SOURCE_FILES_KEY], group_name=INGESTION_GROUP, kinds={"duckdb"},
                     description="Optional enrichment: (artist name, genre) from a data_w_genres.csv-format file; empty when absent."),
        dg.AssetSpec(BASE_KEYS["track_features"], deps=[SOURCE_FILES_KEY], group_name=INGESTION_GROUP, kinds={"duckdb"},
                     description="Optional enrichment: audio features from a tracks_features.csv-format file; empty when absent."),
    ],
    check_specs=_reject_check_specs(BASE_KEYS["entries"]),
    pool=DUCKDB_POOL,
    code_version=source_version(kaggle_lib),
    name="kaggle_ingest",
)
def kaggle_ingest(context: dg.AssetExecutionContext, config: KaggleIngestConfig, lake: DataLake, warehouse: Warehouse):
    """Stream the Kaggle playlists file into DuckDB with DuckDB's CSV reader (one transaction)."""
    sources = resolve_sources(lake)
    with warehouse.connect() as con:
        con.execute("SET preserve_insertion_order = true")
        kaggle_lib.limit_memory(con, config.memory_limit, lake.path / "duckdb_tmp")
        with _ingest_transaction(con):
            stats = kaggle_lib.ingest_playlist_csv(con, sources["playlists"], "base", "kaggle_raw.entries", "kaggle_raw.rejects")
            if stats.data_lines == 0:  # inside the transaction: the previous tables stay
                raise KaggleFormatError(f"{stats.source_file}: header only, no data rows; the previous kaggle_raw tables are kept")
            kaggle_lib.create_tables(con, "kaggle_raw.landed_entries", "kaggle_raw.landed_rejects")
            kaggle_lib.create_empty_enrichments(con, "kaggle_raw.artist_genres", "kaggle_raw.track_features")
            genre_rows = kaggle_lib.load_artist_genres(con, sources["data_w_genres"]) if sources["data_w_genres"] else 0
            feature_rows = kaggle_lib.load_track_features(con, sources["tracks_features"]) if sources["tracks_features"] else 0
            sample = _sample_rejects(con, '"kaggle_raw"."rejects"', "base")
    context.log.info(f"ingested {stats.accepted} rows, rejected {stats.rejected} ({stats.reasons})")
    yield dg.MaterializeResult(asset_key=BASE_KEYS["entries"], metadata={"dagster/row_count": stats.accepted, **_stats_metadata(stats)})
    yield dg.MaterializeResult(
        asset_key=BASE_KEYS["rejects"],
        metadata={"dagster/row_count": stats.rejected, "reject_reasons": dg.MetadataValue.json(stats.reasons), "first_rejects": dg.MetadataValue.md(sample)},
    )
    yield dg.MaterializeResult(asset_key=BASE_KEYS["artist_genres"], metadata={"dagster/row_count": genre_rows, "source": str(sources["data_w_genres"] or "absent")})
    yield dg.MaterializeResult(asset_key=BASE_KEYS["track_features"], metadata={"dagster/row_count": feature_rows, "source": str(sources["tracks_features"] or "absent")})
    yield from _reject_checks(stats, config.max_reject_rate, BASE_KEYS["entries"])


# --- landed batches ---------------------------------------------------------------------------


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def archive_path(lake: DataLake, batch: str, name: str) -> Path:
    return lake.landing_dir / "archive" / batch / name


class LandedBatchConfig(dg.Config):
    path: str = Field(description="The landed file (set by the landing sensor).")
    sha256: str = Field(description="Its content hash when the sensor took it.")
    kind: str = Field(default="kaggle", description="'kaggle' (Kaggle-format CSV) or 'sessions' (synthetic plays, Parquet or CSV).")
    max_reject_rate: float = Field(default=0.05, description="Blocking gate on the batch's reject rate.")
    memory_limit: str = Field(default="1GB", description="DuckDB memory cap while ingesting.")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(LANDED_KEYS["landed_entries"], group_name=LANDING_GROUP, kinds={"duckdb"},
                     description="Accepted rows of landed Kaggle-format batches (one dynamic partition per batch)."),
        dg.AssetSpec(LANDED_KEYS["landed_rejects"], group_name=LANDING_GROUP, kinds={"duckdb"},
                     description="Rejected lines of landed batches with line numbers and reasons."),
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
    skip (no rows)."""
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
    digest = file_sha256(source)
    if digest != config.sha256:
        raise dg.Failure(f"landed file {source} changed since the sensor took it (sha256 {digest[:12]} != {config.sha256[:12]})")
    if config.kind not in ("kaggle", "sessions"):
        raise dg.Failure(f"landed_batch: unknown kind {config.kind!r} (expected 'kaggle' or 'sessions')")
    with warehouse.connect() as con:
        kaggle_lib.limit_memory(con, config.memory_limit, lake.path / "duckdb_tmp")
        with _ingest_transaction(con):
            if config.kind == "kaggle":
                stats = kaggle_lib.ingest_playlist_csv(con, source, batch, "kaggle_raw.landed_entries", "kaggle_raw.landed_rejects")
            else:
                stats = _ingest_sessions(con, source, batch, lake)
            sample = _sample_rejects(con, '"kaggle_raw"."landed_rejects"', batch)
    if source != archived:
        archived.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, archived)
        marker = source.with_name(source.name + ".done")
        if marker.exists():
            os.replace(marker, archived.with_name(marker.name))
    skipped = "header only: no data rows (recorded skip)" if stats.data_lines == 0 else ""
    if skipped:
        context.log.warning(f"{source.name}: {skipped}")
    yield dg.MaterializeResult(
        asset_key=LANDED_KEYS["landed_entries"],
        metadata={"dagster/row_count": stats.accepted, **_stats_metadata(stats), "archived_to": dg.MetadataValue.path(str(archived)), "skipped": skipped or "no"},
    )
    yield dg.MaterializeResult(
        asset_key=LANDED_KEYS["landed_rejects"],
        metadata={"dagster/row_count": stats.rejected, "reject_reasons": dg.MetadataValue.json(stats.reasons), "first_rejects": dg.MetadataValue.md(sample)},
    )
    yield from _reject_checks(stats, config.max_reject_rate, LANDED_KEYS["landed_entries"])


def _ingest_sessions(con, source: Path, batch: str, lake: DataLake) -> kaggle_lib.IngestStats:
    """Landed plays -> playlist entries of the batch; unusable plays -> landed_rejects."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=lake.path, prefix=".sessions-") as folder:
        counts = kaggle_lib.sessions_to_kaggle(con, source, Path(folder) / "entries.csv")
        derived = kaggle_lib.ingest_playlist_csv(con, Path(folder) / "entries.csv", batch, "kaggle_raw.landed_entries", "kaggle_raw.landed_rejects")
    if derived.rejected:  # derived rows come from warehouse names: a reject here is a bug upstream
        raise dg.Failure(f"{source}: {derived.rejected} derived playlist rows were rejected ({derived.reasons})")
    con.execute(
        "UPDATE kaggle_raw.landed_entries SET source_file = ? WHERE batch = ?", [str(source), batch]
    )
    con.execute(
        "INSERT INTO kaggle_raw.landed_rejects SELECT ?, ?, line, reason, raw_line FROM session_rejects ORDER BY line",
        [batch, str(source)],
    )
    reasons = dict(con.sql("SELECT reason, count(*) FROM session_rejects GROUP BY reason ORDER BY reason").fetchall())
    return kaggle_lib.IngestStats(
        source_file=str(source), batch=batch, bytes=source.stat().st_size, lines=counts["plays"] + 1,
        accepted=counts["used"], rejected=counts["rejected"], reasons={str(k): int(v) for k, v in reasons.items()},
    )


# --- graph and split --------------------------------------------------------------------------


class PlaylistGraphConfig(dg.Config):
    min_playlist_size: int = Field(default=5, description="Playlists with fewer tracks are dropped (also inside the k-core).")
    min_track_playlists: int = Field(default=2, description="k-core: every kept track is in at least this many kept playlists.")


@dg.asset(
    key="playlist_graph",
    deps=[dg.AssetKey(["playlists", t]) for t in ("playlist_tracks", "tracks", "artist_genres")],
    group_name=GRAPH_GROUP,
    kinds={"pytorch", "pyg"},
    pool=DUCKDB_POOL,
    code_version=source_version(playlists_lib),
)
def playlist_graph(context: dg.AssetExecutionContext, config: PlaylistGraphConfig, warehouse: Warehouse) -> dg.Output[dict]:
    """PyG ``HeteroData`` with playlist, track, artist and genre nodes (``node_id`` keeps each
    warehouse key): playlist-contains->track (with position), track-by->artist,
    artist-has->genre and reverse edges, after the minimum-size and k-core filters."""
    settings = playlists_lib.GraphSettings(config.min_playlist_size, config.min_track_playlists)
    try:
        data, rounds = playlists_lib.build_playlist_graph(
            warehouse.read_table("playlists.playlist_tracks"),
            warehouse.read_table("playlists.tracks"),
            warehouse.read_table("playlists.artist_genres"),
            settings,
        )
    except PlaylistGraphError as error:
        raise dg.Failure(f"cannot build the playlist graph: {error}") from error
    return dg.Output(
        playlists_lib.to_payload(data),
        metadata={**playlists_lib.graph_summary(data), "kcore_rounds": dg.MetadataValue.md(frame_markdown(pl.DataFrame(rounds)))},
    )


class PlaylistSplitConfig(dg.Config):
    holdout: int = Field(default=2, description="N: the last N tracks by position are test, the N before them validation.")
    min_train_tracks: int = Field(default=3, description="Playlists shorter than 2N + this stay train-only.")


@dg.asset(
    key="playlist_splits",
    group_name=GRAPH_GROUP,
    kinds={"pytorch"},
    code_version=source_version(playlists_lib),
)
def playlist_splits(context: dg.AssetExecutionContext, config: PlaylistSplitConfig, playlist_graph: dict) -> dg.Output[dict]:
    """Train / validation / test indices into the contains edges: per playlist the last N
    tracks (by position) are test, the N before them validation; short playlists train-only."""
    settings = playlists_lib.SplitSettings(config.holdout, config.min_train_tracks)
    data = playlists_lib.from_payload(playlist_graph)
    try:
        labels = playlists_lib.split_labels(data[CONTAINS].edge_index, data[CONTAINS].position, data["playlist"].num_nodes, settings)
    except PlaylistGraphError as error:
        raise dg.Failure(f"invalid playlist_splits config: {error}") from error
    split = playlists_lib.labels_to_indices(labels)
    if split["test"].numel() == 0:
        raise dg.Failure(
            f"no playlist has the {2 * settings.holdout + settings.min_train_tracks} tracks needed for a held-out part "
            f"(holdout={settings.holdout}, min_train_tracks={settings.min_train_tracks}): nothing to evaluate"
        )
    evaluated = int(torch.unique(data[CONTAINS].edge_index[0, split["test"]]).numel())
    return dg.Output(
        {"settings": playlists_lib.settings_dict(settings), **split},
        metadata={**{part: int(index.numel()) for part, index in split.items()}, "playlists_with_heldout": evaluated},
    )


@dg.asset_check(
    asset=playlist_splits,
    additional_ins={"playlist_graph": dg.AssetIn("playlist_graph")},
    blocking=True,
    description="Parts are disjoint and cover every edge; held-out tracks come after every training track of their playlist.",
)
def playlist_splits_partition_edges(playlist_splits: dict, playlist_graph: dict) -> dg.AssetCheckResult:
    data = playlists_lib.from_payload(playlist_graph)
    violations = playlists_lib.partition_violations(playlist_splits, data[CONTAINS].edge_index.size(1))
    violations["heldout_before_train"] = playlists_lib.heldout_position_violations(data, playlist_splits)
    return dg.AssetCheckResult(passed=sum(violations.values()) == 0, metadata={"violations": dg.MetadataValue.json(violations)})


@dg.asset_check(
    asset=playlist_splits,
    additional_ins={"playlist_graph": dg.AssetIn("playlist_graph")},
    blocking=True,
    description="The graph and per-playlist aggregates models see hold no validation or test track of any playlist.",
)
def no_heldout_tracks_visible(playlist_splits: dict, playlist_graph: dict) -> dg.AssetCheckResult:
    report = playlists_lib.leakage_report(playlists_lib.from_payload(playlist_graph), playlist_splits)
    return dg.AssetCheckResult(passed=sum(report.values()) == 0, metadata={"leaks": dg.MetadataValue.json(report)})


# --- models -----------------------------------------------------------------------------------


class PlaylistTrainConfig(dg.Config):
    mode: str | None = Field(default=None, description="Training mode preset (mini/quick/balanced/full); None: the config's.")
    max_epochs: int | None = Field(default=None, description="Cap on epochs for this run (None: the mode's).")


def _config_for(partition: str) -> models_lib.PlaylistModelConfig:
    registry = default_playlist_registry()
    if partition not in registry.configs:
        raise dg.Failure(f"unknown playlist config {partition!r}; known: {sorted(registry.configs)}")
    return registry.configs[partition]


def _parts(data, split: dict) -> dict[str, torch.Tensor]:
    edge_index = data[CONTAINS].edge_index
    return {part: edge_index[:, split[part]] for part in ("train", "valid", "test")}


@dg.asset(
    key="playlist_model",
    partitions_def=playlist_configs,
    group_name=TRAINING_GROUP,
    kinds={"pytorch", "pyg"},
    code_version=source_version(models_lib),
)
def playlist_model(
    context: dg.AssetExecutionContext,
    config: PlaylistTrainConfig,
    torch_runtime: TorchRuntime,
    playlist_graph: dict,
    playlist_splits: dict,
) -> dg.Output[dict]:
    """A playlist-completion model of one config: baselines are fitted on the training edges;
    PlaylistGAT and LightGCN train with BPR on the mode's playlist sample, early-stopped on
    validation R-precision, best weights kept."""
    model_config = _config_for(context.partition_key)
    registry = default_playlist_registry()
    mode_name = config.mode or model_config.mode
    if mode_name not in registry.modes:
        raise dg.Failure(f"unknown training mode {mode_name!r}; known: {sorted(registry.modes)}")
    mode = registry.modes[mode_name]
    epochs = config.max_epochs or mode.epochs
    if epochs < 1:
        raise dg.Failure(f"max_epochs must be >= 1, got {epochs}")
    torch_runtime.apply()
    data = playlists_lib.from_payload(playlist_graph)
    view = playlists_lib.message_passing_view(data, playlist_splits["train"])
    sample = models_lib.sample_playlists(data["playlist"].num_nodes, mode.playlists, model_config.seed)
    artifact = {
        "config": model_config.model_dump(),
        "mode": {"name": mode_name, **mode.model_dump(), "epochs": epochs},
        "playlists": sample,
        "num_nodes": {t: int(data[t].num_nodes) for t in data.node_types},
        "state": None,
        "history": [],
        "epochs_run": 0,
        "train_seconds": 0.0,
        "num_parameters": 0,
    }
    metadata = {"config": dg.MetadataValue.json(model_config.model_dump()), "mode": mode_name, "sampled_playlists": int(sample.numel())}
    if model_config.trainable:
        model = models_lib.build_trainable(model_config, artifact["num_nodes"])
        try:
            result = models_lib.train_bpr(model, view, _parts(data, playlist_splits)["valid"], model_config, epochs, sample, log=context.log.info)
        except ValueError as error:
            raise dg.Failure(f"playlist config {model_config.name}: {error}") from error
        artifact.update(
            state=result["best_state"], final_state=result["final_state"], history=result["history"],
            epochs_run=result["epochs_run"], best_epoch=result["best_epoch"], train_seconds=result["train_seconds"],
            num_parameters=models_lib.parameter_count(model),
        )
        metadata.update(
            epochs_run=result["epochs_run"], best_epoch=result["best_epoch"], num_parameters=artifact["num_parameters"],
            best_valid_r_precision=result["best_valid_r_precision"], train_seconds=round(result["train_seconds"], 2),
        )
        if model_config.itemknn_fusion:
            fusion = result["fusion_valid_r_precision"]
            artifact["fusion_valid_r_precision"] = fusion
            metadata.update(
                itemknn_fusion_weight=float(result["best_state"]["fusion_weight"]),
                fusion_valid_r_precision=dg.MetadataValue.json({str(k): v for k, v in fusion.items()}),
            )
    return dg.Output(artifact, metadata=metadata)


def evaluate_config(artifact: dict, data, split: dict, playlists: torch.Tensor | None = None) -> dict[str, float]:
    """Test metrics of a fitted config: known = training and validation tracks of each playlist."""
    model_config = models_lib.PlaylistModelConfig(**artifact["config"])
    view = playlists_lib.message_passing_view(data, split["train"])
    parts = _parts(data, split)
    try:
        scorer = models_lib.scorer_for(model_config, view, artifact.get("state"))
    except (PlaylistConfigError, RuntimeError) as error:
        raise dg.Failure(f"cannot rebuild playlist model {model_config.name}: {error}") from error
    known = torch.cat([parts["train"], parts["valid"]], dim=1)
    return models_lib.evaluate(
        scorer, parts["test"], known, data["track"].num_nodes, playlists, track_artist=models_lib.track_artists(data)
    )


@dg.asset(
    key="playlist_report",
    partitions_def=playlist_configs,
    group_name=TRAINING_GROUP,
    kinds={"pytorch"},
    code_version=source_version(models_lib, recsys_lib),
)
def playlist_report(
    context: dg.AssetExecutionContext, torch_runtime: TorchRuntime, playlist_model: dict, playlist_graph: dict, playlist_splits: dict
) -> dg.Output[dict]:
    """Test metrics of the RecSys Challenge 2018 over the mode's sampled playlists with held-out
    tracks, beside most-popular: ``r_precision`` (the challenge's, with 0.25 credit per distinct
    held-out artist matched only through another track of that artist), ``r_precision_track``
    (exact track matches only), NDCG@10/500, Recall@10/50/500 and clicks."""
    torch_runtime.apply()
    data = playlists_lib.from_payload(playlist_graph)
    if playlist_model["num_nodes"] != {t: int(data[t].num_nodes) for t in data.node_types}:
        raise dg.Failure("playlist_model was trained on another playlist graph: rematerialize it first")
    sample = playlist_model["playlists"]
    metrics = evaluate_config(playlist_model, data, playlist_splits, sample)
    reference_artifact = {**playlist_model, "config": {**playlist_model["config"], "model": "most_popular"}}
    reference = evaluate_config(reference_artifact, data, playlist_splits, sample)
    report = {
        "config": playlist_model["config"]["name"],
        "model": playlist_model["config"]["model"],
        "mode": playlist_model["mode"]["name"],
        "metrics": metrics,
        "most_popular": reference,
        "epochs_run": playlist_model["epochs_run"],
        "train_seconds": playlist_model["train_seconds"],
        "num_parameters": playlist_model["num_parameters"],
    }
    table = pl.DataFrame({"metric": list(REPORT_METRICS), report["config"]: [metrics[m] for m in REPORT_METRICS], "most_popular": [reference[m] for m in REPORT_METRICS]})
    return dg.Output(
        report,
        metadata={**{m: metrics[m] for m in REPORT_METRICS}, "playlists_evaluated": metrics["playlists_evaluated"], "report": dg.MetadataValue.md(frame_markdown(table))},
    )


def playlist_comparison_frame(reports: dict[str, dict]) -> pl.DataFrame:
    rows = []
    for name in sorted(reports):
        report = reports[name]
        row = {"config": name, "model": report["model"], "mode": report["mode"]}
        row.update({m: report["metrics"][m] for m in REPORT_METRICS})
        row.update(playlists=int(report["metrics"]["playlists_evaluated"]), train_seconds=float(report["train_seconds"]), epochs=int(report["epochs_run"]))
        rows.append(row)
    return pl.DataFrame(rows)


@dg.asset(
    key="playlist_comparison",
    deps=["playlist_report"],
    group_name=TRAINING_GROUP,
    kinds={"polars"},
    code_version="1",
)
def playlist_comparison(context: dg.AssetExecutionContext, lake: DataLake) -> dg.Output[pl.DataFrame]:
    """Every materialized playlist report in one table (also
    ``data_lake/reports/playlist_comparison.{md,csv}``). Reads the current artifact of each
    config, so it can run inside a config-partitioned run (the landing sensor's model runs)."""
    from ..lib.artifacts import ArtifactNotFoundError, load_torch

    reports = {}
    for name in playlist_configs.get_partition_keys():
        try:
            reports[name] = load_torch(lake.artifacts.current(["playlist_report"], name) / "data.pt")
        except ArtifactNotFoundError:
            context.log.info(f"playlist_report {name} not materialized yet; left out")
    if not reports:
        raise dg.Failure("no playlist_report partition is materialized yet")
    frame = playlist_comparison_frame(reports)
    markdown = frame_markdown(frame)
    lake.reports_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(lake.reports_dir / "playlist_comparison.md", (markdown + "\n").encode())
    atomic_write_bytes(lake.reports_dir / "playlist_comparison.csv", frame.write_csv().encode())
    return dg.Output(frame, metadata={"configs": frame.height, "comparison": dg.MetadataValue.md(markdown)})


DATA_ASSETS = [kaggle_source_files, kaggle_ingest, landed_batch, playlist_graph, playlist_splits]
defs = dg.Definitions(
    assets=[*DATA_ASSETS, playlist_model, playlist_report, playlist_comparison],
    asset_checks=[playlist_splits_partition_edges, no_heldout_tracks_visible],
)
