"""Composition root: one line per chain, the SQL project, and the shared resources."""

import dagster as dg

from .defs import lastfm, listening, playlists, sql
from .defs.resources import DataLake, LakeIOManager, TorchRuntime, Warehouse

lake = DataLake()

defs = dg.Definitions.merge(
    listening.defs,
    playlists.defs,
    lastfm.defs,
    sql.build_sql_definitions(sql.load_project()),
    dg.Definitions(resources={"lake": lake, "warehouse": Warehouse(lake=lake), "torch_runtime": TorchRuntime(),
                              "io_manager": LakeIOManager(lake=lake)}),
)
