"""Multi-process training (``world_size``, ``core/training/distributed.py``): 2-process training on a
toy listening graph through torchrun (gloo, CPU) equals 1-process training step for step - the
ranks score shards of the same global step and sum their share-scaled gradients, which is the
full step's gradient up to float summation order - and the config refuses what cannot be sharded.
The ``trained_model`` asset launches the ranks through Dagster Pipes (``defs/ddp_pipes.py``): rank
0's log and its report reach the run's events."""

from __future__ import annotations

import os
import re

import dagster as dg
import pytest
import torch
from test_new_chain import SCHEMA as TOY_SCHEMA
from test_new_chain import build_graph, build_split, toy_frames
from test_training import config, toy_problem

from spotify_engine_assets.core.config import MAX_WORLD_SIZE
from spotify_engine_assets.core.data.graph import from_payload, num_nodes_of, to_payload, training_view
from spotify_engine_assets.core.dataset import Dataset, split_violations
from spotify_engine_assets.core.evaluation.protocol import LinkPrediction
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.registry import Registry
from spotify_engine_assets.core.storage.artifacts import load_torch
from spotify_engine_assets.core.training.distributed import ShardedSteps
from spotify_engine_assets.core.training.trainer import train
from spotify_engine_assets.datasets.listening.graph import SCHEMA
from spotify_engine_assets.defs.chain import Chain, chain_definitions
from spotify_engine_assets.defs.resources import DataLake, LakeIOManager, TorchRuntime

torch.set_num_threads(1)

# 2 ranks vs 1 process: the same weights up to float summation order, after a few epochs of Adam
ATOL, RTOL = 1e-4, 1e-3
# the validation metric: equal up to ranking ties moved by that float noise (one toy user of 8 at most)
METRIC_TOLERANCE = 0.125


def _fit(cfg, view, valid, **options):
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    result = train(model, view, valid, cfg, **options)
    return model, result


def _centered_scores(model, view):
    """Each user's scores minus their mean: what ranks (both losses are blind to a per-user shift)."""
    model.eval()
    with torch.no_grad():
        user_emb, item_emb = model.encode(view)[:2]
    scores = user_emb @ item_emb.T
    return scores - scores.mean(1, keepdim=True)


def _assert_same_training(single, double, view, exact_parameters=True):
    """Same epochs, losses, validation metric and ranking scores; with ``exact_parameters`` the same
    weights. (A GAT's item-side biases shift every score of a user alike; both losses are blind to
    that, so their gradient is float noise, which Adam scales up to full steps: compare scores.)"""
    (model_1, result_1), (model_2, result_2) = single, double
    assert result_2.epochs_run == result_1.epochs_run
    if exact_parameters:
        for key, value in result_1.final_state.items():
            torch.testing.assert_close(result_2.final_state[key], value, atol=ATOL, rtol=RTOL, msg=key)
    torch.testing.assert_close(_centered_scores(model_2, view), _centered_scores(model_1, view), atol=1e-2, rtol=0)
    for row_1, row_2 in zip(result_1.history, result_2.history):
        assert row_2["loss"] == pytest.approx(row_1["loss"], rel=1e-4 if exact_parameters else 1e-3, abs=1e-6)
        for name in (key for key in row_1 if key.startswith("valid_")):
            assert abs(row_2[name] - row_1[name]) <= METRIC_TOLERANCE, name
    if exact_parameters:
        for key, value in model_1.state_dict().items():  # the caller's model holds the best state
            torch.testing.assert_close(model_2.state_dict()[key], value, atol=ATOL, rtol=RTOL, msg=key)


def test_two_process_bpr_training_equals_one_process(tmp_path):
    """LightGCN, weighted BPR with 2 negatives, the advanced trainer (rank 0 validates and writes
    checkpoints): 2 ranks reach the 1-process weights, losses and validation metric."""
    view, valid = toy_problem()
    weights = torch.rand(view[SCHEMA.interaction].edge_index.size(1), generator=torch.Generator().manual_seed(3)) + 0.5
    common = dict(max_epochs=4, patience=100, negatives_per_positive=2, batch_size=15)  # 48 edges: uneven shards
    single = _fit(config("lightgcn", **common), view, valid, weights=weights)
    lines = []
    double = _fit(
        config("lightgcn", world_size=2, **common),
        view,
        valid,
        weights=weights,
        log=lines.append,
        checkpoint_dir=tmp_path / "ckpt",
    )
    _assert_same_training(single, double, view)
    assert any("training in 2 processes (gloo)" in line for line in lines)
    assert any(line.startswith("epoch 4/4: loss") for line in lines)  # rank 0's log relayed
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()  # written by rank 0 only


def test_two_process_softmax_training_equals_one_process():
    """A GAT with the softmax loss (shards of users with unequal pair counts) and the simple trainer."""
    view, valid = toy_problem()
    common = dict(max_epochs=3, loss="softmax", batch_size=5, trainer="simple")
    single = _fit(config("gat_basic", **common), view, valid)
    double = _fit(config("gat_basic", world_size=2, **common), view, valid)
    _assert_same_training(single, double, view, exact_parameters=False)


