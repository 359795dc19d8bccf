"""The playlist chain: Kaggle-format files (or ones derived from the generated world) -> DuckDB ->
the ``playlists`` SQL models -> ``playlists/graph`` and ``playlists/split`` -> the chain factory's
models, reports, experiments and studies; landed files retrain it through the landing sensor."""

import dagster as dg

from ...datasets.playlists import DATASET
from ..chain import Chain, chain_definitions
from . import graph, ingestion, sensors

CHAIN = Chain(DATASET)

defs = dg.Definitions.merge(ingestion.defs, graph.defs, chain_definitions(CHAIN), sensors.defs)
