"""Experiment management end to end on tiny data: the chain's last stage builds the experiments
table, the A/B tests and the champion; a recorded experiment reproduces its metrics when
re-materialized (rollback); the champion gate blocks a significantly worse candidate."""

import dagster as dg
import polars as pl
import pytest
import torch

from spotify_engine_assets.cli import reproduce_experiment
from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch, save_torch
from spotify_engine_assets.defs.listening import CHAIN as LISTENING
from spotify_engine_assets.runner import MODEL_STAGE, materialize_chain, run_config

CONFIGS = ["lightgcn", "most_popular"]


def markdown_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of a metadata markdown table (``frame_markdown``) as column -> cell text."""
    lines = markdown.strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip().strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip().strip("|").split("|")))) for line in lines[2:]]


@pytest.fixture(scope="module")
def chain(module_lake):
    instance = dg.DagsterInstance.ephemeral()
    results = materialize_chain("tiny", configs=CONFIGS, instance=instance, log=lambda message: None)
    return module_lake, instance, results


def report_of(lake, name: str) -> dict:
    return load_torch(ArtifactStore(lake / "artifacts").current(["listening", "metric_report"], name) / "data.pt")


def test_chain_succeeds(chain):
    _, _, results = chain
    assert {r.name: r.error for r in results if not r.success} == {}


def test_report_is_comprehensive(chain):
    lake, _, _ = chain
    report = report_of(lake, "lightgcn")
    metrics = report["metrics"]
    for family in ("recall", "precision", "ndcg", "mrr", "hit_rate"):
        for k in (5, 10, 20):
            assert 0.0 <= metrics[f"{family}@{k}"] <= 1.0, f"{family}@{k}"
    for name in ("coverage@10", "gini@10", "novelty@10", "ild_embedding@10", "ild_genre@10", "personalization@10"):
        assert name in metrics, name
    groups = {(g["dimension"], g["group"]) for g in report["fairness"]["groups"]}
    assert {("activity_tercile", t) for t in ("low", "mid", "high")} <= groups
    assert {g for d, g in groups if d == "user_type"} <= {"casual", "regular", "power"}
    assert len({g for d, g in groups if d == "user_type"}) >= 2
    efficiency = report["efficiency"]
    assert efficiency["num_parameters"] > 0 and efficiency["train_seconds"] > 0
    assert 0 < efficiency["latency_p50_ms"] <= efficiency["latency_p95_ms"]
    assert efficiency["throughput_users_per_s"] > 0 and efficiency["memory_estimate_mb"] > 0
    per_user = pl.read_parquet(report["per_user_parquet"])
    assert per_user.height == metrics["users_evaluated"]
    assert per_user["ndcg@10"].mean() == pytest.approx(metrics["ndcg@10"])
    provenance = report["provenance"]
    assert provenance["config"]["name"] == "lightgcn" and provenance["seed"] == 0
    assert provenance["data"] == provenance["training_data"]
    assert provenance["upstream"]["listening/graph"]["data_version"] != "unknown"
    assert {"torch", "torch_geometric", "dagster", "scipy"} <= set(provenance["dependencies"])
    assert "commit" in provenance["git"] and provenance["max_epochs_override"] == 30


def test_experiments_ab_tests_and_champion(chain):
    lake, _, _ = chain
    experiments = pl.read_csv(lake / "reports" / "listening" / "experiments.csv")
    assert sorted(experiments["config"]) == CONFIGS
    ab = pl.read_csv(lake / "reports" / "listening" / "ab_tests.csv")
    assert set(ab["pair"]) == {"lightgcn vs most_popular"}  # pairs with unmaterialized configs are skipped
    assert set(ab["verdict"]) <= {"better", "worse", "no detectable difference"}
    _, instance, _ = chain
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey(["listening", "ab_tests"])
    ).asset_materialization.metadata
    plot = metadata["per_user_differences"].value  # histogram of per-user treatment - control
    assert plot.startswith("![A/B: per-user treatment - control](data:image/png;base64,")
    champion = load_torch(ArtifactStore(lake / "artifacts").current(["listening", "champion"]) / "data.pt")
    assert champion["splits"]["random"]["config"] in CONFIGS
    assert champion["history"][0]["event"] == "seeded"


def test_rollback_reproduces_recorded_metrics(chain):
    lake, instance, _ = chain
    before = report_of(lake, "lightgcn")
    outcome = reproduce_experiment("lightgcn", instance=instance)
    after = report_of(lake, "lightgcn")
    assert outcome["new"] != outcome["recorded"] and outcome["run_success"]
    assert outcome["same_data"] and outcome["same_experiment_key"] and outcome["reproduced"]
    assert after["metrics"] == before["metrics"]
    assert torch.equal(after["per_user"]["ndcg@10"], before["per_user"]["ndcg@10"])


def test_champion_gate_blocks_a_significantly_worse_candidate(chain):
    """Plant a champion that is perfect for every user; most_popular must then fail the gate."""
    lake, instance, _ = chain
    store = ArtifactStore(lake / "artifacts")
    planted = report_of(lake, "lightgcn")
    planted.update(config="planted", experiment_key="planted")
    planted["per_user"]["ndcg@10"] = torch.ones_like(planted["per_user"]["ndcg@10"])
    store.write(["listening", "metric_report"], "planted", lambda folder: save_torch(planted, folder / "data.pt"))
    # listening/champion reads the current report of every listening_configs partition
    instance.add_dynamic_partitions(LISTENING.partitions, ["planted"])
    state = {
        "splits": {
            "random": {"config": "planted", "metric": "ndcg@10", "mean": 1.0, "experiment_key": "planted", "since": "t"}
        },
        "history": [],
        "evaluated": [],
    }
    store.write(["listening", "champion"], None, lambda folder: save_torch(state, folder / "data.pt"))
    from spotify_engine_assets.definitions import defs

    # the candidate's report (quality_gate, fairness_gap), then the champion (champion_gate over every current report)
    model_run = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=MODEL_STAGE,
        run_config=run_config("tiny_train.yaml"),
        instance=instance,
        resources=defs.resources,
        partition_key="most_popular",
        raise_on_error=False,
    )
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(["listening", "champion"]),
        run_config=run_config(),
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )
    assert not result.success
    gate = next(e for e in result.get_asset_check_evaluations() if e.check_name == "champion_gate")
    assert not gate.passed
    assert "most_popular" in gate.metadata["failed_configs"].value.split(", ")
    assert gate.description.startswith("FAILED ") and "most_popular" in gate.description
    decision = next(row for row in markdown_rows(gate.metadata["decisions"].value) if row["config"] == "most_popular")
    assert float(decision["p_value"]) < gate.metadata["threshold_alpha"].value
    assert float(decision["mean_diff"]) < 0
    assert decision["champion"] == "planted"
    evaluations = {e.check_name: e for run in (model_run, result) for e in run.get_asset_check_evaluations()}
    assert {"quality_gate", "champion_gate", "fairness_gap"} <= set(evaluations)
    fairness = evaluations["fairness_gap"].metadata
    assert fairness["observed_relative_gap"].value >= 0.0 and fairness["threshold"].value > 0
    assert evaluations["quality_gate"].partition == "most_popular"  # the check history names the config
    ndcg = evaluations["quality_gate"].metadata
    assert ndcg["observed_ndcg@10"].value >= 0 and ndcg["threshold"].value > 0