def test_shards_cover_a_step_once():
    sharded = ShardedSteps()
    for units in (1, 2, 7, 48):
        for world in (2, 3, 5):
            sharded.world = world
            parts = []
            for rank in range(world):
                sharded.rank = rank
                parts.append(sharded._part(units))
            assert [p.start for p in parts[1:]] == [p.stop for p in parts[:-1]]
            assert parts[0].start == 0 and parts[-1].stop == units
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_world_size_is_validated():
    with pytest.raises(ValueError, match="world_size"):
        config("lightgcn", world_size=0)
    with pytest.raises(ValueError, match="world_size"):
        config("lightgcn", world_size=MAX_WORLD_SIZE + 1)
    with pytest.raises(ValueError, match="orthogonality_weight are terms of the whole step"):
        config("lightgcn", world_size=2, orthogonality_weight=0.1)
    with pytest.raises(ValueError, match="attention_entropy_weight"):
        config("gat_basic", world_size=2, attention_entropy_weight=0.1)
    assert config("lightgcn", orthogonality_weight=0.1).world_size == 1


def test_world_size_refuses_live_epoch_callbacks():
    view, valid = toy_problem()
    cfg = config("lightgcn", world_size=2, max_epochs=1)
    with pytest.raises(ValueError, match="on_epoch"):
        _fit(cfg, view, valid, on_epoch=lambda row: None)


def _toy_chain(root):
    """The fourth chain of ``test_new_chain`` with its graph and split built in the assets (no warehouse)
    and one LightGCN config."""
    (root / "models.yaml").write_text(
        "lightgcn:\n  model: lightgcn\n  embedding_dim: 8\n  num_layers: 1\n"
        "  lr: 0.02\n  max_epochs: 2\n  batch_size: 128\n"
    )
    dataset = Dataset(
        name="toy",
        schema=TOY_SCHEMA,
        protocol=LinkPrediction(primary="ndcg@10", monitor="recall@10"),
        registry=Registry("toy", root / "models.yaml", ("random",)),
        view=lambda data, train, heldout=None: training_view(data, TOY_SCHEMA, train),
        split_violations=lambda data, splits: split_violations(data, splits, TOY_SCHEMA),
    )
    chain = Chain(dataset)

    @chain.asset("graph", "graph")
    def graph() -> dict:
        frames = toy_frames(users=30, items=40)
        interactions = frames["plays"].group_by("user_id", "item_id").len("plays")
        return to_payload(build_graph({"toy.interactions": interactions, "toy.item_tags": frames["items"]}))

    @chain.asset("split", "graph", ins=chain.ins("graph"))
    def split(graph: dict) -> dict:
        return build_split(from_payload(graph))

    lake = DataLake(root=str(root / "lake"))
    resources = {"lake": lake, "torch_runtime": TorchRuntime(), "io_manager": LakeIOManager(lake=lake)}
    defs = chain_definitions(chain)
    return [graph, split, *defs.assets, *defs.asset_checks], resources, lake


def test_trained_model_launches_the_ranks_through_dagster_pipes(tmp_path):
    """world_size 2 on the asset: torchrun runs under dg.PipesSubprocessClient; rank 0 opens Pipes,
    so its per-epoch log lines are events of the run and its report (backend, the two ranks'
    processes and seconds, the per-epoch loss) is in the materialization's metadata."""
    assets, resources, lake = _toy_chain(tmp_path)
    instance = dg.DagsterInstance.ephemeral()

    def run(*keys, **options):
        result = dg.materialize(
            assets,
            selection=dg.AssetSelection.assets(*keys),
            instance=instance,
            resources=resources,
            raise_on_error=False,
            **options,
        )
        assert result.success, [event.message for event in result.all_events if event.is_failure]
        return result

    run(["toy", "graph"], ["toy", "split"], ["toy", "model_registry"])
    result = run(
        ["toy", "trained_model"],
        partition_key="lightgcn",
        run_config={"ops": {"toy__trained_model": {"config": {"world_size": 2}}}},
    )
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("[pipes] external process successfully opened dagster pipes" in m for m in messages), messages
    assert any(re.match(r"epoch 2/\d+: loss", m) for m in messages), messages  # rank 0's log, through Pipes
    [materialization] = result.asset_materializations_for_node("toy__trained_model")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["world_size"] == 2 and metadata["ddp_world_size"] == 2 and metadata["ddp_backend"] == "gloo"
    ranks = metadata["ddp_ranks"]
    assert [rank["rank"] for rank in ranks] == [0, 1] and len({rank["pid"] for rank in ranks}) == 2
    assert all(rank["seconds"] > 0 for rank in ranks)
    trained = load_torch(lake.artifacts.current(["toy", "trained_model"], "lightgcn") / "data.pt")
    assert metadata["ddp_epoch_loss"] == [round(row["loss"], 6) for row in trained["history"]]
    assert len(metadata["ddp_epoch_loss"]) == trained["epochs_run"] == 2


def test_a_failing_rank_fails_the_pipes_launch_with_the_config_named(tmp_path):
    """Ranks that die (here: no job file) fail the launch: a RuntimeError naming the config, and rank
    0's exception reaches the run through Pipes."""
    from spotify_engine_assets.core.training.distributed import Launch
    from spotify_engine_assets.defs.ddp_pipes import PipesLauncher

    @dg.asset
    def launch_without_job(context):
        launch = Launch(
            tmp_path, 2, "gloo", {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}, "broken"
        )
        PipesLauncher(context)(launch, context.log.info)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([launch_without_job], instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "config 'broken': distributed training failed through Dagster Pipes" in str(failure.step_failure_data.error)
    closed = [
        entry.dagster_event.event_specific_data.error
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event and "pipes closed with exception" in (entry.dagster_event.message or "")
    ]
    assert closed and "job.pt" in str(closed[0]), closed  # rank 0's FileNotFoundError, reported over Pipes
