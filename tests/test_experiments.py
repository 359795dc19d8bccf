"""Experiment records, the A/B plan, the champion gate and promotion, and the
``spotify-engine experiments`` commands, on hand-made reports (no Dagster run)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets import cli
from spotify_engine_assets.core.config import ConfigError, Thresholds, load_thresholds
from spotify_engine_assets.core.experiments.records import (
    data_fingerprint,
    empty_champion,
    experiment_key,
    experiments_frame,
    gate_decision,
    load_ab_plan,
    not_comparable,
    per_user_frame,
    per_user_payload,
    report_key,
    resolve_experiment,
    update_champion,
)
from spotify_engine_assets.core.registry import Registry
from spotify_engine_assets.core.storage.artifacts import ArtifactStore, save_torch
from spotify_engine_assets.datasets.listening import DATASET, STRATEGIES
from spotify_engine_assets.datasets.listening.graph import BY, HAS, LISTENS

CHAIN = DATASET.name  # "listening"
THRESHOLDS = Thresholds(min_ratio_vs_most_popular=1.05, min_ratio_vs_random=1.5, ab_bootstrap_resamples=200)


def champion_metric(thresholds: Thresholds) -> str:
    """The per-user metric the champion gate tests on (``primary``: the chain's, ndcg@10)."""
    return thresholds.metric(thresholds.champion_metric, DATASET.protocol.primary)


METRIC = champion_metric(THRESHOLDS)


def fake_report(
    config: str, values: np.ndarray, split: str = "random", data: str = "data-1", gate: bool = True, seed: int = 0
) -> dict:
    n = len(values)
    frame = pl.DataFrame(
        {
            "user_index": np.arange(n),
            "user_id": np.arange(n) + 100,
            "user_type": ["casual"] * n,
            "ndcg@10": values,
            "recall@10": np.clip(values * 1.1, 0, 1),
        }
    )
    provenance = {
        "config": {"name": config, "model": "lightgcn", "seed": seed},
        "data": {"combined": data},
        "code_versions": {"trained_model": "t1", "metric_report": "e1"},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "max_epochs_override": None,
        "recorded_at": "2026-01-01T00:00:00+00:00",
        "run_id": f"run-{config}",
    }
    report = {
        "config": config,
        "model": "lightgcn",
        "split": split,
        "metrics": {
            "ndcg@10": float(values.mean()),
            "recall@10": float(frame["recall@10"].mean()),
            "users_evaluated": n,
        },
        "most_popular": {"ndcg@10": 0.1, "users_evaluated": n},
        "gate": {"passed": gate, "threshold": 0.1, "baseline": "most_popular"},
        "num_parameters": 10,
        "train_seconds": 1.0,
        "epochs_run": 3,
        "per_user": per_user_payload(frame),
        "provenance": provenance,
    }
    report["experiment_key"] = experiment_key(provenance)
    return report


def users(seed: int, n: int = 300) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 0.6, n)


BASE = users(0)
BETTER = np.clip(BASE + 0.08 + np.random.default_rng(1).normal(0, 0.03, BASE.size), 0, 1)
SIMILAR = np.clip(BASE + np.random.default_rng(2).normal(0, 0.03, BASE.size), 0, 1)


# ---------------------------------------------------------------------------------- A/B plan


def registry(tmp_path) -> Registry:
    """A listening registry of three configs: a (lightgcn), b (gat_basic), t (lightgcn, temporal split)."""
    path = tmp_path / "models.yaml"
    path.write_text("a:\n  model: lightgcn\nb:\n  model: gat_basic\nt:\n  model: lightgcn\n  split: temporal\n")
    return Registry(CHAIN, path, STRATEGIES)


def write_plan(tmp_path, text: str):
    path = tmp_path / "ab.yaml"
    path.write_text(text)
    return path


