"""The listening chain: the generated world -> the ``raw`` and SQL tables -> ``listening/graph`` and
``listening/split`` -> the chain factory's models, reports, experiments and studies; plus what only
this chain has: explanations, cold start and time-series cross-validation."""

import dagster as dg

from ..chain import chain_definitions
from . import cross_validation, explanations, graph, ingestion
from .graph import CHAIN

defs = dg.Definitions.merge(
    ingestion.defs, graph.defs, chain_definitions(CHAIN), explanations.defs, cross_validation.defs
)
