"""Retraining when new data lands: a sensor on ``landing/`` in the data lake folder (``$SPOTIFY_ENGINE_DATA_LAKE``).

Each tick the sensor lists the landing folder (``archive/`` and hidden files excluded) and takes
a file only once it is complete: a ``<name>.done`` marker beside it, or the same size and
modification time as on the previous tick (kept in the cursor) *and* confirmed closed: no process
holds it open for writing, and every process's open files could be read (``/proc``); when that
cannot be confirmed (another user's processes, no ``/proc``) the file waits for its marker.
``SPOTIFY_ENGINE_LANDING_COMPLETE=marker`` requires the marker always (writers on other machines
through a shared folder are invisible here). A complete file is hashed
(SHA-256, streamed); the hash is the run key, so the same content never trains twice, and the
batch id (``<stem>-<hash[:12]>``) becomes a dynamic partition of ``landing_batches``. The first
run re-materializes the landed batch and the whole downstream data chain (SQL models, graph,
split and their checks); ``landed_batch`` archives the file to ``landing/archive/<batch>/``.
Kaggle-format CSVs and listening-session files (the synthetic ``plays`` schema: ``user_id``,
``song_id``, ``played_at``; Parquet or CSV) are both taken; sessions become playlist entries
the way the synthetic default builds playlists (one per user and genre, in order of first play).
Until that run ends, the file stays "taken" (in the cursor): later ticks leave it alone even
though it is still in ``landing/`` (the run may be queued); if the run fails the file is kept
there as a recorded skip, for a re-execution of the run. When that run has succeeded, a later
tick requests one run per playlist model config (model, report, comparison), unless the batch
added no rows (a header-only file: nothing to retrain on). A failed batch's content can be taken
again (the file changed or touched, or landed anew: a new run key). Files that cannot
be taken - empty, unknown format, duplicate content - are recorded skips: logged, kept in the
cursor, and (duplicates) moved to ``landing/archive/duplicates/``; nothing is deleted. While
``landing/archive`` is not a folder, no file is taken (the skip reason names it).

The daemon evaluates the sensor every 30 s (``SPOTIFY_ENGINE_LANDING_INTERVAL_S`` overrides it
when the definitions load). Both jobs execute in one process per run.
"""

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...core.storage.paths import DATA_LAKE_ENV, data_lake_root
from ...datasets.playlists import DATASET
from ...datasets.playlists.kaggle import (
    KAGGLE_COLUMNS,
    SESSION_COLUMNS,
    KaggleFormatError,
    check_header,
    open_for_writing,
    session_columns,
)
from ..resources import DataLake
from .ingestion import LANDED_KEYS, file_sha256, landing_batches

LANDING_TAG = "spotify_engine/landing_batch"
INTERVAL_ENV = "SPOTIFY_ENGINE_LANDING_INTERVAL_S"
DEFAULT_INTERVAL_S = 30


COMPLETE_ENV = "SPOTIFY_ENGINE_LANDING_COMPLETE"


def completion_rule() -> str:
    """``closed`` (default): a ``.done`` marker, or a stable size and no process writing the file;
    ``marker``: the ``.done`` marker only."""
    value = os.environ.get(COMPLETE_ENV, "") or "closed"
    if value not in ("closed", "marker"):
        raise ValueError(f"{COMPLETE_ENV}={value!r}: expected 'closed' (marker, or stable and closed) or 'marker'")
    return value


def sensor_interval() -> int:
    """Seconds between two evaluations of the sensor by the daemon (tests and demos shorten it)."""
    value = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(1, int(value)) if value else DEFAULT_INTERVAL_S
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={value!r}: expected a whole number of seconds") from None


RETRAIN_ENV = {
    "configs": "SPOTIFY_ENGINE_RETRAIN_CONFIGS",
    "max_epochs": "SPOTIFY_ENGINE_RETRAIN_MAX_EPOCHS",
    "user_sample": "SPOTIFY_ENGINE_RETRAIN_USER_SAMPLE",
}


