"""Shared fixtures: a temporary data lake with an ephemeral Dagster instance, the tiny listening
data stage built once per session, and the test markers (``unit``, ``integration``, ``browser``,
``slow``; registered in pyproject.toml) given per module."""

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV
from spotify_engine_assets.runner import run_config

# Markers by module. ``integration``: materializes assets, starts processes or servers; ``slow``: takes tens
# of seconds or more on its own (also integration); ``browser``: drives a real browser (also integration and
# slow). A test of any other module is a ``unit`` test, unless it uses a fixture of LAKE_FIXTURES.
BROWSER_MODULES = {"test_ui_browser"}
SLOW_MODULES = BROWSER_MODULES | {
    "test_scale_postgres",
    "test_scale_study",
    "test_scale_celery",
    "test_reliability_kill",
    "test_sensor_live",
    "test_resume",
    "test_ddp",
    "test_pipeline",
    "test_hpo_asset",
    "test_new_chain",
    "test_explain_pipeline",
    "test_experiments_pipeline",
    "test_playlist_pipeline",
    "test_lastfm_pipeline",
    "test_hpo",
    "test_reliability_model",
    "test_reliability_instance",
    "test_landing_gates",
}
# also: studies with worker processes (test_hpo), measured memory peaks (test_trial_budget), the real Last.fm data
INTEGRATION_MODULES = SLOW_MODULES | {
    "test_bad_input",
    "test_recommend",
    "test_registry",
    "test_reliability",
    "test_sensor",
    "test_sqlmodels",
    "test_train_cli",
    "test_trial_budget",
    "test_lastfm",
    "test_lastfm_splits",
}
LAKE_FIXTURES = {"lake_runner", "tiny_lake_runner", "module_lake"}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        names = ({"browser"} if module in BROWSER_MODULES else set()) | ({"slow"} if module in SLOW_MODULES else set())
        integration = module in INTEGRATION_MODULES or bool(LAKE_FIXTURES & set(getattr(item, "fixturenames", ())))
        names.add("integration" if integration else "unit")
        for name in sorted(names):
            item.add_marker(name)


@contextlib.contextmanager
def lake_env(lake: Path, home: Path | None = None) -> Iterator[Path]:
    """``$SPOTIFY_ENGINE_DATA_LAKE`` = ``lake`` (and ``$DAGSTER_HOME`` = ``home``, if given) for the block;
    both restored after it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_LAKE_ENV, str(lake))
        if home is not None:
            patch.setenv("DAGSTER_HOME", str(home))
        yield lake


@pytest.fixture(scope="module")
def module_lake(tmp_path_factory):
    """A new data-lake folder for the module, in ``$SPOTIFY_ENGINE_DATA_LAKE`` while the module runs."""
    with lake_env(tmp_path_factory.mktemp("lake")) as lake:
        yield lake


@pytest.fixture
def data_lake(tmp_path, monkeypatch):
    """This test's ``tmp_path`` as the data lake (``$SPOTIFY_ENGINE_DATA_LAKE``)."""
    monkeypatch.setenv(DATA_LAKE_ENV, str(tmp_path))
    return tmp_path


def _runner(lake: Path, instance: dg.DagsterInstance):
    """``run(selection, config=None, partition=None)``: the project's assets materialized in-process against
    ``instance`` (failures are returned, not raised), with every chain's configs registered as partitions."""
    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.defs import lastfm, listening, playlists
    from spotify_engine_assets.defs.chain import register_configs

    assets = [*defs.assets, *defs.asset_checks]

    def run(selection, config: dict | None = None, partition: str | None = None) -> dg.ExecuteInProcessResult:
        for chain in (listening.CHAIN, playlists.CHAIN, lastfm.CHAIN):
            register_configs(chain, instance, lake)
        return dg.materialize(
            assets,
            selection=selection,
            run_config=config or run_config(),
            instance=instance,
            resources=defs.resources,
            partition_key=partition,
            raise_on_error=False,
        )

    run.instance = instance  # for tests that query it (declarative automation, check results)
    return run


@pytest.fixture(scope="module")
def lake_runner(module_lake):
    """``(lake, run)``: ``$SPOTIFY_ENGINE_DATA_LAKE`` points at a new folder for the module, and
    ``run(selection, config=None, partition=None)`` materializes the project's assets in-process
    against one ephemeral instance (failures are returned, not raised). Every config of every
    chain's registry (its models.yaml and the lake's promoted configs) is a ``<chain>_configs``
    partition."""
    yield module_lake, _runner(module_lake, dg.DagsterInstance.ephemeral())


@pytest.fixture(scope="session")
def tiny_lake_template(tmp_path_factory) -> tuple[Path, list[dg.AssetMaterialization]]:
    """The listening data stage (``runner.DATA_STAGE``: generated tiny world, SQL models, graph, split,
    model registry) materialized once per session (per xdist worker): ``(lake, materializations)``, the
    latter with Dagster's data and code version tags; copy it with :func:`copy_tiny_lake`."""
    from spotify_engine_assets.runner import DATA_STAGE

    lake = tmp_path_factory.mktemp("tiny_template")
    with lake_env(lake):
        result = _runner(lake, dg.DagsterInstance.ephemeral())(DATA_STAGE, run_config("tiny_data.yaml"))
    failures = [event.message for event in result.all_events if event.is_failure]
    assert result.success, f"the tiny data stage failed: {failures}"
    return lake, [event.materialization for event in result.get_asset_materialization_events()]


def copy_tiny_lake(template: tuple[Path, list[dg.AssetMaterialization]], dest: Path) -> tuple[Path, dg.DagsterInstance]:
    """A copy of :func:`tiny_lake_template` in ``dest``: ``(dest, instance)``, a new ephemeral instance that
    knows the data stage's materializations (so a model's provenance finds its upstream versions)."""
    lake, materializations = template
    shutil.copytree(lake, dest)
    instance = dg.DagsterInstance.ephemeral()
    for materialization in materializations:
        instance.report_runless_asset_event(materialization)
    return dest, instance


@pytest.fixture(scope="module")
def tiny_lake_runner(tiny_lake_template, tmp_path_factory):
    """``(lake, run)`` like :func:`lake_runner`, the lake a copy of the tiny data stage (nothing to rebuild)."""
    lake, instance = copy_tiny_lake(tiny_lake_template, tmp_path_factory.mktemp("tiny") / "lake")
    with lake_env(lake):
        yield lake, _runner(lake, instance)
