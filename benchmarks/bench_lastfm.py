"""Last.fm 2K benchmark: every config of configs/lastfm/models.yaml on the fixed split.

    .venv/bin/python benchmarks/bench_lastfm.py            # final table: fit on train.tsv, test once
    .venv/bin/python benchmarks/bench_lastfm.py --tune     # validation search (cut of train.tsv only)
    .venv/bin/python benchmarks/bench_lastfm.py --only ease,lightgcn

The default run fits each registered config (hyperparameters and, for trainable models, epoch
counts picked on validation) on all of train.tsv and scores test.tsv once with the data README's
protocol. ``--tune`` never reads test.tsv figures: it fits on the validation cut's training part,
scores the validation part, and prints every grid point and the best per model. Both go through
the same core as the assets: ``DATASET.fit`` (the one trainer) and the chain's protocol.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotify_engine_assets.core.config import update_config
from spotify_engine_assets.datasets.lastfm import DATASET
from spotify_engine_assets.datasets.lastfm import data as lastfm
from spotify_engine_assets.datasets.lastfm.graph import graph_and_split

COLUMNS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage@20")
REFERENCE = {"ease": {"ndcg@20": 0.2756, "recall@20": 0.2713}, "als": {"ndcg@20": 0.2747, "recall@20": 0.2766}}

# Validation grids (around each registry entry; the trainable models early-stop on validation).
# Field names are those of core/config.py.
GRIDS: dict[str, dict[str, list] | list[dict]] = {
    "most_popular": {},
    "itemknn": {"shrink": [0, 5, 10, 20, 50, 200]},
    "ease": {"lam": [50, 100, 200, 400, 800]},
    "als": {"factors": [32, 64, 128], "regularization": [0.01, 0.1, 1.0], "alpha": [5, 10, 20, 40]},
    "graph_ease": {"lam": [100, 200], "side_weight": [2, 3, 5], "friend_weight": [0.0]},
    # trainable models: explicit variants (each early-stopped on validation), CPU time being scarce
    "lightgcn": [{"num_layers": 2}, {"num_layers": 3}],
    "tag_friend_gat": [{"num_layers": 2}, {"num_layers": 2, "use_categories": False, "use_social": False}],
    "gat_listens_only": [{}],  # the second tag_friend_gat variant above, registered on its own
}


TUNE_MAX_EPOCHS = {"lightgcn": 80, "tag_friend_gat": 50}


TUNED_FIELDS = (
    "shrink",
    "lam",
    "factors",
    "regularization",
    "alpha",
    "side_weight",
    "friend_weight",
    "num_layers",
    "use_categories",
    "use_social",
    "max_epochs",
    "best_epoch",
)


def describe(config: dict) -> str:
    return ", ".join(f"{k}={config[k]}" for k in TUNED_FIELDS if k in config)


def evaluate(config, graph, split: dict, stage: str) -> tuple[dict, object, float]:
    """``valid``: fit on the validation cut's training part (graph models early-stop on validation),
    score validation; ``test``: the registry's final fit on all of train.tsv, score test.tsv once."""
    if stage == "valid":
        changes = {"train_on_validation": False, **({"trainer": "advanced"} if config.trainable else {})}
        config = update_config(config, **changes)
    model, result, _ = DATASET.fit(config, graph, split)
    known = DATASET.pairs(graph, DATASET.training_index(split, config))
    heldout = DATASET.pairs(graph, split["valid" if stage == "valid" else "test"])
    metrics = DATASET.protocol.validate(model.score, known, heldout, int(graph["artist"].num_nodes))
    return metrics, result, result.seconds


def row(name: str, config: dict, metrics: dict, seconds: float) -> str:
    values = " | ".join(f"{metrics[c]:.4f}" for c in COLUMNS)
    return f"| {name} | {values} | {seconds:.1f} | {describe(config)} |"


def header() -> str:
    names = " | ".join(c.replace("@", "@") for c in COLUMNS)
    return f"| model | {names} | train s | hyperparameters |\n|---|{'---|' * len(COLUMNS)}---|---|"


def tune(registry: dict, graph, split: dict, only: set[str] | None) -> None:
    print("## validation search (fit on the validation cut's training part, scored on validation)\n")
    print(header())
    best_rows = []
    for name, base in registry.items():
        if only and name not in only:
            continue
        grid = GRIDS.get(name, GRIDS.get(base.model, {}))
        if isinstance(grid, list):
            variants = grid
        else:
            keys = list(grid)
            variants = (
                [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] if keys else [{}]
            )
        best = None
        for variant in variants:
            if base.trainable:  # early stopping on validation picks the epoch count
                variant = {**variant, "max_epochs": TUNE_MAX_EPOCHS.get(base.model, 100)}
            config = update_config(base, **variant)
            metrics, fitted, seconds = evaluate(config, graph, split, "valid")
            shown = {**config.model_dump(), **({"best_epoch": fitted.best_epoch} if config.trainable else {})}
            line = row(name, shown, metrics, seconds)
            print(line, flush=True)
            if best is None or metrics["ndcg@20"] > best[0]:
                best = (metrics["ndcg@20"], line)
        best_rows.append(best[1])
    print("\n## best per model on validation (NDCG@20)\n")
    print(header())
    print("\n".join(best_rows))


def final(registry: dict, graph, split: dict, only: set[str] | None) -> None:
    print(
        "## test (fit on all of train.tsv, test.tsv scored once; all 17,632 artists ranked, training artists masked)\n"
    )
    print(header())
    results = {}
    for name, config in registry.items():
        if only and name not in only:
            continue
        metrics, _, seconds = evaluate(config, graph, split, "test")
        results[name] = metrics
        print(row(name, config.model_dump(), metrics, seconds), flush=True)
    print()
    for name, metrics in results.items():
        if registry[name].model in ("most_popular", "itemknn", "ease", "als"):
            continue
        beats = all(metrics[m] > max(REFERENCE[r][m] for r in REFERENCE) for m in ("ndcg@20", "recall@20"))
        print(
            f"{name}: NDCG@20 {metrics['ndcg@20']:.5f}, Recall@20 {metrics['recall@20']:.5f}; beats the reference "
            f"tuned EASE and ALS (NDCG@20 > 0.2756 and Recall@20 > 0.2766): {'yes' if beats else 'no'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tune", action="store_true", help="validation search instead of the test table")
    parser.add_argument("--only", default="", help="comma-separated config names")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not lastfm.available():
        sys.exit(f"Last.fm 2K data not found at {lastfm.data_dir()} / {lastfm.split_dir()}")
    start = time.perf_counter()
    graph, splits = graph_and_split(lastfm.load_dataset())
    registry = DATASET.registry.base
    only = {n for n in args.only.split(",") if n} or None
    (tune if args.tune else final)(registry, graph, splits["fixed"], only)
    print(f"\ntotal {time.perf_counter() - start:.0f} s, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