class RetrainSettings(BaseModel):
    """What the sensor retrains once a landed batch is in: which configs, and the run config of their
    ``playlists/trained_model`` (``TrainRunConfig``). Unset, each config trains as its registry entry
    says (its own ``user_sample`` and ``max_epochs``). Read from the environment when the definitions
    load (:meth:`from_env`); shown in the sensor's description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    configs: tuple[str, ...] = Field(default=(), description="Configs to retrain (empty: every playlists config).")
    max_epochs: int | None = Field(default=None, ge=1, description="Epoch cap of each retraining (None: the config's).")
    user_sample: int | None = Field(
        default=None, ge=1, description="Playlists sampled per retraining (None: the config's)."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "RetrainSettings":
        """``$SPOTIFY_ENGINE_RETRAIN_CONFIGS`` (comma-separated names, or ``all``),
        ``$SPOTIFY_ENGINE_RETRAIN_MAX_EPOCHS`` and ``$SPOTIFY_ENGINE_RETRAIN_USER_SAMPLE`` (whole numbers);
        a bad value fails naming the variable."""
        values: dict = {}
        raw = environ.get(RETRAIN_ENV["configs"], "").strip()
        if raw and raw.lower() != "all":
            values["configs"] = tuple(name.strip() for name in raw.split(",") if name.strip())
        for field in ("max_epochs", "user_sample"):
            raw = environ.get(RETRAIN_ENV[field], "").strip()
            if raw:
                try:
                    values[field] = int(raw)
                except ValueError:
                    raise ValueError(f"{RETRAIN_ENV[field]}={raw!r}: expected a whole number") from None
        try:
            return cls(**values)
        except ValidationError as error:
            problem = error.errors()[0]
            field = str(problem["loc"][0])
            raise ValueError(f"{RETRAIN_ENV[field]}={environ.get(RETRAIN_ENV[field])!r}: {problem['msg']}") from None

    def describe(self) -> str:
        configs = ", ".join(self.configs) if self.configs else "every playlists config"
        epochs = self.max_epochs or "each config's own"
        sample = self.user_sample or "each config's own"
        return (
            f"retrains {configs}; max_epochs {epochs}; user_sample {sample} (set ${RETRAIN_ENV['configs']}, "
            f"${RETRAIN_ENV['max_epochs']}, ${RETRAIN_ENV['user_sample']} and reload the code location)"
        )

    def select(self, registry: list[str]) -> list[str]:
        """The configs to retrain among the registry's; a name it does not have fails naming the variable."""
        unknown = sorted(set(self.configs) - set(registry))
        if unknown:
            raise ValueError(
                f"{RETRAIN_ENV['configs']}: unknown playlists configs {', '.join(unknown)}; "
                f"known: {', '.join(registry)}"
            )
        return sorted(self.configs) if self.configs else registry

    def run_config(self) -> dict:
        """The retrain run's config: the overrides of ``playlists/trained_model`` that are set."""
        config = {
            k: v for k, v in (("max_epochs", self.max_epochs), ("user_sample", self.user_sample)) if v is not None
        }
        return {"ops": {"playlists__trained_model": {"config": config}}} if config else {}


RETRAIN = RetrainSettings.from_env()

DONE_SUFFIX = ".done"
ACCEPTED_SUFFIXES = (".csv", ".parquet")
DATA_SELECTION = dg.AssetSelection.assets(
    *LANDED_KEYS.values(), ["playlists", "graph"], ["playlists", "split"]
) | dg.AssetSelection.groups("playlists_sql")
MODEL_KEYS = [dg.AssetKey(["playlists", name]) for name in ("trained_model", "metric_report", "model_comparison")]
playlist_configs = dg.DynamicPartitionsDefinition(name="playlists_configs")  # the chain factory's partitions
# Two jobs, as a job's assets share one partitioning: one run per landed batch for the data chain, then one per
# model config. Both run in one process (short sequential chains; DuckDB has a single writer anyway).
landing_job = dg.define_asset_job(
    "playlist_landing_job",
    selection=DATA_SELECTION,
    executor_def=dg.in_process_executor,
    description="Ingest one landed batch and rebuild the playlist SQL models, graph and split.",
)
retrain_job = dg.define_asset_job(
    "playlist_retrain_job",
    selection=dg.AssetSelection.assets(*MODEL_KEYS),
    executor_def=dg.in_process_executor,
    description="Retrain and report one playlist model config; refresh the comparison.",
)


