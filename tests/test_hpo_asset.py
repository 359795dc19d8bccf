"""The listening/hpo_study asset: run and resume a study through Dagster on a toy graph, progress in the run
log, best parameters, history plot and importances in metadata, a promotable registry file; a
bad storage URL fails the run before any trial."""

from __future__ import annotations

import dagster as dg
import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.data.graph import to_payload
from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.experiments.hpo import get_space
from spotify_engine_assets.core.presentation import metric_value
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import BY, HAS, LISTENS, add_reverse_edges
from spotify_engine_assets.datasets.listening.splits import SplitSettings, random_split
from spotify_engine_assets.defs.listening import defs as listening_defs
from spotify_engine_assets.defs.resources import DataLake, TorchRuntime

torch.set_num_threads(1)
hpo_study = listening_defs.get_assets_def(dg.AssetKey(["listening", "hpo_study"]))
HPO_NODE = "listening__hpo_study"


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
    # the raw columns weighted BPR and task heads read (a study may sample their strengths)
    data[LISTENS].play_count = torch.randint(1, 6, (len(pairs),), generator=g).float()
    data[LISTENS].mean_completion = torch.rand(len(pairs), generator=g)
    data[LISTENS].last_played = 1.7e9 + 86400.0 * torch.rand(len(pairs), generator=g).double() * 30
    songs = torch.arange(num_songs)
    data[BY].edge_index = torch.stack([songs, songs % 8])
    data[HAS].edge_index = torch.stack([songs, songs // size])
    data = add_reverse_edges(data)
    split = labels_to_indices(random_split(data[LISTENS].edge_index[0].numpy(), SplitSettings()))
    return to_payload(data), {"random": split, "temporal": split, "settings": {}}


def _toy_assets() -> list:
    """``listening/graph`` and ``listening/split`` assets holding the toy graph."""
    payload, splits = toy_graph()

    @dg.asset(key=["listening", "graph"], group_name="graph")
    def listening_graph() -> dict:
        return payload

    @dg.asset(key=["listening", "split"], group_name="graph")
    def interaction_splits() -> dict:
        return splits

    return [listening_graph, interaction_splits]


def _materialize(tmp_path, instance, partition="lightgcn", **run_config):
    return dg.materialize(
        [*_toy_assets(), hpo_study],
        partition_key=partition,
        instance=instance,
        resources={"lake": DataLake(root=str(tmp_path / "lake")), "torch_runtime": TorchRuntime()},
        run_config={"ops": {HPO_NODE: {"config": {"max_epochs": 2, **run_config}}}},
        raise_on_error=False,
    )


def test_hpo_study_asset_runs_resumes_and_records_the_outcome(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    first = _materialize(tmp_path, instance, n_trials=2)
    assert first.success
    second = _materialize(tmp_path, instance, n_trials=2)
    assert second.success
    output = second.output_for_node(HPO_NODE)
    assert output["trials_this_run"] == 2 and len(output["trials"]) == 4  # resumed: 2 + 2 in one study
    assert (tmp_path / "lake" / "optuna" / "studies.db").exists()
    logs = [entry.user_message for entry in instance.all_logs(second.run_id)]
    assert sum(message.startswith("trial ") for message in logs) == 2
    metadata = second.asset_materializations_for_node(HPO_NODE)[0].metadata
    assert "data:image/png;base64" in metadata["optimization_history"].value
    assert output["best_value"] == max(t["value"] or 0 for t in output["trials"])
    assert metadata["best_value"].value == metric_value(output["best_value"])  # the UI's number, 4 decimals
    assert metadata["trials_total"].value == 4
    # every field each completed trial searched (a conditional one only where all of them drew it)
    space = get_space(DATASET, "lightgcn")
    unconditional = {name for name, spec in space.params.items() if spec.when is None}
    assert unconditional <= set(output["importances"]) <= set(space.params)
    assert abs(sum(output["importances"].values()) - 1.0) < 1e-6
    assert "data:image/png;base64" in metadata["param_importances"].value
    tuned = DATASET.registry.load(tmp_path / "lake" / "optuna" / "listening" / "lightgcn_tuned.yaml")["lightgcn_tuned"]
    assert tuned.model == "lightgcn" and tuned.lr == output["best_params"]["lr"]


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({"n_trials": 1, "storage_url": "postgresql://u:pw@127.0.0.1:1/optuna"}, "cannot open Optuna storage"),
        ({"n_trials": 0}, "n_trials\n  Input should be greater than or equal to 1"),  # the config Field refuses it
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
    output = result.output_for_node(HPO_NODE)
    assert output["study_name"] == "spotify-engine/listening/lightgcn/pareto" and output["multi_objective"]
    assert output["objectives"] == {
        "valid_ndcg@10": "maximize",
        "train_seconds": "minimize",
        "valid_coverage@10": "maximize",
    }
    front = output["pareto_front"]
    assert front and len(output["trials"]) == 3
    completed = [t for t in output["trials"] if t["state"] == "COMPLETE"]
    assert {row["number"] for row in front} <= {t["number"] for t in completed}
    metadata = result.asset_materializations_for_node(HPO_NODE)[0].metadata
    assert metadata["pareto_size"].value == len(front)
    table = metadata["pareto_front"].value
    assert table.splitlines()[0].startswith("| number | valid_ndcg@10 | train_seconds | valid_coverage@10 | param_")
    assert len(table.splitlines()) == 2 + len(front)
    assert "data:image/png;base64" in metadata["pareto_plot"].value
    assert "best_value" not in metadata and "optimization_history" not in metadata
    assert not (tmp_path / "lake" / "optuna" / "listening" / "lightgcn_tuned.yaml").exists()
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert sum(message.startswith("trial ") and "Pareto front" in message for message in logs) == 3

    # the single-objective study in the same storage is untouched by the multi-objective run
    single = _materialize(tmp_path, instance, n_trials=1)
    assert single.success
    assert single.output_for_node(HPO_NODE)["study_name"] == "spotify-engine/listening/lightgcn"
    assert len(single.output_for_node(HPO_NODE)["trials"]) == 1


def test_promoted_best_trial_becomes_a_partition_with_lineage(tmp_path):
    """promote: the best config is written to the lake, registered as a listening_configs partition,
    and listening/trained_model of that partition trains it and links back to the study."""
    from spotify_engine_assets.defs.listening import CHAIN

    MODEL_CONFIGS = CHAIN.partitions
    trained_model = listening_defs.get_assets_def(dg.AssetKey(["listening", "trained_model"]))

    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(
        tmp_path, instance, n_trials=2, promote=True, max_trial_seconds=600.0, max_trial_memory_mb=10_000.0
    )
    assert result.success
    output = result.output_for_node(HPO_NODE)
    assert output["promoted_config"] == "hpo_lightgcn"
    # every trial was estimated (seconds are rounded to 0.1 s: the toy graph trains in well under a second)
    assert all(t["est_seconds"] is not None and t["est_memory_mb"] > 0 and not t["pruned_by"] for t in output["trials"])
    assert "hpo_lightgcn" in instance.get_dynamic_partitions(MODEL_CONFIGS)
    metadata = result.asset_materializations_for_node(HPO_NODE)[0].metadata
    assert metadata["promoted_config"].value == "hpo_lightgcn"
    assert metadata["promoted_asset"].value == dg.AssetKey(["listening", "trained_model"])
    assert metadata["trial_limits"].value["pruned_before_training"] == 0
    promoted = DATASET.registry.full(tmp_path / "lake")["hpo_lightgcn"]
    assert (
        promoted.lr == output["best_params"]["lr"]
        and (DATASET.registry.promoted_dir(tmp_path / "lake") / "hpo_lightgcn.yaml").exists()
    )

    resources = {"lake": DataLake(root=str(tmp_path / "lake")), "torch_runtime": TorchRuntime()}
    trained = dg.materialize(
        [*_toy_assets(), trained_model],
        partition_key="hpo_lightgcn",
        instance=instance,
        resources=resources,
        run_config={"ops": {"listening__trained_model": {"config": {"max_epochs": 1}}}},
        raise_on_error=False,
    )
    assert trained.success
    assert trained.output_for_node("listening__trained_model")["config"] == promoted.model_dump()
    lineage = trained.asset_materializations_for_node("listening__trained_model")[0].metadata
    assert lineage["config_origin"].value == "study"
    assert lineage["source_study"].value == "spotify-engine/listening/lightgcn"
    assert lineage["source_trial"].value == output["best_trial"]
    assert (
        lineage["source_asset"].value == dg.AssetKey(["listening", "hpo_study"])
        and lineage["source_partition"].value == "lightgcn"
    )

    # a registered partition whose config is gone fails with the known configs listed
    instance.add_dynamic_partitions(MODEL_CONFIGS, ["ghost"])
    ghost = dg.materialize(
        [*_toy_assets(), trained_model],
        partition_key="ghost",
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not ghost.success
    failure = [e for e in ghost.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "unknown listening model config 'ghost'; known configs: " in str(failure.event_specific_data.error)
    assert "hpo_lightgcn" in str(failure.event_specific_data.error)


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({"promote": True, "promote_name": "lightgcn"}, "'lightgcn' collides with a models.yaml config"),
        ({"promote": True, "multi_objective": True}, "promote needs a single-objective study"),
        ({"max_trial_memory_mb": -1.0}, "max_trial_memory_mb\n  Input should be greater than 0"),  # the config Field
    ],
)
def test_hpo_study_bad_promotion_or_limit_fails_before_any_trial(tmp_path, run_config, message):
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(tmp_path, instance, n_trials=1, **run_config)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert message in str(failure.event_specific_data.error)
    assert not any(m.user_message.startswith("trial ") for m in instance.all_logs(result.run_id))


def test_hpo_study_prunes_trials_over_the_memory_limit_before_training(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(tmp_path, instance, n_trials=2, max_trial_memory_mb=0.5)
    assert not result.success  # nothing completed: no best trial
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    pruned = [m for m in logs if "pruned before training: memory estimate" in m]
    assert len(pruned) == 2 and all("> limit max_trial_memory_mb 0.5 MB" in m for m in pruned)
    assert not any(m.startswith("epoch ") for m in logs)


def test_baseline_partition_gets_the_default_budget_and_promotes(tmp_path):
    """A closed-form family is a partition like the GNNs and runs the same default n_trials (the
    run config has no per-family budget); its best trial is promoted into the chain's configs."""
    from spotify_engine_assets.defs.chain import HpoRunConfig
    from spotify_engine_assets.defs.listening import CHAIN

    baselines = sorted(
        f for f in hpo_study.partitions_def.get_partition_keys() if not get_space(DATASET, f).base.trainable
    )
    assert "itemknn" in baselines and "lightgcn" in hpo_study.partitions_def.get_partition_keys()
    default_trials = HpoRunConfig.model_fields["n_trials"].default
    assert default_trials == 10
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(tmp_path, instance, partition="itemknn", promote=True)
    assert result.success
    output = result.output_for_node(HPO_NODE)
    assert output["trials_this_run"] == default_trials and output["trial_counts"] == {"COMPLETE": default_trials}
    assert output["study_name"] == "spotify-engine/listening/itemknn" and output["promoted_config"] == "hpo_itemknn"
    assert "hpo_itemknn" in instance.get_dynamic_partitions(CHAIN.partitions)
    promoted = DATASET.registry.full(tmp_path / "lake")["hpo_itemknn"]
    assert promoted.model == "itemknn" and promoted.shrink == output["best_params"]["shrink"]
