"""Composition root: gathers the definitions of every domain and binds the resources."""

import dagster as dg

from .defs import cross_validation, experiments, explanations, graph, ingestion, lastfm, optimization, playlists, sensors, sql_models, training
from .defs.resources import DataLake, LakeIOManager, TorchRuntime, Warehouse

lake = DataLake()

defs = dg.Definitions.merge(
    ingestion.defs,
    sql_models.build_sql_definitions(sql_models.load_project()),
    graph.defs,
    training.defs,
    playlists.defs,
    sensors.defs,
    experiments.defs,
    explanations.defs,
    lastfm.defs,
    optimization.defs,
    cross_validation.defs,
    dg.Definitions(
        resources={
            "lake": lake,
            "warehouse": Warehouse(lake=lake),
            "torch_runtime": TorchRuntime(),
            "io_manager": LakeIOManager(lake=lake),
        }
    ),
)
