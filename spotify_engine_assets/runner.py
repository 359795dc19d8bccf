"""Materialize a whole chain in stages against the project's Dagster instance.

Stages: data (the chain's ingestion, SQL models, graph, split, and ``<chain>/model_registry``, which
registers every config of ``configs/<chain>/models.yaml`` and of the configs promoted into the data
lake as a ``<chain>_configs`` dynamic partition) -> one run per model config (trained model +
metric report; a partition key per run) -> the comparison (model comparison, experiments table,
A/B tests, champion, and for the listening chain its explanations). Each stage is a normal
Dagster run recorded in ``$DAGSTER_HOME``, so the UI shows the history, lineage and metadata.
Run configuration comes from the YAML files in ``configs/run/`` that ``make test`` also passes
to ``dagster asset materialize``.
"""

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

import dagster as dg

from .core.presentation import group_name
from .core.storage.paths import configs_dir, data_lake_root
from .core.strict_yaml import load_yaml

CHAINS = ("listening", "playlists", "lastfm")
PROFILES = ("default", "tiny")
TINY_TRAINING = {"max_epochs": 3, "user_sample": 500}  # the tiny profile of the playlist and Last.fm chains
# sha256 of the dagster.yaml files earlier versions copied into a home: replaced by the current one
# (a home holding one of them would miss defs/instance.py's guards); an edited file is kept
PREVIOUS_DAGSTER_YAML = {"05a42c7dcc1638543f42b14a346aae1dc2a762a258cc1f2b923562549e9781f4"}


def data_stage(chain: str) -> dg.AssetSelection:
    """A chain's ingestion, SQL models, graph and split, and its model registry."""
    groups = dg.AssetSelection.groups(*(group_name(chain, domain) for domain in ("ingestion", "sql", "graph")))
    return groups | dg.AssetSelection.assets([chain, "model_registry"])


def model_stage(chain: str) -> dg.AssetSelection:
    """One config's trained model, metric report and batch recommendations (a partition key per run)."""
    return dg.AssetSelection.assets([chain, "trained_model"], [chain, "metric_report"], [chain, "recommendations"])


def comparison_stage(chain: str) -> dg.AssetSelection:
    names = ["model_comparison", "experiments", "ab_tests", "champion"] + (
        ["explanations"] if chain == "listening" else []
    )
    return dg.AssetSelection.assets(*([chain, name] for name in names))


DATA_STAGE, MODEL_STAGE = data_stage("listening"), model_stage("listening")


def dataset_of(chain: str):
    if chain not in CHAINS:
        raise ValueError(f"unknown chain {chain!r}; known: {', '.join(CHAINS)}")
    return import_module(f"spotify_engine_assets.datasets.{chain}").DATASET


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` or ``<data lake>/dagster_home``, created with the project's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or data_lake_root() / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists() or hashlib.sha256(settings.read_bytes()).hexdigest() in PREVIOUS_DAGSTER_YAML:
        shutil.copyfile(configs_dir() / "dagster.yaml", settings)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def project_instance() -> dg.DagsterInstance:
    """The Dagster instance of the project's home (:func:`dagster_home`)."""
    dagster_home()
    return dg.DagsterInstance.get()


def run_config(*files: str) -> dict:
    """Merge run-config YAML files from ``configs/run/`` (in-process execution always)."""
    merged: dict = {}
    for name in ("in_process.yaml", *files):
        path = configs_dir() / "run" / name
        loaded = load_yaml(path.read_text(), path) or {}
        for key, value in loaded.items():
            merged.setdefault(key, {}).update(value)
    return merged


def profile_configs(chain: str, profile: str) -> tuple[dict, dict]:
    """The data stage's and the model runs' run config of a profile: ``tiny`` is the CI-sized world
    (``configs/run/tiny_*.yaml``) for the listening chain, a 500-user sample and 3 epochs for the
    others (whose data is not generated)."""
    if profile == "default":
        return run_config(), run_config()
    if chain == "listening":
        return run_config("tiny_data.yaml"), run_config("tiny_train.yaml")
    return run_config(), {**run_config(), "ops": {f"{chain}__trained_model": {"config": TINY_TRAINING}}}


@dataclass
class StageResult:
    name: str
    success: bool
    seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""
    run_id: str = ""

    def line(self, elapsed: float | None = None) -> str:
        """``[elapsed] name: ok (took N s)``; the prefix is the time since the chain started (when given)."""
        status = "ok" if self.success else f"FAILED: {self.error}"
        prefix = f"[{elapsed:7.1f} s] " if elapsed is not None else ""
        return f"{prefix}{self.name}: {status} (took {self.seconds:.1f} s)"


def run_stage(
    name: str, defs: dg.Definitions, instance: dg.DagsterInstance, selection, config: dict, partition: str | None = None
) -> StageResult:
    """One Dagster run of ``selection`` (failures are recorded in the result, never raised)."""
    started = time.perf_counter()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        run_config=config,
        instance=instance,
        resources=defs.resources,
        partition_key=partition,
        raise_on_error=False,
    )
    seconds = time.perf_counter() - started
    failures = [e.message for e in result.all_events if e.is_failure]
    error = "" if result.success else (failures[0] if failures else "run failed")
    steps = {
        stat.step_key: round(stat.end_time - stat.start_time, 2)
        for stat in instance.get_run_step_stats(result.run_id)
        if stat.end_time and stat.start_time
    }
    return StageResult(name, result.success, seconds, steps, error, result.run_id)


def materialize_chain(
    profile: str = "default",
    configs: list[str] | None = None,
    instance: dg.DagsterInstance | None = None,
    log=print,
    chain: str = "listening",
) -> list[StageResult]:
    """Run every stage of ``chain``; model configs keep going when one fails. Returns one result per run.

    Without an ``instance`` the project's home (``dagster_home()``) records the runs.
    """
    from .definitions import defs
    from .defs.resources import init_warehouse_pool, release_killed_runs

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    data_config, train_config = profile_configs(chain, profile)
    registry = dataset_of(chain).registry.full()  # the registry file + promoted configs, validated
    names = configs or sorted(registry)
    unknown = sorted(set(names) - set(registry))
    if unknown:
        raise ValueError(f"unknown model configs {unknown}; known: {', '.join(sorted(registry))}")
    instance = project_instance() if instance is None else instance
    init_warehouse_pool(instance)
    for run_id in release_killed_runs(instance):  # a killed run would hold the warehouse pool slot
        log(f"run {run_id}: its process is gone (killed); marked failed and its pool slots freed")
    results: list[StageResult] = []
    started = time.perf_counter()
    log(
        f"{chain} chain, profile {profile}: data, {len(names)} model configs, comparison "
        "([time since start] stage: status (the stage's own time))"
    )

    def stage(name: str, selection: dg.AssetSelection, config: dict, partition: str | None = None) -> bool:
        results.append(run_stage(name, defs, instance, selection, config, partition))
        log(results[-1].line(elapsed=time.perf_counter() - started))
        return results[-1].success

    if stage("data", data_stage(chain), data_config):
        for name in names:
            stage(f"model {name}", model_stage(chain), train_config, partition=name)
        stage("comparison", comparison_stage(chain), run_config())
    return results
