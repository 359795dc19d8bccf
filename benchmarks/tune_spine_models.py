"""Train model configs on the default synthetic data and print validation (and test) metrics.

    .venv/bin/python benchmarks/tune_spine_models.py [--configs most_popular,lightgcn,gat_basic,gat_enhanced]
        [--registry extra.yaml] [--world default|tiny] [--max-epochs N] [--seeds 0,1] [--test]

Dagster-free: builds the same world, graph and random 70/15/15 split as the asset chain (the
generator's defaults, or the tiny CI world with ``--world tiny``), trains each config with the
library harness and scores it with the library metrics. Validation metrics rank all songs with
the user's training songs masked; test metrics (printed only with ``--test``) mask training and
validation songs, as the ``listening/metric_report`` asset does. Tuning decisions are meant to be made on
the validation columns only.

``--registry`` adds the configs of another YAML file (same schema as ``configs/listening/models.yaml``) to
the registry, for trying candidates without touching it. ``--seeds`` retrains each config with
other seeds (``seed`` field) and prints one row per seed plus the mean. torch runs on 1 thread.
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
    # configs/run/tiny_data.yaml
    "tiny": GeneratorSettings(users=150, songs=600, artists=60, genres=10, days=14, seed=7),
}
TINY_MAX_EPOCHS = 30  # configs/run/tiny_train.yaml


def build_graph(settings: GeneratorSettings):
    return graph_from_world(generate_world(settings))


def fit_most_popular(view):
    """Most-popular (songs ranked by training listeners) fitted on ``view``: the reference."""
    config = parse_config({"name": "most_popular", "model": "most_popular"})
    return build_model(config, SCHEMA, num_nodes_of(view)).prepare(view)


def evaluate(model, view, pairs) -> dict[str, dict[str, float]]:
    user, song = embed(model, view)
    valid = ranking_metrics(user, song, pairs["valid"], pairs["train"], ks=(10,))
    test = ranking_metrics(user, song, pairs["test"], torch.cat([pairs["train"], pairs["valid"]], dim=1), ks=(10,))
    return {"valid": valid, "test": test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="most_popular,lightgcn,gat_basic,gat_enhanced")
    parser.add_argument("--registry", type=Path, help="extra YAML of candidate configs")
    parser.add_argument("--world", choices=sorted(WORLDS), default="default")
    parser.add_argument("--max-epochs", type=int, help="cap epochs (the tiny world defaults to the CI cap of 30)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: each config's own)")
    parser.add_argument("--test", action="store_true", help="also print test metrics")
    parser.add_argument("--verbose", action="store_true", help="log every epoch")
    args = parser.parse_args()
    torch.set_num_threads(1)

    registry = dict(DATASET.registry.base)
    if args.registry:
        registry.update(DATASET.registry.load(args.registry))
    max_epochs = args.max_epochs or (TINY_MAX_EPOCHS if args.world == "tiny" else None)

    started = time.perf_counter()
    data = build_graph(WORLDS[args.world])
    parts = labels_to_indices(random_split(data[LISTENS].edge_index[0].numpy(), SplitSettings()))
    view = message_passing_graph(data, parts["train"])
    edge_index = data[LISTENS].edge_index
    pairs = {part: edge_index[:, parts[part]] for part in ("train", "valid", "test")}
    print(
        f"world {args.world}: {data['user'].num_nodes} users, {data['song'].num_nodes} songs, "
        f"{pairs['train'].size(1)}/{pairs['valid'].size(1)}/{pairs['test'].size(1)} train/valid/test pairs "
        f"({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    reference = evaluate(fit_most_popular(view), view, pairs)

    columns = ["valid ndcg@10", "valid recall@10", "valid cov@10"]
    if args.test:
        columns += ["test ndcg@10", "test recall@10", "test cov@10"]
    columns += ["vs mp (valid)"] + (["vs mp (test)"] if args.test else []) + ["epochs", "best", "train s", "cpu s"]
    header = f"| {'config':<24} | " + " | ".join(columns) + " |"
    rows = [header, "|" + "|".join("-" * (len(c) + 2) for c in [f"{'config':<24}"] + columns) + "|"]
    print(header, flush=True)

    def row(name: str, metrics: dict, epochs: str, best: str, seconds: str, cpu: str = "") -> str:
        values = [metrics["valid"]["ndcg@10"], metrics["valid"]["recall@10"], metrics["valid"]["coverage@10"]]
        if args.test:
            values += [metrics["test"]["ndcg@10"], metrics["test"]["recall@10"], metrics["test"]["coverage@10"]]
        ratios = [metrics["valid"]["ndcg@10"] / reference["valid"]["ndcg@10"]]
        if args.test:
            ratios.append(metrics["test"]["ndcg@10"] / reference["test"]["ndcg@10"])
        cells = [f"{v:.4f}" for v in values] + [f"{r:.2f}x" for r in ratios] + [epochs, best, seconds, cpu]
        return f"| {name:<24} | " + " | ".join(f"{c:>{len(h)}}" for c, h in zip(cells, columns)) + " |"

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for name in args.configs.split(","):
        config = registry[name]
        if not config.trainable:
            line = row(name, reference, "0", "0", "0", "0")
            print(line, flush=True)
            rows.append(line)
            continue
        runs = []
        for seed in seeds or [config.seed]:
            cfg = update_config(config, seed=seed)
            model = build_model(cfg, SCHEMA, num_nodes_of(data))
            cpu_started = time.process_time()
            log = (lambda message, name=name: print(f"  {name}: {message}", flush=True)) if args.verbose else None
            result = train(model, view, pairs["valid"], cfg, max_epochs=max_epochs, log=log)
            cpu = time.process_time() - cpu_started
            metrics = evaluate(model, view, pairs)
            runs.append(metrics)
            label = name if not seeds else f"{name} s{seed}"
            line = row(
                label, metrics, str(result.epochs_run), str(result.best_epoch), f"{result.seconds:.0f}", f"{cpu:.0f}"
            )
            print(line, flush=True)
            rows.append(line)
        if len(runs) > 1:
            mean = {
                part: {m: sum(r[part][m] for r in runs) / len(runs) for m in ("ndcg@10", "recall@10", "coverage@10")}
                for part in ("valid", "test")
            }
            line = row(f"{name} mean", mean, "", "", "")
            print(line, flush=True)
            rows.append(line)
    print("\n" + "\n".join(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