def batch_id(path: Path, sha256: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", path.stem).strip("_")[:40] or "file"
    return f"{stem}-{sha256[:12]}"


def _candidates(landing: Path) -> list[Path]:
    """Regular files directly inside ``landing`` (no hidden files, no ``.done`` markers).

    Symbolic links are never candidates, even to a file: a link could point anywhere on the
    machine, and landing files must be confined to the landing folder (see :func:`_symlinks`).
    """
    if not landing.is_dir():
        return []
    return sorted(
        p
        for p in landing.iterdir()
        if not p.is_symlink() and p.is_file() and not p.name.startswith(".") and not p.name.endswith(DONE_SUFFIX)
    )


def _symlinks(landing: Path) -> list[Path]:
    """Symbolic links in ``landing``: refused, and named in the skip reason."""
    if not landing.is_dir():
        return []
    return sorted(p for p in landing.iterdir() if p.is_symlink() and not p.name.startswith("."))


def data_run_config(path: Path, sha256: str, kind: str = "kaggle") -> dict:
    return {"ops": {"landed_batch": {"config": {"path": str(path), "sha256": sha256, "kind": kind}}}}


def _completed_runs(instance: dg.DagsterInstance, batches: list[str], chunk: int = 500) -> dict[str, tuple[bool, bool]]:
    """(succeeded, failed) for the data run of each batch, in one run-storage query per
    ``chunk`` batches (not one per batch: a flood of landed files stays cheap per tick)."""
    runs_by_batch: dict[str, list] = {batch: [] for batch in batches}
    for start in range(0, len(batches), chunk):
        part = batches[start : start + chunk]
        for run in instance.get_runs(filters=dg.RunsFilter(tags={LANDING_TAG: part, "spotify_engine/stage": "data"})):
            runs_by_batch.setdefault(run.tags[LANDING_TAG], []).append(run)
    outcome = {}
    for batch in batches:
        runs = runs_by_batch[batch]
        succeeded = any(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        failed = bool(runs) and all(
            run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED) for run in runs
        )
        outcome[batch] = (succeeded, failed)
    return outcome


def landing_description() -> str:
    """The sensor's description: the folder it watches, what a landed file must be, what it runs."""
    return (
        f"Watches {data_lake_root() / 'landing'} (landing/ in the data lake folder, ${DATA_LAKE_ENV}). A landed file is "
        f"a Kaggle-format playlist CSV (header {', '.join(KAGGLE_COLUMNS)}) or a listening-session file (Parquet or CSV "
        f"with {', '.join(SESSION_COLUMNS)}), placed directly in that folder; it is taken once complete: a `<file>{DONE_SUFFIX}` "
        f"marker beside it (write it last), or the same size and modification time on two ticks and no process "
        f"holding it open for writing (${COMPLETE_ENV}=marker requires the marker). Each new file: one "
        f"{landing_job.name} run (ingest the batch, rebuild the playlist SQL models, graph and split), then one "
        f"{retrain_job.name} run per config (trained model, metric report, comparison): {RETRAIN.describe()}."
    )


@dg.sensor(
    name="landing_sensor",
    jobs=[landing_job, retrain_job],
    minimum_interval_seconds=sensor_interval(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=landing_description(),
)
def landing_sensor(context: dg.SensorEvaluationContext, lake: DataLake):
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, list[int]] = cursor.get("seen", {})
    done: dict[str, str] = cursor.get("done", {})  # sha256 -> batch
    pending: dict[str, str] = cursor.get("pending", {})  # batch -> sha256, waiting for the data run
    skipped: dict[str, list] = cursor.get("skipped", {})  # path -> [size, mtime, reason]
    taken: dict[str, list] = cursor.get("taken", {})  # path -> [size, mtime, batch] until its data run ends
    attempts: dict[str, int] = cursor.get("attempts", {})  # sha256 -> failed data runs of that content
    landing = lake.landing_dir
    run_requests: list[dg.RunRequest] = []
    new_partitions, new_configs, waiting, notes = [], [], [], []

    # phase 2: batches whose data run succeeded get their model runs
    outcomes = _completed_runs(context.instance, sorted(pending))
    for batch, sha in list(pending.items()):
        succeeded, failed = outcomes[batch]
        if succeeded and (why := _no_retrain(context.instance, lake, batch, taken)):
            notes.append(why)
            context.log.warning(notes[-1])
            del pending[batch]
            taken = {path: entry for path, entry in taken.items() if entry[2] != batch}
        elif succeeded:
            configs = RETRAIN.select(sorted(DATASET.registry.full(lake.path)))
            known = set(context.instance.get_dynamic_partitions(playlist_configs.name))
            new_configs += [name for name in configs if name not in known and name not in new_configs]
            run_requests += [
                dg.RunRequest(
                    run_key=f"landing-{sha}-model-{name}",
                    job_name=retrain_job.name,
                    partition_key=name,
                    asset_selection=MODEL_KEYS,
                    run_config=RETRAIN.run_config(),
                    tags={LANDING_TAG: batch, "spotify_engine/stage": "model"},
                )
                for name in configs
            ]
            del pending[batch]
            taken = {path: entry for path, entry in taken.items() if entry[2] != batch}
        elif failed:
            notes.append(f"data run of batch {batch} failed; its models are not retrained")
            context.log.warning(notes[-1])
            del pending[batch]
            done.pop(sha, None)  # its content can be taken again (a new run key: see attempts)
            attempts[sha] = attempts.get(sha, 0) + 1
            for path, entry in list(taken.items()):
                if entry[2] == batch:  # the file stays where it is, for a re-execution of the run
                    skipped[path] = [
                        entry[0],
                        entry[1],
                        f"data run of batch {batch} failed; file kept for a re-execution",
                    ]
                    del taken[path]

    for link in _symlinks(landing):
        notes.append(f"refused {link.name}: a symbolic link (landing files must be regular files inside {landing})")

    # phase 1: complete new files
    current: dict[str, list[int]] = {}
    rule = completion_rule()  # a bad setting fails every tick, naming it
    candidates = _candidates(landing)
    if (landing / "archive").exists() and not (landing / "archive").is_dir():
        notes.append(
            f"no file is taken: {landing / 'archive'} is not a folder (landed files are archived to "
            f"{landing / 'archive'}/<batch>/); move it away"
        )
        context.log.error(notes[-1])
        candidates = []
    closed = _closed_files(candidates, seen, rule)
    for path in candidates:
        key = str(path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        signature = [stat.st_size, stat.st_mtime_ns]
        current[key] = signature
        if skipped.get(key, [None, None])[:2] == signature:
            continue
        if taken.get(key, [None, None])[:2] == signature:
            # requested already: its data run archives it (it may still be queued or running)
            waiting.append(f"{path.name} (taken as batch {taken[key][2]}; waiting for its data run)")
            continue
        marker = path.with_name(path.name + DONE_SUFFIX)
        complete = marker.exists() or (seen.get(key) == signature and closed.get(key) is True)
        if not complete:
            why = closed.get(key) if seen.get(key) == signature else "waiting for it to stop changing"
            waiting.append(f"{path.name} (size {signature[0]}, {why} or for {marker.name})")
            continue
        kind, reason = classify(path)
        if reason:
            skipped[key] = [*signature, reason]
            notes.append(f"skipped {path.name}: {reason}")
            context.log.warning(notes[-1])
            continue
        sha = file_sha256(path)
        if sha in done:
            target = landing / "archive" / "duplicates" / f"{sha[:12]}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            if marker.exists():
                os.replace(marker, target.with_name(target.name + DONE_SUFFIX))
            notes.append(f"skipped {path.name}: same content as batch {done[sha]} (moved to {target})")
            context.log.info(notes[-1])
            current.pop(key, None)
            continue
        batch = batch_id(path, sha)
        done[sha] = batch
        pending[batch] = sha
        taken[key] = [*signature, batch]
        new_partitions.append(batch)
        tags = {
            LANDING_TAG: batch,
            "spotify_engine/stage": "data",
            "spotify_engine/file": path.name,
            "spotify_engine/kind": kind,
        }
        retry = f"-retry{attempts[sha]}" if attempts.get(sha) else ""
        run_requests.append(
            dg.RunRequest(
                run_key=f"landing-{sha}{retry}",
                job_name=landing_job.name,
                partition_key=batch,
                run_config=data_run_config(path, sha, kind),
                tags=tags,
            )
        )
        current.pop(key, None)

    new_cursor = json.dumps(
        {
            "seen": current,
            "done": done,
            "pending": pending,
            "skipped": {k: v for k, v in skipped.items() if k in current},
            "taken": {k: v for k, v in taken.items() if v[2] in pending},
            "attempts": attempts,
        },
        sort_keys=True,
    )
    if not run_requests:
        why = waiting + notes or [f"no new complete file in {landing}"]
        return dg.SensorResult(skip_reason="; ".join(why), cursor=new_cursor)
    requests = [landing_batches.build_add_request(new_partitions)] if new_partitions else []
    if new_configs:  # a config not registered yet (no model_registry run): its retrain partition is added here
        requests.append(playlist_configs.build_add_request(new_configs))
    return dg.SensorResult(run_requests=run_requests, dynamic_partitions_requests=requests, cursor=new_cursor)


def _closed_files(candidates: list[Path], seen: dict[str, list[int]], rule: str) -> dict[str, bool | str]:
    """For each candidate whose size held since the last tick: True when it is confirmed closed,
    else why not (written by a process, or open files that cannot be read; under the ``marker``
    rule: the marker is required). One scan of ``/proc`` per tick."""
    stable = []
    for path in candidates:
        try:
            stat = path.stat()
        except FileNotFoundError:  # gone since it was listed
            continue
        if seen.get(str(path)) == [stat.st_size, stat.st_mtime_ns]:
            stable.append(path)
    if not stable:
        return {}
    if rule == "marker":
        return {str(p): f"{COMPLETE_ENV}=marker: waiting" for p in stable}
    writers, unseen = open_for_writing(stable)
    result: dict[str, bool | str] = {}
    for path in stable:
        if writers.get(path):
            result[str(path)] = f"still open for writing by process(es) {writers[path]}: waiting for it to be closed"
        elif unseen is None:
            result[str(path)] = "cannot confirm it is closed (/proc is not readable): waiting"
        elif unseen:
            result[str(path)] = (
                f"cannot confirm it is closed ({len(unseen)} processes' open files are not readable): waiting"
            )
        else:
            result[str(path)] = True
    return result


def _no_retrain(instance: dg.DagsterInstance, lake: DataLake, batch: str, taken: dict[str, list]) -> str:
    """Why a batch whose data run succeeded must not retrain the models ('' when it should):
    it added no rows, or its file changed after it was taken (checked on the archived copy)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=LANDED_KEYS["landed_entries"], asset_partitions=[batch]), limit=1
    ).records
    if records:
        metadata = records[0].asset_materialization.metadata
        rows = metadata.get("dagster/row_count")
        if rows is not None and rows.value == 0:
            skipped = metadata["skipped"].value if "skipped" in metadata else "no"
            return f"batch {batch} added no rows ({skipped if skipped != 'no' else 'no line accepted'}): models not retrained"
    for path, (size, _mtime, owner) in taken.items():
        archived = lake.landing_dir / "archive" / batch / Path(path).name
        if owner == batch and archived.exists() and archived.stat().st_size != size:
            return (
                f"{Path(path).name} changed after it was taken as batch {batch} ({size} -> {archived.stat().st_size} bytes, "
                f"now {archived}): only the first {size} bytes were ingested; land the complete file again; models not retrained"
            )
    return ""


def classify(path: Path) -> tuple[str, str]:
    """(kind, reason): ``kaggle`` or ``sessions`` with an empty reason, or why the file cannot
    be ingested."""
    import duckdb

    if path.suffix.lower() not in ACCEPTED_SUFFIXES:
        return (
            "",
            f"unsupported file type {path.suffix or '(none)'}: expected .csv (Kaggle format or sessions) or .parquet (sessions)",
        )
    problems = []
    if path.suffix.lower() == ".csv":
        try:
            check_header(path)
            return "kaggle", ""
        except KaggleFormatError as error:
            problems.append(str(error))
            if "empty file" in str(error) or "NUL bytes" in str(error) or "not UTF-8" in str(error):
                return "", problems[0]
    con = duckdb.connect()
    try:
        session_columns(con, path)
        return "sessions", ""
    except KaggleFormatError as error:
        problems.append(str(error))
    finally:
        con.close()
    return "", " / ".join(problems)


defs = dg.Definitions(sensors=[landing_sensor])
