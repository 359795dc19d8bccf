"""The hpo_study asset: run and resume a study through Dagster on a toy graph, progress in the run
log, best parameters, history plot and importances in metadata, a promotable registry file; a
bad storage URL fails the run before any trial."""

from __future__ import annotations

import dagster as dg
import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.defs.optimization import hpo_study
from spotify_engine_assets.defs.resources import DataLake, TorchRuntime
from spotify_engine_assets.lib.configs import load_registry
from spotify_engine_assets.lib.graph import BY, HAS, LISTENS, add_reverse_edges, to_payload
from spotify_engine_assets.lib.splits import SplitSettings, labels_to_indices, random_split

torch.set_num_threads(1)


def toy_graph(num_users: int = 40, num_songs: int = 200, clusters: int = 4, per_user: int = 14):
    g = torch.Generator().manual_seed(1)
    size = num_songs // clusters
    pairs = []
    for u in range(num_users):
        base = (u % clusters) * size
        pairs += [(u, int(s) + base) for s in torch.randperm(size, generator=g)[:per_user]]
    data = HeteroData()
    for t, n in {"user": num_users, "song": num_songs, "artist": 8, "genre": clusters}.items():
        data[t].num_nodes = n
        data[t].node_id = torch.arange(n)
    data[LISTENS].edge_index = torch.tensor(pairs).t().contiguous()
    data[LISTENS].edge_attr = torch.rand(len(pairs), 3, generator=g)
    songs = torch.arange(num_songs)
    data[BY].edge_index = torch.stack([songs, songs % 8])
    data[HAS].edge_index = torch.stack([songs, songs // size])
    data = add_reverse_edges(data)
    split = labels_to_indices(random_split(data[LISTENS].edge_index[0].numpy(), SplitSettings()))
    return to_payload(data), {"random": split, "temporal": split, "settings": {}}


def _materialize(tmp_path, instance, **run_config):
    payload, splits = toy_graph()

    @dg.asset(key="listening_graph", group_name="graph")
    def listening_graph() -> dict:
        return payload

    @dg.asset(key="interaction_splits", group_name="graph")
    def interaction_splits() -> dict:
        return splits

    return dg.materialize(
        [listening_graph, interaction_splits, hpo_study],
        partition_key="lightgcn",
        instance=instance,
        resources={"lake": DataLake(root=str(tmp_path / "lake")), "torch_runtime": TorchRuntime()},
        run_config={"ops": {"hpo_study": {"config": {"max_epochs": 2, **run_config}}}},
        raise_on_error=False,
    )


def test_hpo_study_asset_runs_resumes_and_records_the_outcome(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    first = _materialize(tmp_path, instance, n_trials=2)
    assert first.success
    second = _materialize(tmp_path, instance, n_trials=2)
    assert second.success
    output = second.output_for_node("hpo_study")
    assert output["trials_this_run"] == 2 and len(output["trials"]) == 4  # resumed: 2 + 2 in one study
    assert (tmp_path / "lake" / "optuna" / "studies.db").exists()
    logs = [entry.user_message for entry in instance.all_logs(second.run_id)]
    assert sum(message.startswith("trial ") for message in logs) == 2
    metadata = second.asset_materializations_for_node("hpo_study")[0].metadata
    assert "data:image/png;base64" in metadata["optimization_history"].value
    assert metadata["best_value"].value == output["best_value"] == max(t["value"] or 0 for t in output["trials"])
    assert metadata["trials_total"].value == 4
    assert set(output["importances"]) == {"lr", "embedding_dim", "num_layers", "batch_size", "l2"}
    assert abs(sum(output["importances"].values()) - 1.0) < 1e-6
    assert "data:image/png;base64" in metadata["param_importances"].value
    tuned = load_registry(tmp_path / "lake" / "optuna" / "lightgcn_tuned.yaml")["lightgcn_tuned"]
    assert tuned.model == "lightgcn" and tuned.lr == output["best_params"]["lr"]


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({"n_trials": 1, "storage_url": "postgresql://u:pw@127.0.0.1:1/optuna"}, "cannot open Optuna storage"),
        ({"n_trials": 0}, "n_trials must be >= 1"),
    ],
)
def test_hpo_study_bad_run_config_fails_before_any_trial(tmp_path, run_config, message):
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(tmp_path, instance, **run_config)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert message in str(failure.event_specific_data.error)
    assert ":pw@" not in str(failure.event_specific_data.error)
    assert not any(m.user_message.startswith("trial ") for m in instance.all_logs(result.run_id))


def test_hpo_study_asset_multi_objective_records_the_pareto_front(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(tmp_path, instance, n_trials=3, multi_objective=True)
    assert result.success
    output = result.output_for_node("hpo_study")
    assert output["study_name"] == "spotify-engine/lightgcn/pareto" and output["multi_objective"]
    assert output["objectives"] == {"valid_ndcg@10": "maximize", "train_seconds": "minimize", "valid_coverage@10": "maximize"}
    front = output["pareto_front"]
    assert front and len(output["trials"]) == 3
    completed = [t for t in output["trials"] if t["state"] == "COMPLETE"]
    assert {row["number"] for row in front} <= {t["number"] for t in completed}
    metadata = result.asset_materializations_for_node("hpo_study")[0].metadata
    assert metadata["pareto_size"].value == len(front)
    table = metadata["pareto_front"].value
    assert table.splitlines()[0].startswith("| number | valid_ndcg@10 | train_seconds | valid_coverage@10 | param_")
    assert len(table.splitlines()) == 2 + len(front)
    assert "data:image/png;base64" in metadata["pareto_plot"].value
    assert "best_value" not in metadata and "optimization_history" not in metadata
    assert not (tmp_path / "lake" / "optuna" / "lightgcn_tuned.yaml").exists()
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert sum(message.startswith("trial ") and "Pareto front" in message for message in logs) == 3

    # the single-objective study in the same storage is untouched by the multi-objective run
    single = _materialize(tmp_path, instance, n_trials=1)
    assert single.success
    assert single.output_for_node("hpo_study")["study_name"] == "spotify-engine/lightgcn"
    assert len(single.output_for_node("hpo_study")["trials"]) == 1