def test_default_ab_plan_loads():
    plan = load_ab_plan(DATASET.registry)
    assert plan.metrics and plan.pairs
    assert all(pair.control != pair.treatment for pair in plan.pairs)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ("[{control: a, treatment: nope}]", r"pair 0 \(nope vs a\): treatment: unknown listening model config 'nope'"),
        ("[{control: a, treatment: a}]", "same config"),
        ("[{control: a, treatment: t}]", "split 'random', treatment on 'temporal'"),
        ("[{control: a, treatment: b}, {control: a, treatment: b}]", "pair 1 .*duplicate"),
        ("[{control: a, treatment: b, extra: 1}]", "extra"),
    ],
)
def test_ab_plan_errors_name_the_pair(tmp_path, pairs, message):
    path = write_plan(tmp_path, f"metrics: [ndcg@10]\npairs: {pairs}\n")
    with pytest.raises(ConfigError, match=message):
        load_ab_plan(registry(tmp_path), path, lake_root=tmp_path)


def test_ab_plan_needs_metrics(tmp_path):
    with pytest.raises(ConfigError, match="metrics"):
        load_ab_plan(
            registry(tmp_path), write_plan(tmp_path, "pairs: [{control: a, treatment: b}]\n"), lake_root=tmp_path
        )


# ---------------------------------------------------------------------------------- provenance


def tiny_graph() -> HeteroData:
    data = HeteroData()
    for node_type, count in (("user", 2), ("song", 3), ("artist", 1), ("genre", 1)):
        data[node_type].num_nodes = count
        data[node_type].node_id = torch.arange(count)
    data[LISTENS].edge_index = torch.tensor([[0, 0, 1], [0, 1, 2]])
    data[LISTENS].edge_attr = torch.ones(3, 3)
    data[BY].edge_index = torch.tensor([[0, 1, 2], [0, 0, 0]])
    data[HAS].edge_index = torch.tensor([[0, 1, 2], [0, 0, 0]])
    return data


def test_data_fingerprint_tracks_graph_and_split():
    split = {"train": torch.tensor([0, 1]), "valid": torch.tensor([], dtype=torch.long), "test": torch.tensor([2])}
    first = data_fingerprint(tiny_graph(), split)
    assert first == data_fingerprint(tiny_graph(), split)
    other_split = data_fingerprint(tiny_graph(), {**split, "train": torch.tensor([1, 0])})
    assert other_split["graph"] == first["graph"] and other_split["split"] != first["split"]
    changed = tiny_graph()
    changed[LISTENS].edge_attr[0, 0] = 2.0
    assert data_fingerprint(changed, split)["graph"] != first["graph"]


def test_experiment_key_ignores_run_but_not_config_or_data():
    report = fake_report("a", BASE)
    provenance = report["provenance"]
    assert experiment_key({**provenance, "run_id": "other", "recorded_at": "later"}) == report["experiment_key"]
    assert experiment_key({**provenance, "config": {**provenance["config"], "seed": 1}}) != report["experiment_key"]
    assert experiment_key({**provenance, "data": {"combined": "data-2"}}) != report["experiment_key"]
    assert experiment_key({**provenance, "max_epochs_override": 5}) != report["experiment_key"]


def test_per_user_payload_round_trip():
    report = fake_report("a", BASE)
    frame = per_user_frame(report)
    assert frame["ndcg@10"].to_numpy() == pytest.approx(BASE)
    assert frame["user_type"].to_list()[:2] == ["casual", "casual"]
    with pytest.raises(ValueError, match="no per-user metrics"):
        per_user_frame({"config": "old"})


def test_not_comparable_reasons():
    a = fake_report("a", BASE)
    assert not_comparable(a, fake_report("b", SIMILAR)) is None
    assert "different splits" in not_comparable(a, fake_report("b", SIMILAR, split="temporal"))
    assert "different data" in not_comparable(a, fake_report("b", SIMILAR, data="data-2"))
    assert "lacks" in not_comparable(a, {**fake_report("b", SIMILAR), "per_user": None})


