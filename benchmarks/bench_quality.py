"""Model quality over several splits and data seeds, for the three chains: is the best graph model at
least as good as the best simple baseline, on every scenario and on average, and how sure is that?

    .venv/bin/python benchmarks/bench_quality.py --chain listening|lastfm|playlists
        [--only a,b,c] [--registry extra.yaml] [--scenarios 0,2|NAME,...] [--max-epochs N]
        [--json out.json [--resume]]

Scenarios (each one graph and one train / validation / test split; graph models early-stop on the
validation part, never on test; ``train_on_validation`` configs make their final fit on train +
validation and score test once, as in the registry):

* listening: the generated world at generator seeds 42 (today's default world, ``GeneratorSettings()``),
  43 and 44, each with the chain's random per-user 70/15/15 split (``SplitSettings()``, split seed 0).
* lastfm: ``fixed`` (train.tsv / test.tsv, validation cut from train.tsv), ``seed1`` .. ``seed5``
  (the same per-user 80/20 recipe over all user-artist pairs with seeds 1..5, validation cut from
  each training part) and ``longtail`` (the top 1 % of artists by listeners, 177 artists with 31.6 %
  of the pairs, removed from the catalogue, then the recipe with seed 0):
  ``spotify_engine_assets/datasets/lastfm/splits.py``.
* playlists: the chain's default data (Kaggle-format files from a generated world, min playlist
  size 5, k-core 2, position holdout 2) from the worlds of generator seeds 42 (the default), 43 and
  44; the position holdout has no seed, so the data seed is what varies.

Every config is fitted with ``DATASET.fit`` and scored with the metric report's code
(``core/evaluation/report.evaluate``, beyond-accuracy category diversity left out) on the test
part: the chain's primary metric (listening NDCG@10, Last.fm NDCG@20, playlists R-precision) per
user, two secondary metrics, fit seconds. Then per config the mean +- std over scenarios, and the
best graph model (``config.trainable``) against the best simple baseline (not trainable), both
chosen by mean primary metric: per-scenario differences with per-user paired t-tests (Holm over
scenarios), a paired t-test and the sign count over the scenario means, and paired t / Wilcoxon
tests over users pooled across scenarios (``core/evaluation/stats.py``).

``--json`` saves every scenario's per-config results (and per-user primary values) after each fit;
``--resume`` reuses those whose config, epoch cap and chain match, so an interrupted run continues
and runs of several ``--only`` subsets add up in one file (one process per file at a time).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.dataset import Dataset
from spotify_engine_assets.core.evaluation import stats
from spotify_engine_assets.core.evaluation.report import evaluate
from spotify_engine_assets.datasets.lastfm import data as lastfm_data
from spotify_engine_assets.datasets.lastfm import graph as lastfm_graph
from spotify_engine_assets.datasets.lastfm import splits as lastfm_splits
from spotify_engine_assets.datasets.listening.generator import GeneratorSettings, generate_world

WORLD_SEEDS = (42, 43, 44)  # 42: GeneratorSettings().seed, the default world
LASTFM_SEEDS = (1, 2, 3, 4, 5)
SECONDARY = {
    "listening": ("recall@10", "coverage@10"),
    "lastfm": ("recall@20", "ndcg@10"),
    "playlists": ("ndcg@10", "recall@50"),
}
FOCUS = {"listening": "gat_enhanced"}  # also reported against the best category_popularity config
ALPHA = 0.05


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[[], tuple]  # -> (graph, parts): one split's {"train", "valid", "test"}


def checked(dataset: Dataset, graph, parts: dict, strategy: str) -> tuple:
    leaks = {k: v for k, v in dataset.split_violations(graph, {strategy: parts}).items() if v}
    if leaks:
        raise SystemExit(f"leakage check failed: {leaks}")
    return graph, parts


# ------------------------------------------------------------------------------ scenarios


def listening_scenarios() -> tuple[Dataset, list[Scenario]]:
    from spotify_engine_assets.datasets.listening import DATASET
    from spotify_engine_assets.datasets.listening.graph import LISTENS, graph_from_world
    from spotify_engine_assets.datasets.listening.splits import SplitSettings, random_split

    def build(seed: int) -> tuple:
        graph = graph_from_world(generate_world(GeneratorSettings(seed=seed)))
        parts = labels_to_indices(random_split(graph[LISTENS].edge_index[0].numpy(), SplitSettings()))
        return checked(DATASET, graph, parts, "random")

    default = GeneratorSettings().seed
    return DATASET, [
        Scenario(
            f"world{seed}",
            f"generated world, generator seed {seed}{' (default)' if seed == default else ''}, "
            "random 70/15/15 split seed 0",
            functools.partial(build, seed),
        )
        for seed in WORLD_SEEDS
    ]


def lastfm_scenarios() -> tuple[Dataset, list[Scenario]]:
    from spotify_engine_assets.datasets.lastfm import DATASET

    if not lastfm_data.available():
        raise SystemExit(f"Last.fm 2K data not found at {lastfm_data.data_dir()} / {lastfm_data.split_dir()}")
    whole = functools.cache(lambda: lastfm_graph.build_graph(lastfm_data.load_dataset()))

    def fixed() -> tuple:
        return checked(DATASET, whole(), lastfm_graph.fixed_split(whole())["fixed"], "fixed")

    def random(seed: int) -> tuple:
        return checked(DATASET, whole(), lastfm_splits.random_split(whole(), seed)["random"], "random")

    def long_tail() -> tuple:
        graph, _ = lastfm_splits.long_tail_graph(whole())
        return checked(DATASET, graph, lastfm_splits.random_split(graph, 0)["random"], "random")

    return DATASET, [
        Scenario("fixed", "the fixed split (train.tsv / test.tsv), validation cut from train.tsv", fixed),
        *[
            Scenario(
                f"seed{seed}",
                f"per-user random 80/20 split, seed {seed}, validation cut from its training part",
                functools.partial(random, seed),
            )
            for seed in LASTFM_SEEDS
        ],
        Scenario(
            "longtail",
            f"top {lastfm_splits.HEAD_FRACTION:.0%} artists by listeners dropped from the catalogue, "
            "per-user random 80/20 split seed 0",
            long_tail,
        ),
    ]


def playlist_scenarios() -> tuple[Dataset, list[Scenario]]:
    from bench_playlists import default_data, prepare, warehouse_from

    from spotify_engine_assets.datasets.playlists import DATASET
    from spotify_engine_assets.datasets.playlists import graph as P

    def build(seed: int) -> tuple:
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):  # counts: progress
            con, _ = warehouse_from(*default_data(Path(folder), seed))
            prepared = prepare(con, P.GraphSettings(5, 2), P.SplitSettings(2, 3))  # checks leakage
        if isinstance(prepared, str):
            raise SystemExit(f"playlist data of world seed {seed}: {prepared}")
        return prepared["data"], prepared["split"]

    default = GeneratorSettings().seed
    return DATASET, [
        Scenario(
            f"world{seed}",
            f"default playlist data from the world of generator seed {seed}"
            f"{' (default)' if seed == default else ''}, position holdout 2",
            functools.partial(build, seed),
        )
        for seed in WORLD_SEEDS
    ]


CHAINS = {"listening": listening_scenarios, "lastfm": lastfm_scenarios, "playlists": playlist_scenarios}


def select_scenarios(scenarios: list[Scenario], wanted: str) -> list[Scenario]:
    if not wanted:
        return scenarios
    names = {s.name: s for s in scenarios}
    chosen = []
    for token in (t.strip() for t in wanted.split(",") if t.strip()):
        if token.isdigit() and int(token) < len(scenarios):
            chosen.append(scenarios[int(token)])
        elif token in names:
            chosen.append(names[token])
        else:
            raise SystemExit(f"unknown scenario {token!r}: indices 0..{len(scenarios) - 1} or {', '.join(names)}")
    return list(dict.fromkeys(chosen))


# ------------------------------------------------------------------------------ fitting and scoring


def kind_of(config) -> str:
    """``graph`` (trainable), ``graph+<model>`` (trainable, scores fused with a closed-form model's)
    or ``baseline``."""
    if not config.trainable:
        return "baseline"
    fusion = getattr(config, "fusion", None)
    if fusion is not None:
        return f"graph+{fusion.model}"
    return "graph+itemknn" if getattr(config, "itemknn_fusion", False) else "graph"


def run_config(
    dataset: Dataset, config, graph, parts: dict, max_epochs: int | None, secondary: tuple[str, ...]
) -> dict:
    """Fit ``config`` on ``parts`` (the registry's semantics) and score its test part."""
    training = {}
    if config.trainable and max_epochs:
        training["max_epochs"] = min(max_epochs, config.max_epochs)
    model, result, _ = dataset.fit(config, graph, parts, **training)
    protocol = dataset.protocol.for_graph(graph)
    data = dataclasses.replace(dataset.evaluation_data(graph, parts, config), categories={})
    started = time.perf_counter()
    with torch.no_grad():
        evaluation = evaluate(model.score, None, data, protocol)
    summary = evaluation.summary
    return {
        "config": config.model_dump(mode="json"),
        "kind": kind_of(config),
        "fit_seconds": round(result.seconds, 2),
        "eval_seconds": round(time.perf_counter() - started, 2),
        "epochs": f"{result.best_epoch}/{result.epochs_run}" if config.trainable else "",
        "metrics": {m: summary[m] for m in (protocol.primary, *secondary) if m in summary},
        "users_evaluated": int(summary["users_evaluated"]),
        "users": evaluation.per_user["user_index"].to_list(),
        "per_user": [round(float(v), 6) for v in evaluation.per_user[protocol.primary].to_list()],
    }


def save(path: Path, payload: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload))
    os.replace(temporary, path)


# ------------------------------------------------------------------------------ tables and tests


def fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if value == value else "-"


def scenario_table(name: str, description: str, results: dict, primary: str, secondary: tuple[str, ...]) -> str:
    lines = [
        f"### {name}: {description}\n",
        f"| config | kind | {primary} | {' | '.join(secondary)} | users | epochs | fit s |",
        f"|---|---|---|{'---|' * len(secondary)}---|---|---|",
    ]
    for config, r in sorted(results.items(), key=lambda item: -item[1]["metrics"][primary]):
        cells = " | ".join(fmt(r["metrics"].get(m, float("nan"))) for m in secondary)
        lines.append(
            f"| {config} | {r['kind']} | {fmt(r['metrics'][primary])} | {cells} | {r['users_evaluated']} | "
            f"{r['epochs']} | {r['fit_seconds']:.1f} |"
        )
    return "\n".join(lines)


def paired_users(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-user primary values of two results on their common users."""
    values_a, values_b = dict(zip(a["users"], a["per_user"])), dict(zip(b["users"], b["per_user"]))
    common = sorted(set(values_a) & set(values_b))
    return np.array([values_a[u] for u in common]), np.array([values_b[u] for u in common])


def sign_test(wins: int, losses: int) -> float:
    return float(scipy_stats.binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0


def comparison(results: dict[str, dict], names: list[str], treatment: str, control: str, primary: str) -> list[str]:
    """``treatment`` against ``control``: per scenario, over scenario means, over pooled users."""
    lines = [
        f"| scenario | {control} | {treatment} | difference | users | t p | t p (Holm) | Wilcoxon p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_scenario, pooled_c, pooled_t = [], [], []
    for name in names:
        c, t = paired_users(results[name][control], results[name][treatment])
        pooled_c.append(c)
        pooled_t.append(t)
        per_scenario.append(
            (
                name,
                results[name][control]["metrics"][primary],
                results[name][treatment]["metrics"][primary],
                stats.paired_test(c, t, n_resamples=200),
            )
        )
    adjusted = stats.holm([test["t_p"] for *_, test in per_scenario])
    for (name, mc, mt, test), p_holm in zip(per_scenario, adjusted):
        lines.append(
            f"| {name} | {fmt(mc)} | {fmt(mt)} | {mt - mc:+.4f} | {test['n']} | {test['t_p']:.3g} | "
            f"{p_holm:.3g} | {test['wilcoxon_p']:.3g} |"
        )
    means_c = np.array([mc for _, mc, _, _ in per_scenario])
    means_t = np.array([mt for _, _, mt, _ in per_scenario])
    diff = means_t - means_c
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    lines.append("")
    lines.append(
        f"- mean {primary}: {treatment} {fmt(means_t.mean())} vs {control} {fmt(means_c.mean())}, "
        f"difference {diff.mean():+.4f} (ratio {means_t.mean() / means_c.mean():.3f}); {treatment} better in "
        f"{wins} of {len(names)} scenarios ({losses} worse); exact sign test p {sign_test(wins, losses):.3g}"
    )
    if len(names) >= 2:
        over_scenarios = stats.paired_test(means_c, means_t, n_resamples=500)
        lines.append(
            f"- paired t-test over the {len(names)} scenario means: t {over_scenarios['t_stat']:.2f}, "
            f"p {over_scenarios['t_p']:.3g} -> {stats.verdict(over_scenarios['t_p'], diff.mean(), ALPHA)}"
        )
    else:
        over_scenarios = {"t_p": 1.0}
        lines.append("- paired t-test over scenario means: needs at least 2 scenarios")
    c_all, t_all = np.concatenate(pooled_c), np.concatenate(pooled_t)
    users = stats.paired_test(c_all, t_all, n_resamples=500)
    lines.append(
        f"- paired tests over {users['n']} (scenario, user) pairs pooled: mean difference {users['mean_diff']:+.4f} "
        f"(95% bootstrap CI {users['ci_low']:+.4f} .. {users['ci_high']:+.4f}), t p {users['t_p']:.3g}, "
        f"Wilcoxon p {users['wilcoxon_p']:.3g} -> {stats.verdict(users['t_p'], users['mean_diff'], ALPHA)} "
        "(a user recurs across scenarios: the pooled pairs are not independent, read with the scenario test)"
    )
    every = wins == len(names)
    holds = diff.mean() >= 0
    scenario_level = stats.verdict(over_scenarios["t_p"], diff.mean(), ALPHA) if len(names) >= 2 else "n/a (1 scenario)"
    lines.append(
        f"- **verdict**: {treatment} {'>=' if holds else '<'} {control} on mean {primary} ({diff.mean():+.4f}); "
        f"{'wins every scenario' if every else f'wins {wins} of {len(names)} scenarios'}; scenario-level t-test: "
        f"{scenario_level}; user-level t-test: {stats.verdict(users['t_p'], users['mean_diff'], ALPHA)} (alpha {ALPHA})"
    )
    return lines


def summary_report(chain: str, results: dict[str, dict], names: list[str], configs: list[str], primary: str) -> str:
    """Mean +- std per config, and the best graph model against the best simple baseline."""
    complete = [c for c in configs if all(c in results[n] for n in names)]
    missing = [c for c in configs if c not in complete]
    rows = []
    for config in complete:
        values = np.array([results[n][config]["metrics"][primary] for n in names])
        std = values.std(ddof=1) if values.size > 1 else 0.0
        kind = results[names[0]][config]["kind"]
        rows.append(
            (
                config,
                kind,
                values.mean(),
                std,
                values.min(),
                values.max(),
                float(np.mean([results[n][config]["fit_seconds"] for n in names])),
            )
        )
    rows.sort(key=lambda row: -row[2])
    lines = [
        f"## Summary over {len(names)} scenarios ({', '.join(names)}): {primary}\n",
        f"| config | kind | mean {primary} | std | min | max | mean fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c} | {k} | {fmt(m)} | {fmt(s)} | {fmt(lo)} | {fmt(hi)} | {sec:.1f} |" for c, k, m, s, lo, hi, sec in rows
    ]
    if missing:
        lines.append(f"\n(not in every scenario, left out: {', '.join(missing)})")
    graphs = [row for row in rows if row[1] != "baseline"]
    baselines = [row for row in rows if row[1] == "baseline"]
    if not graphs or not baselines:
        lines.append(
            "\nNo graph-model vs baseline comparison: the run needs at least one trainable and one "
            "non-trainable config."
        )
        return "\n".join(lines)
    best_graph, best_baseline = graphs[0][0], baselines[0][0]
    lines.append(f"\n## Best graph model ({best_graph}) vs best simple baseline ({best_baseline}), by mean {primary}\n")
    lines.append("(both chosen by their mean test metric over these scenarios)\n")
    lines += comparison(results, names, best_graph, best_baseline, primary)
    unfused = [row for row in graphs if row[1] == "graph"]
    if graphs[0][1] != "graph" and unfused:
        lines.append(f"\n### Best graph model without score fusion ({unfused[0][0]}) vs {best_baseline}\n")
        lines += comparison(results, names, unfused[0][0], best_baseline, primary)
    focus = FOCUS.get(chain)
    heuristics = [row for row in baselines if results[names[0]][row[0]]["config"]["model"] == "category_popularity"]
    if focus in complete and heuristics:
        lines.append(f"\n### {focus} vs the best category-popularity heuristic ({heuristics[0][0]})\n")
        if (focus, heuristics[0][0]) == (best_graph, best_baseline):
            lines.append("The same pair as above.")
        else:
            lines += comparison(results, names, focus, heuristics[0][0], primary)
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", choices=sorted(CHAINS), required=True)
    parser.add_argument("--only", default="", help="comma-separated config names (default: every registry config)")
    parser.add_argument(
        "--registry", type=Path, help="a YAML of extra configs (the models.yaml schema) added to the registry"
    )
    parser.add_argument("--scenarios", default="", help="comma-separated scenario indices or names (default: all)")
    parser.add_argument("--max-epochs", type=int, help="cap every graph model's epochs (quick runs only)")
    parser.add_argument("--json", type=Path, help="save every per-scenario, per-config result here")
    parser.add_argument("--resume", action="store_true", help="reuse the matching results already in --json")
    parser.add_argument(
        "--focus",
        help=f"listening: the config compared with the category-popularity heuristic (default {FOCUS['listening']})",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.resume and not args.json:
        parser.error("--resume needs --json")
    if args.focus:
        FOCUS[args.chain] = args.focus
    started = time.perf_counter()
    dataset, scenarios = CHAINS[args.chain]()
    scenarios = select_scenarios(scenarios, args.scenarios)
    registry = dict(dataset.registry.base)
    if args.registry:
        registry.update(dataset.registry.load(args.registry))
    configs = [n for n in args.only.split(",") if n] or list(registry)
    unknown = [n for n in configs if n not in registry]
    if unknown:
        raise SystemExit(f"unknown {args.chain} configs {unknown}; known: {', '.join(registry)}")
    primary, secondary = dataset.protocol.primary, SECONDARY[args.chain]

    payload = {"chain": args.chain, "max_epochs": args.max_epochs, "primary": primary, "scenarios": {}}
    if args.resume and args.json.exists():
        stored = json.loads(args.json.read_text())
        if (stored.get("chain"), stored.get("max_epochs")) == (args.chain, args.max_epochs):
            payload["scenarios"] = stored["scenarios"]
        else:
            log(
                f"{args.json}: chain / max_epochs differ ({stored.get('chain')}, {stored.get('max_epochs')}): not reused"
            )
    print(
        f"# Quality over scenarios: {args.chain} chain, primary {primary}"
        f"{f', graph models capped at {args.max_epochs} epochs' if args.max_epochs else ''}\n",
        flush=True,
    )

    results: dict[str, dict] = {}
    for position, scenario in enumerate(scenarios, 1):
        entry = payload["scenarios"].setdefault(scenario.name, {"description": scenario.description, "results": {}})
        done = entry["results"]
        todo = [n for n in configs if n not in done or done[n]["config"] != registry[n].model_dump(mode="json")]
        log(
            f"[{position}/{len(scenarios)}] {scenario.name}: {scenario.description}; "
            f"{len(configs) - len(todo)} reused, {len(todo)} to fit"
        )
        if todo:
            began = time.perf_counter()
            graph, parts = scenario.build()
            log(
                f"  built in {time.perf_counter() - began:.1f} s: {parts['train'].numel():,} train / "
                f"{parts['valid'].numel():,} valid / {parts['test'].numel():,} test pairs"
            )
            for name in todo:
                log(f"  {name}: fitting ...")
                done[name] = run_config(dataset, registry[name], graph, parts, args.max_epochs, secondary)
                log(
                    f"  {name}: {primary} {done[name]['metrics'][primary]:.4f}, fit {done[name]['fit_seconds']:.1f} s, "
                    f"eval {done[name]['eval_seconds']:.1f} s"
                )
                if args.json:
                    save(args.json, payload)
            del graph, parts
        results[scenario.name] = {n: done[n] for n in configs}
        print(
            scenario_table(scenario.name, scenario.description, results[scenario.name], primary, secondary) + "\n",
            flush=True,
        )
    print(summary_report(args.chain, results, [s.name for s in scenarios], configs, primary))
    print(f"\ntotal {time.perf_counter() - started:.0f} s, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
