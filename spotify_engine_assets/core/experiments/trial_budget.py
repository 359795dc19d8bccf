"""Peak memory and seconds of training one config on a graph, estimated before it trains.

A hyperparameter study uses these to prune a trial that would not fit its limits
(``max_trial_memory_mb``, ``max_trial_seconds``) before any epoch runs.

Notation (all from the config, the built model and the message-passing graph, nothing trained):
``P`` parameters of the built model (weights and any task heads); ``d`` embedding_dim; ``h`` heads
(1 for LightGCN); ``L`` message-passing layers (``num_layers``; 1 for gat_basic); ``E`` edges the
model propagates over (the model's ``relations``: LightGCN the interaction both ways, gat_basic
also the main category, the other GATs every relation); ``N`` nodes of the types it embeds; ``U``,
``S`` users and items; ``B`` positives per optimizer step (batch_size x grad_accumulation, or
``ceil(E_train / k)`` with ``steps_per_epoch = k``: ``ModelConfig.positives_per_step``; at most
``E_train``); ``n`` negatives per positive.

Memory in bytes, the peak of building the model and training it (float32 elements, 4 bytes)::

    4 * ( 5 P                                  weights, gradients, Adam m and v, best-weights copy
        + L (C_EDGE[model] E d g + C_HEAD E h + C_NODE N d)   activations kept for the backward pass
        + C_BATCH B (2 + n) d                    the step's gathered embeddings and their gradients
        + C_SCORE min(c, U) S )                  a chunk of the validation score matrix, masked, top-k
    + INDEX_BYTES L E + FIXED_BYTES            per-edge int64 index buffers, fixed allocator overhead

with ``c`` the users of a scoring chunk (``metrics.chunk_users``: at most 2048 and 4 M scores) and
``g = 1`` (GATv2 concatenates ``h`` heads of width ``d / h``: ``[E, d]`` messages).
LightGCN and gat_enhanced aggregate with sparse products (``core/models/propagation.py``) and keep
no ``[E, d]`` message: their small ``C_EDGE`` (0.5, 1) covers the sparse patterns' index buffers
and the heap-only allocator's slack. The constants were fitted to ``PeakMemory`` measurements (peak resident memory above the start) of
build + train, then checked on 16 configs of the three families (d 16..128, h 1..8, L 1..4, batch
1024/4096) on graphs of 1.1 x 10^4 and 3.4 x 10^4 training pairs: the estimate was 1.2..2.6 x the
measured peak. The GATv2 models' ``C_EDGE`` went from 7 to 8 when the training process's
allocator became heap-only (``torch_runtime.malloc_heap_only``; gat_basic at d 128, h 8 measured
0.98 x the estimate at 7), and to 9 when a fresh-clone run measured that config at 1.02 x the
estimate at 8 (its peak varies by a few percent between runs; 9 leaves about 10 %).
``tests/test_trial_budget.py`` checks measured <= estimate <= 3 x measured on tiny data.

Seconds: an epoch is ``ceil(E_train / B)`` optimizer steps (``min(k, E_train)`` with
``steps_per_epoch = k``: ``ModelConfig.steps_in_epoch``), each one forward and backward pass of
the whole graph plus the step's BPR terms, then one forward pass and the validation ranking::

    seconds = epochs * K * ( steps * (L E (d g + h) + N d + B (2 + n) d + STEP_UNITS) + L E d g + U S d )

(in the time formula ``g`` is the sparse products per relation and layer of gat_enhanced: ``h``
with ``transform``, else 1).

``K`` (seconds per unit) is measured once per study by a probe: one epoch of the study's base
config on the study's graph (:func:`calibrate_seconds`). ``epochs`` is the epoch cap, so the
estimate bounds a run that early stopping or the pruner may end sooner. Seconds per unit varied
2 x 10^-9..2 x 10^-8 over the configs above (1 thread): a time estimate is good to a factor of ~4,
enough to keep a study off configs that are an order of magnitude too slow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch_geometric.data import HeteroData

from ..config import ModelConfig
from ..data.graph import Schema, num_nodes_of
from ..evaluation.metrics import chunk_users
from ..models import build_model

BYTES = 4
STATE_COPIES = 5  # weights, gradients, Adam exp_avg and exp_avg_sq, the best-weights copy
C_EDGE = {"lightgcn": 0.5, "gat_basic": 9.0, "gat_enhanced": 1.0, "playlist_gat": 9.0, "tag_friend_gat": 2.6}
C_HEAD, C_NODE, C_BATCH, C_SCORE = 6.0, 4.0, 6.0, 3.5  # the memory formula's fitted constants
INDEX_BYTES = 32
FIXED_BYTES = 8 * 2**20
STEP_UNITS = 5e6  # per-step overhead (Python, many small kernels) in work units


@dataclass(frozen=True)
class GraphSize:
    """What the estimate reads from a message-passing graph."""

    num_nodes: dict[str, int]
    num_edges: dict[tuple[str, str, str], int]
    schema: Schema

    @classmethod
    def of(cls, view: HeteroData, schema: Schema) -> GraphSize:
        num_edges = {edge_type: int(view[edge_type].edge_index.size(1)) for edge_type in view.edge_types}
        return cls(num_nodes=num_nodes_of(view), num_edges=num_edges, schema=schema)

    @property
    def train_pairs(self) -> int:
        return self.num_edges.get(self.schema.interaction, 0)


@dataclass(frozen=True)
class Estimate:
    memory_bytes: int
    memory_parts: dict[str, int]
    work_units: float  # the time formula's units for the whole run
    epochs: int
    seconds: float | None  # None until a probe measured seconds per unit

    @property
    def memory_mb(self) -> float:
        return self.memory_bytes / 2**20


def _shape(config: ModelConfig, size: GraphSize, model) -> dict[str, int]:
    if not config.trainable:
        raise ValueError(f"config {config.name!r}: {config.model} does not train; nothing to estimate")
    node_types = getattr(model, "node_types", (size.schema.user, size.schema.item))
    return {
        "E": sum(size.num_edges.get(r, 0) for r in model.relations),
        "N": sum(size.num_nodes.get(t, 0) for t in node_types),
        "L": config.layers,
        "h": 1 if config.model == "lightgcn" else config.heads,
        "g": config.heads if config.model == "gat_enhanced" and config.transform else 1,  # sparse products per layer
        "d": config.embedding_dim,
        "B": min(config.positives_per_step(size.train_pairs), max(size.train_pairs, 1)),
        "n": config.negatives_per_positive,
        "U": size.num_nodes.get(size.schema.user, 0),
        "S": size.num_nodes.get(size.schema.item, 0),
    }


def memory_parts(config: ModelConfig, size: GraphSize, model) -> dict[str, int]:
    """The memory formula's terms in bytes, and their ``total``."""
    s = _shape(config, size, model)
    parts = {
        "state": BYTES * STATE_COPIES * model.parameter_count(),
        "activations": int(
            BYTES
            * s["L"]
            * (C_EDGE[config.model] * s["E"] * s["d"] * s["g"] + C_HEAD * s["E"] * s["h"] + C_NODE * s["N"] * s["d"])
        ),
        "batch": int(BYTES * C_BATCH * s["B"] * (2 + s["n"]) * s["d"]),
        "score_chunk": int(BYTES * C_SCORE * min(chunk_users(2048, s["S"]), s["U"]) * s["S"]),
        "indices": INDEX_BYTES * s["L"] * s["E"],
        "fixed": FIXED_BYTES,
    }
    parts["total"] = sum(parts.values())
    return parts