# ---------------------------------------------------------------------------------- champion


def champion_of(report: dict, evaluated=()) -> dict:
    state = empty_champion()
    state["splits"]["random"] = {
        "config": report["config"],
        "metric": "ndcg@10",
        "mean": report["metrics"]["ndcg@10"],
        "experiment_key": report["experiment_key"],
        "since": "t0",
    }
    state["evaluated"] = list(evaluated)
    return state


def test_gate_fails_a_significantly_worse_candidate():
    champion_report = fake_report("champ", BETTER)
    decision = gate_decision(
        fake_report("cand", BASE), champion_of(champion_report), champion_report, THRESHOLDS, METRIC
    )
    assert not decision["passed"]
    assert decision["p_value"] < THRESHOLDS.ab_alpha and decision["mean_diff"] < 0
    assert decision["champion"] == "champ"


def test_gate_passes_similar_better_and_skipped_candidates():
    champion_report = fake_report("champ", BASE)
    state = champion_of(champion_report)
    assert gate_decision(fake_report("cand", SIMILAR), state, champion_report, THRESHOLDS, METRIC)["passed"]
    assert gate_decision(fake_report("cand", BETTER), state, champion_report, THRESHOLDS, METRIC)["passed"]
    assert (
        gate_decision(fake_report("cand", BASE), empty_champion(), None, THRESHOLDS, METRIC)["status"]
        == "no champion yet on this split"
    )
    assert gate_decision(champion_report, state, None, THRESHOLDS, METRIC)["status"] == "candidate is the champion"
    worse = fake_report("cand", BASE - 0.2)
    assert (
        "already evaluated"
        in gate_decision(
            worse, champion_of(champion_report, [worse["experiment_key"]]), champion_report, THRESHOLDS, METRIC
        )["status"]
    )
    other_data = fake_report("cand", BASE - 0.2, data="data-2")
    decision = gate_decision(other_data, state, champion_report, THRESHOLDS, METRIC)
    assert decision["passed"] and "different data" in decision["status"]


def test_champion_seeded_then_promoted_or_retained():
    reports = {
        "a": fake_report("a", BASE),
        "b": fake_report("b", SIMILAR),
        "weak": fake_report("weak", BASE * 0.5, gate=False),
    }
    state, events = update_champion(empty_champion(), reports, THRESHOLDS, METRIC, when="t1")
    best = max(("a", "b"), key=lambda n: reports[n]["metrics"]["ndcg@10"])
    assert [e["event"] for e in events] == ["seeded"] and state["splits"]["random"]["config"] == best
    assert set(state["evaluated"]) == {r["experiment_key"] for r in reports.values()}

    state2, events2 = update_champion(state, reports, THRESHOLDS, METRIC, when="t2")  # nothing new, nothing better
    assert events2[0]["event"] == "retained" and state2["splits"]["random"]["since"] == "t1"
    assert len(state2["history"]) == 1

    reports["new"] = fake_report("new", BETTER)
    state3, events3 = update_champion(state2, reports, THRESHOLDS, METRIC, when="t3")
    assert events3[0]["event"] == "promoted" and events3[0]["config"] == "new" and events3[0]["previous"] == best
    assert events3[0]["p_holm"] < THRESHOLDS.ab_alpha
    assert state3["splits"]["random"] == {**state3["splits"]["random"], "config": "new", "since": "t3"}
    assert [e["event"] for e in state3["history"]] == ["seeded", "promoted"]


def test_champion_needs_minimum_improvement():
    reports = {"a": fake_report("a", BASE)}
    state, _ = update_champion(empty_champion(), reports, THRESHOLDS, METRIC)
    reports["new"] = fake_report("new", BETTER)
    strict = THRESHOLDS.model_copy(update={"champion_min_improvement": 0.5})
    _, events = update_champion(state, reports, strict, champion_metric(strict))
    assert events[0]["event"] == "retained"


