"""Shared fixtures: a temporary data lake with an ephemeral Dagster instance."""

import os

import dagster as dg
import pytest

from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV
from spotify_engine_assets.runner import run_config


@pytest.fixture(scope="module")
def lake_runner(tmp_path_factory):
    """``(lake, run)``: ``$SPOTIFY_ENGINE_DATA_LAKE`` points at a new folder for the module, and
    ``run(selection, config=None, partition=None)`` materializes the project's assets in-process
    against one ephemeral instance (failures are returned, not raised). Every config of every
    chain's registry (its models.yaml and the lake's promoted configs) is a ``<chain>_configs``
    partition."""
    from spotify_engine_assets.defs import lastfm, listening, playlists
    from spotify_engine_assets.defs.chain import register_configs
    from spotify_engine_assets.definitions import defs

    lake = tmp_path_factory.mktemp("lake")
    previous = os.environ.get(DATA_LAKE_ENV)
    os.environ[DATA_LAKE_ENV] = str(lake)
    instance = dg.DagsterInstance.ephemeral()
    assets = [*defs.assets, *defs.asset_checks]

    def run(selection, config: dict | None = None, partition: str | None = None) -> dg.ExecuteInProcessResult:
        for chain in (listening.CHAIN, playlists.CHAIN, lastfm.CHAIN):
            register_configs(chain, instance, lake)
        return dg.materialize(
            assets, selection=selection, run_config=config or run_config(), instance=instance,
            resources=defs.resources, partition_key=partition, raise_on_error=False,
        )

    run.instance = instance  # for tests that query it (declarative automation, check results)
    yield lake, run
    if previous is None:
        os.environ.pop(DATA_LAKE_ENV, None)
    else:
        os.environ[DATA_LAKE_ENV] = previous
