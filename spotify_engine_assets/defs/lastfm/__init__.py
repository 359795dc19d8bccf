"""The Last.fm 2K chain: the HetRec files and the fixed split -> DuckDB -> the ``lastfm`` SQL marts
-> ``lastfm/graph`` and ``lastfm/split`` -> the chain factory's models, reports, experiments and
studies."""

import dagster as dg

from ...datasets.lastfm import DATASET
from ..chain import Chain, chain_definitions, data_assets
from . import graph, ingestion

CHAIN = Chain(DATASET)

defs = dg.Definitions.merge(
    ingestion.defs,
    dg.Definitions(assets=data_assets(CHAIN, graph.MARTS, graph.graph_from_marts, graph.split_of)),
    chain_definitions(CHAIN),
)