# ---------------------------------------------------------------------------------- store and CLI


@pytest.fixture()
def lake(data_lake):
    store = ArtifactStore(data_lake / "artifacts")
    for name, values in (("a", BASE), ("b", BETTER), ("a", SIMILAR)):
        report = fake_report(name, values)
        store.write(report_key(CHAIN), name, lambda folder, r=report: save_torch(r, folder / "data.pt"))
    return store


def test_experiments_frame_current_and_history(lake):
    current = experiments_frame(lake, CHAIN)
    assert sorted(current["config"]) == ["a", "b"] and current["current"].all()
    history = experiments_frame(lake, CHAIN, include_history=True)
    assert history.height == 3 and history.filter(pl.col("config") == "a")["current"].sum() == 1
    row = current.filter(pl.col("config") == "a").row(0, named=True)
    assert row["ndcg@10"] == pytest.approx(SIMILAR.mean())  # the later version is current
    assert row["git_commit"] == "0123456789" and row["data"] == "data-1" and row["seed"] == 0


def test_resolve_experiment_by_config_and_id(lake):
    ident, report = resolve_experiment(lake, CHAIN, "a")
    assert report["metrics"]["ndcg@10"] == pytest.approx(SIMILAR.mean())
    older = [
        i
        for i in experiments_frame(lake, CHAIN, include_history=True)["experiment"]
        if i.startswith("a@") and i != ident
    ][0]
    assert resolve_experiment(lake, CHAIN, older)[1]["metrics"]["ndcg@10"] == pytest.approx(BASE.mean())
    with pytest.raises(KeyError, match="no recorded experiment 'zzz'; known: a@"):
        resolve_experiment(lake, CHAIN, "zzz")
    with pytest.raises(KeyError, match="a@nope"):
        resolve_experiment(lake, CHAIN, "a@nope")


def test_cli_experiments_list(lake, capsys):
    assert cli.main(["experiments", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("| a@") == 1 and out.count("| b@") == 1
    assert cli.main(["experiments", "list", "--all"]) == 0
    assert capsys.readouterr().out.count("| a@") == 2


def test_cli_experiments_compare(lake, capsys):
    assert cli.main(["experiments", "compare", "a", "b", "--metrics", "ndcg@10,recall@10"]) == 0
    out = capsys.readouterr().out
    assert "config.name | a | b" in out
    stats_rows = [line for line in out.splitlines() if line.startswith("| ndcg@10 | 300 |")]
    assert stats_rows and "better" in stats_rows[0]
    assert cli.main(["experiments", "compare", "a", "missing"]) == 2
    assert "no recorded experiment 'missing'" in capsys.readouterr().err


def test_cli_experiments_list_empty(data_lake, capsys):
    assert cli.main(["experiments", "list"]) == 0
    assert "no experiments recorded yet" in capsys.readouterr().out


def test_thresholds_file_has_every_field():
    thresholds = load_thresholds()
    written = set(
        __import__("yaml").safe_load(
            (
                __import__("pathlib").Path(__file__).parents[1] / "spotify_engine_assets/configs/thresholds.yaml"
            ).read_text()
        )
    )
    assert written == set(type(thresholds).model_fields)


def test_unknown_champion_metric_is_named():
    bad = THRESHOLDS.model_copy(update={"champion_metric": "ndcg@11"})
    with pytest.raises(ValueError, match=r"champion metric 'ndcg@11' .* missing from the reports of a"):
        update_champion(empty_champion(), {"a": fake_report("a", BASE)}, bad, champion_metric(bad))
    champion_report = fake_report("champ", BETTER)
    with pytest.raises(ValueError, match="no per-user 'ndcg@11'"):
        gate_decision(
            fake_report("cand", BASE), champion_of(champion_report), champion_report, bad, champion_metric(bad)
        )