def work_units(config: ModelConfig, size: GraphSize, model, epochs: int) -> float:
    """The time formula's units for ``epochs`` epochs (see the module docstring)."""
    s = _shape(config, size, model)
    steps = config.steps_in_epoch(size.train_pairs)
    step = s["L"] * s["E"] * (s["d"] * s["g"] + s["h"]) + s["N"] * s["d"] + s["B"] * (2 + s["n"]) * s["d"] + STEP_UNITS
    validation = s["L"] * s["E"] * s["d"] * s["g"] + s["U"] * s["S"] * s["d"]
    return float(epochs * (steps * step + validation))


def estimate(
    config: ModelConfig, size: GraphSize, model=None, epochs: int | None = None, seconds_per_unit: float | None = None
) -> Estimate:
    """Memory and (with a probe's ``seconds_per_unit``) seconds of training ``config`` for
    ``epochs`` (default its max_epochs). ``model`` defaults to building it."""
    if not config.trainable:
        raise ValueError(f"config {config.name!r}: {config.model} does not train; nothing to estimate")
    model = model if model is not None else build_model(config, size.schema, size.num_nodes)
    epochs = epochs or config.max_epochs
    parts = memory_parts(config, size, model)
    units = work_units(config, size, model, epochs)
    seconds = units * seconds_per_unit if seconds_per_unit is not None else None
    return Estimate(memory_bytes=parts["total"], memory_parts=parts, work_units=units, epochs=epochs, seconds=seconds)


def calibrate_seconds(dataset, config: ModelConfig, graph: HeteroData, split: dict) -> float:
    """Seconds per work unit on this machine: one timed epoch of ``config`` on the chain's training
    part (the probe runs before a study's first trial; its weights are thrown away)."""
    started = time.perf_counter()
    model, _, view = dataset.fit(config, graph, split, max_epochs=1)
    return (time.perf_counter() - started) / work_units(config, GraphSize.of(view, dataset.schema), model, 1)
