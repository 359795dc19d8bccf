"""Optuna study throughput and outcome on the default synthetic data (Dagster-free).

    .venv/bin/python benchmarks/bench_hpo.py [--family lightgcn] [--trials 6] [--max-epochs 10]
        [--world default|tiny] [--storage URL] [--max-trial-memory-mb MB] [--max-trial-seconds S]

Builds the same world, graph and random split as the asset chain (``tune_spine_models.py``), runs
a fresh study of ``--trials`` trials of one family with the epoch cap (seeded TPE, median pruning
on validation Recall@10), and prints trials per hour and each trial's resource estimates
(``core/experiments/trial_budget.py``; the seconds estimate is calibrated by a one-epoch probe of the base
config, timed apart from the study) against its measured seconds; trials over a limit are pruned
before they train (graph families: closed-form ones such as itemknn, ease or genre_popularity
run without a probe or limits, with the same trial budget). Then the registry's default config of the family and the study's best config
are retrained with the same epoch cap and compared on validation and test: the test split is
scored once, after the study, for these two configs only (the study chose on validation). The
study goes to a fresh SQLite file in a temporary folder unless ``--storage`` names one. torch
runs on 1 thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_spine_models import WORLDS, build_graph, evaluate

from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.experiments import hpo, trial_budget
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import LISTENS
from spotify_engine_assets.datasets.listening.splits import SplitSettings, random_split


def scored(model, pairs: dict) -> dict[str, dict[str, float]]:
    """Validation and test NDCG/Recall@10 of a closed-form model (no embeddings: its scores), with
    the pairs each part must not recommend masked, as ``evaluate`` does for the graph models."""
    known = {"valid": pairs["train"], "test": torch.cat([pairs["train"], pairs["valid"]], dim=1)}
    return {part: DATASET.protocol.validate(model.score, known[part], pairs[part], model.num_items) for part in known}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="lightgcn")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=None, help="stop starting trials after N seconds")
    parser.add_argument("--world", choices=sorted(WORLDS), default="default")
    parser.add_argument("--storage", help="Optuna storage URL (default: a fresh temporary SQLite file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-trial-memory-mb", type=float, help="prune trials whose memory estimate exceeds this")
    parser.add_argument("--max-trial-seconds", type=float, help="prune trials whose time estimate exceeds this")
    args = parser.parse_args()
    torch.set_num_threads(1)

    space = hpo.get_space(DATASET, args.family)  # validates the search spaces before anything else
    storage = args.storage or f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench_hpo_')) / 'studies.db'}"
    study = hpo.open_study(DATASET, args.family, storage, seed=args.seed, study_name=f"bench/{args.family}")

    started = time.perf_counter()
    data = build_graph(WORLDS[args.world])
    parts = labels_to_indices(random_split(data[LISTENS].edge_index[0].numpy(), SplitSettings()))
    edge_index = data[LISTENS].edge_index
    pairs = {part: edge_index[:, parts[part]] for part in ("train", "valid", "test")}
    print(
        f"world {args.world}: {data['user'].num_nodes} users, {data['song'].num_nodes} songs, "
        f"{pairs['train'].size(1)} train pairs ({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    print(
        f"study {study.study_name!r} in {hpo.redact(storage)}; space {sorted(space.params)}; "
        f"{args.trials} trials, <= {args.max_epochs} epochs each",
        flush=True,
    )

    per_unit = None
    if space.base.trainable:  # closed-form families have no epochs to estimate (and no limits to apply)
        probe_started = time.perf_counter()
        per_unit = trial_budget.calibrate_seconds(DATASET, space.trial_config({}, f"{args.family}_probe"), data, parts)
        print(
            f"time probe: one epoch of {space.base.name} in {time.perf_counter() - probe_started:.1f} s "
            f"= {per_unit:.3g} s per work unit",
            flush=True,
        )
    limits = hpo.TrialLimits(args.max_trial_memory_mb, args.max_trial_seconds if per_unit else None, per_unit)

    before = len(study.trials)
    study_started = time.perf_counter()
    study_data = hpo.StudyData(DATASET, data, parts)
    hpo.run_study(
        study,
        space,
        study_data,
        args.trials,
        args.timeout,
        args.max_epochs,
        log=lambda message: print("  " + message, flush=True),
        limits=limits,
    )
    elapsed = time.perf_counter() - study_started
    trials = study.trials[before:]
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    print(
        f"\n{len(trials)} trials in {elapsed:.0f} s = {3600 * len(trials) / elapsed:.1f} trials/hour "
        f"({states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed; "
        f"{args.max_epochs}-epoch cap, 1 thread)"
    )
    print(
        f"best trial {study.best_trial.number}: {hpo.objective_name(DATASET)} {study.best_value:.4f} with {study.best_params}"
    )
    importances = hpo.param_importances(study)
    if importances:
        print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))

    print("\n| trial | state | epochs | est. memory MB | est. s | measured s | measured / est. s | pruned by |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for row in hpo.trials_table(study)[before:]:
        measured, estimated, epochs = row["seconds"], row["est_seconds"], row["epochs_run"]
        # the estimate is for the epoch cap: scale it to the epochs the trial ran before comparing
        scaled = estimated * epochs / min(args.max_epochs, space.base.max_epochs) if estimated and epochs else None
        if scaled and measured:
            ratios.append(measured / scaled)
        print(
            f"| {row['number']} | {row['state']} | {epochs} | {row['est_memory_mb']} | {estimated} | "
            f"{measured:.1f} | {f'{measured / scaled:.2f}' if scaled else '-'} | {row['pruned_by'] or '-'} |"
        )
    if ratios:
        ratios.sort()
        print(
            f"measured / estimated seconds (per epoch run): median {ratios[len(ratios) // 2]:.2f}, "
            f"range {ratios[0]:.2f}..{ratios[-1]:.2f} over {len(ratios)} trials"
        )

    columns = ["valid ndcg@10", "valid recall@10", "test ndcg@10", "test recall@10", "epochs", "train s"]
    print(f"\n| config (<= {args.max_epochs} epochs) | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, config in (
        ("default " + space.base.name, space.base),
        ("best " + args.family + "_tuned", hpo.best_config(study, space)),
    ):
        # as a trial: the chain's fit (training inputs from the training edges), early-stopped on validation
        epochs = {"max_epochs": min(args.max_epochs, config.max_epochs)} if config.trainable else {}
        model, result, view = DATASET.fit(config, data, parts, **epochs)
        metrics = evaluate(model, view, pairs) if config.trainable else scored(model, pairs)
        values = [
            metrics["valid"]["ndcg@10"],
            metrics["valid"]["recall@10"],
            metrics["test"]["ndcg@10"],
            metrics["test"]["recall@10"],
        ]
        cells = [f"{v:.4f}" for v in values] + [str(result.epochs_run), f"{result.seconds:.0f}"]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
