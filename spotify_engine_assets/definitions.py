"""Composition root: one line per chain, the SQL project, and the shared resources."""

import warnings

import dagster as dg

from .defs import lastfm, listening, playlists, sql
from .defs.resources import DataLake, LakeIOManager, TorchRuntime, Warehouse

lake = DataLake()
# Who answers for the assets, shown on every asset's page and filterable in the catalog: set here, once.
OWNERS = ["team:recsys"]

defs = dg.Definitions.merge(
    listening.defs,
    playlists.defs,
    lastfm.defs,
    sql.build_sql_definitions(sql.load_project()),
    dg.Definitions(
        resources={
            "lake": lake,
            "warehouse": Warehouse(lake=lake),
            "torch_runtime": TorchRuntime(),
            "io_manager": LakeIOManager(lake=lake),
        }
    ),
)
with warnings.catch_warnings():  # Definitions.map_asset_specs is a preview API in Dagster 1.13
    warnings.simplefilter("ignore", dg.PreviewWarning)
    defs = defs.map_asset_specs(
        func=lambda spec: spec.replace_attributes(owners=list(dict.fromkeys([*spec.owners, *OWNERS])))
    )
