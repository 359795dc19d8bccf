"""Test NDCG@10 and coverage@10 per training-objective variant on the default synthetic data.

    .venv/bin/python benchmarks/bench_objectives.py [--configs gat_enhanced,gat_enhanced_neg4,...]
        [--world default|tiny] [--max-epochs N] [--seed S]

Dagster-free, the same world, graph and random 70/15/15 split as the asset chain. The configs are
the base models of ``configs/listening/models.yaml`` and the objective variants of
``configs/listening/variants.yaml``
(weighted BPR, several negatives per positive, gradient accumulation, regularizers, multi-task
heads, diversity / coverage surrogates, the simple trainer). Weighted variants get their
per-interaction weights, and multi-task variants their head labels, from the training listens edges
only (``training_inputs``). Each model is trained by its config's trainer
(advanced: early-stopped on validation Recall@10); test metrics rank all songs with the user's
training and validation songs masked, as the ``listening/metric_report`` asset does, and the task heads'
ROC AUC is measured on the test edges (``task_metrics``). torch runs on 1 thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotify_engine_assets.core.config import parse_config, update_config
from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.evaluation.metrics import ranking_metrics
from spotify_engine_assets.core.models import build_model, embed
from spotify_engine_assets.core.storage.paths import configs_dir
from spotify_engine_assets.core.training.inputs import task_labels, training_inputs
from spotify_engine_assets.core.training.losses import roc_auc, task_metrics
from spotify_engine_assets.core.training.trainer import train
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.generator import GeneratorSettings, generate_world
from spotify_engine_assets.datasets.listening.graph import (
    LISTENS,
    SCHEMA,
    graph_from_world,
    message_passing_graph,
)
from spotify_engine_assets.datasets.listening.splits import SplitSettings, random_split

WORLDS = {
    "default": GeneratorSettings(),
    "tiny": GeneratorSettings(users=150, songs=600, artists=60, genres=10, days=14, seed=7),
}


def fit_most_popular(view):
    """Most-popular (songs ranked by training listeners) fitted on ``view``: the reference."""
    config = parse_config({"name": "most_popular", "model": "most_popular"})
    return build_model(config, SCHEMA, num_nodes_of(view)).prepare(view)


def test_metrics(model, view, pairs) -> dict[str, float]:
    user, song = embed(model, view)
    exclude = torch.cat([pairs["train"], pairs["valid"]], dim=1)
    return ranking_metrics(user, song, pairs["test"], exclude, ks=(10,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs",
        default="",
        help="comma-separated names (default: both bases and every variant); "
        "'vs base' needs the base (gat_enhanced / lightgcn) listed before its variants",
    )
    parser.add_argument("--world", choices=sorted(WORLDS), default="default")
    parser.add_argument("--max-epochs", type=int, help="cap epochs for every config")
    parser.add_argument("--seed", type=int, help="override every config's seed")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    variants = DATASET.registry.load(configs_dir() / "listening" / "variants.yaml")
    registry = {**DATASET.registry.base, **variants}
    names = [n for n in args.configs.split(",") if n] or [
        "gat_enhanced",
        *[n for n in variants if n.startswith("gat")],
        "lightgcn",
        *[n for n in variants if n.startswith("lightgcn")],
    ]
    started = time.perf_counter()
    data = graph_from_world(generate_world(WORLDS[args.world]))
    parts = labels_to_indices(random_split(data[LISTENS].edge_index[0].numpy(), SplitSettings()))
    view = message_passing_graph(data, parts["train"])
    edge_index = data[LISTENS].edge_index
    pairs = {part: edge_index[:, parts[part]] for part in ("train", "valid", "test")}
    print(
        f"world {args.world}: {data['user'].num_nodes} users, {data['song'].num_nodes} songs, "
        f"{pairs['train'].size(1)}/{pairs['valid'].size(1)}/{pairs['test'].size(1)} train/valid/test pairs "
        f"({time.perf_counter() - started:.1f} s); max_epochs {args.max_epochs or 'per config'}",
        flush=True,
    )

    reference = test_metrics(fit_most_popular(view), view, pairs)
    header = (
        "| config | test ndcg@10 | test recall@10 | test coverage@10 | vs base ndcg | vs base coverage | "
        "test auc complete | test auc repeat | epochs | best | s/epoch | train s |"
    )
    # reference AUCs for the task heads: the song's training popularity as the score
    popularity = torch.bincount(pairs["train"][1], minlength=data["song"].num_nodes).float()[pairs["test"][1]]
    listens = data[LISTENS]
    popular_auc = [
        roc_auc(popularity, listens.mean_completion[parts["test"]] >= 0.8),
        roc_auc(popularity, listens.play_count[parts["test"]] >= 2),
    ]
    rows = [
        header,
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| most_popular | {reference['ndcg@10']:.4f} | {reference['recall@10']:.4f} | {reference['coverage@10']:.4f} "
        f"| | | {popular_auc[0]:.4f} | {popular_auc[1]:.4f} | | | | |",
    ]
    print(rows[-1], flush=True)
    base: dict[str, dict[str, float]] = {}
    for name in names:
        config = registry[name]
        if args.seed is not None:
            config = update_config(config, seed=args.seed)
        inputs = training_inputs(config, data, SCHEMA, parts["train"])
        model = build_model(config, SCHEMA, num_nodes_of(data))
        log = (lambda message, n=name: print(f"  {n}: {message}", flush=True)) if args.verbose else None
        result = train(model, view, pairs["valid"], config, max_epochs=args.max_epochs, log=log, **inputs)
        metrics = test_metrics(model, view, pairs)
        test_labels = task_labels(config, data, SCHEMA, parts["test"])  # from the test edges' own attributes
        aucs = {task: values["auc"] for task, values in task_metrics(model, config, test_labels, pairs["test"]).items()}
        if name == config.model:  # the base model of a family (configs/models.yaml)
            base[config.model] = metrics
        ratios = [
            f"{metrics[m] / base[config.model][m]:.3f}x" if config.model in base else "-"
            for m in ("ndcg@10", "coverage@10")
        ]
        shown = [f"{aucs[task]:.4f}" if aucs.get(task) is not None else "-" for task in ("complete", "repeat")]
        rows.append(
            f"| {name} | {metrics['ndcg@10']:.4f} | {metrics['recall@10']:.4f} | {metrics['coverage@10']:.4f} | "
            f"{ratios[0]} | {ratios[1]} | {shown[0]} | {shown[1]} | {result.epochs_run} | {result.best_epoch} | "
            f"{result.seconds / max(result.epochs_run, 1):.1f} | {result.seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    print(
        "(most_popular's AUCs score each test edge by its song's training popularity: the reference for the task "
        "heads, with the default thresholds completion >= 0.8 and plays >= 2)"
    )


if __name__ == "__main__":
    main()
