"""Multi-process training (``world_size``): seconds per epoch at 1 and N processes, the speed-up,
and the test NDCG@10 of both.

    .venv/bin/python benchmarks/bench_ddp.py [--world default|tiny] [--config lightgcn]
        [--max-epochs 5] [--world-sizes 1,2]

Dagster-free, on the world of ``benchmarks/tune_spine_models.py`` (the generator's defaults, or the
tiny CI world) with its random 70/15/15 split. Each run trains the registry config with the simple
trainer for ``--max-epochs`` epochs (no validation, so an epoch's seconds are its optimizer steps
alone; the world_size > 1 runs include the torchrun start-up and job transfer in their total, not
in their per-epoch figure). The ranks train the same steps as one process (summed share-scaled
gradients, ``core/training/distributed.py``), so the test NDCG@10 must agree within
``TOLERANCE``. Every rank propagates over the full graph: only the loss part of a step is split,
so the speed-up of a full-graph model is bounded by the loss's share of a step, and on a box with
fewer free cores than ranks there is none.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_spine_models import WORLDS, build_graph, evaluate

from spotify_engine_assets.core.config import update_config
from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.training.trainer import train
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA, message_passing_graph
from spotify_engine_assets.datasets.listening.splits import SplitSettings, random_split

TOLERANCE = 0.005  # |test NDCG@10 (N processes) - test NDCG@10 (1 process)|: float summation order only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="default")
    parser.add_argument("--config", default="lightgcn", help="a listening registry config")
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--world-sizes", default="1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = build_graph(WORLDS[args.world])
    parts = labels_to_indices(random_split(data[LISTENS].edge_index[0].numpy(), SplitSettings()))
    view = message_passing_graph(data, parts["train"])
    edge_index = data[LISTENS].edge_index
    pairs = {part: edge_index[:, parts[part]] for part in ("train", "valid", "test")}
    base = DATASET.registry.base[args.config]
    print(
        f"world {args.world}: {data['user'].num_nodes} users, {data['song'].num_nodes} songs, "
        f"{pairs['train'].size(1)} training pairs; config {args.config}, {args.max_epochs} epochs, simple trainer, "
        f"1 torch thread per process",
        flush=True,
    )

    rows = []
    for world_size in (int(w) for w in args.world_sizes.split(",")):
        config = update_config(base, world_size=world_size, trainer="simple", max_epochs=args.max_epochs)
        model = build_model(config, SCHEMA, num_nodes_of(data))
        started = time.perf_counter()
        result = train(model, view, pairs["valid"], config)
        total = time.perf_counter() - started
        per_epoch = sum(row["train_seconds"] for row in result.history) / len(result.history)
        metrics = evaluate(model, view, pairs)
        rows.append((world_size, per_epoch, total, metrics["test"]["ndcg@10"], result.history[-1]["loss"]))
        print(
            f"world_size {world_size}: {per_epoch:.2f} s/epoch, {total:.1f} s total, "
            f"test NDCG@10 {metrics['test']['ndcg@10']:.4f}, last loss {result.history[-1]['loss']:.5f}",
            flush=True,
        )

    reference = rows[0]
    print("\n| world_size | s/epoch | speed-up | total s | test NDCG@10 | diff vs first |")
    print("|---|---|---|---|---|---|")
    for world_size, per_epoch, total, ndcg, _ in rows:
        print(
            f"| {world_size} | {per_epoch:.2f} | {reference[1] / per_epoch:.2f}x | {total:.1f} | {ndcg:.4f} | "
            f"{ndcg - reference[3]:+.4f} |"
        )
    worst = max(abs(ndcg - reference[3]) for *_, ndcg, _ in rows)
    print(
        f"\nlargest NDCG@10 difference {worst:.4f} (tolerance {TOLERANCE}): {'ok' if worst <= TOLERANCE else 'EXCEEDED'}"
    )
    if worst > TOLERANCE:
        sys.exit(1)


if __name__ == "__main__":
    main()
