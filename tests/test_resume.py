"""Resumable training: a real training process killed with SIGKILL after its first checkpoint
resumes from that checkpoint and ends exactly like a run that was never interrupted; and the same
through Dagster: a ``trained_model`` materialization in a subprocess (the project's definitions,
a ``$DAGSTER_HOME`` and data lake in a temporary folder) is SIGKILLed mid-way, the previously
materialized version stays current and loadable, and re-materializing resumes from the killed
run's checkpoint.

(The resumed runs happen in the test process: a second child would double the interpreter and
torch-geometric start-up, the slowest part of the test on a busy machine.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from killing import sigkill_when

from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.training.trainer import CHECKPOINT_FILE, train
from spotify_engine_assets.datasets.listening.graph import SCHEMA

sys.path.insert(0, str(Path(__file__).parent))
from test_training import config, toy_problem

TESTS = Path(__file__).parent
EPOCHS = 8

CHILD = f"""
import sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, {str(TESTS)!r})
from test_training import config, toy_problem
from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.training.trainer import train
from spotify_engine_assets.datasets.listening.graph import SCHEMA

checkpoint_dir, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
view, valid = toy_problem()
cfg = config("gat_enhanced", dropout=0.3, max_epochs={EPOCHS}, patience=100, lr_patience=1,
             negatives_per_positive=3, grad_accumulation=2, batch_size=8)
weights = torch.linspace(0.5, 1.5, view[("user", "listens", "song")].edge_index.size(1))
model = build_model(cfg, SCHEMA, num_nodes_of(view))
result = train(model, view, valid, cfg, weights=weights, checkpoint_dir=checkpoint_dir,
               on_epoch=lambda row: time.sleep(pause))
torch.save({{
    "history": [{{k: v for k, v in h.items() if not k.endswith("seconds")}} for h in result.history],
    "final_state": result.final_state, "best_state": result.best_state, "best_epoch": result.best_epoch,
    "resumed_from_epoch": result.resumed_from_epoch,
}}, out)
"""


def _child(checkpoint_dir: Path, out: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(checkpoint_dir), str(out), str(pause)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _kill_at_checkpoint(process: subprocess.Popen, folder: Path, pattern: str, timeout: float) -> Path:
    """Wait until ``process`` has written a checkpoint ``folder.glob(pattern)``, SIGKILL it and
    return the checkpoint (the process must still be running when it is found)."""
    (checkpoint,) = sigkill_when(
        process, lambda: sorted(folder.glob(pattern)), timeout, f"checkpoint {folder / pattern}"
    )
    return checkpoint


def _run(checkpoint_dir=None):
    """The child's training run, in this process."""
    view, valid = toy_problem()
    cfg = config(
        "gat_enhanced",
        dropout=0.3,
        max_epochs=EPOCHS,
        patience=100,
        lr_patience=1,
        negatives_per_positive=3,
        grad_accumulation=2,
        batch_size=8,
    )
    weights = torch.linspace(0.5, 1.5, view[("user", "listens", "song")].edge_index.size(1))
    return train(
        build_model(cfg, SCHEMA, num_nodes_of(view)), view, valid, cfg, weights=weights, checkpoint_dir=checkpoint_dir
    )


def _reference():
    result = _run()
    history = [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in result.history]
    return history, result


def test_sigkilled_training_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    first = _child(checkpoints, tmp_path / "never.pt", pause=0.3)
    checkpoint = _kill_at_checkpoint(first, checkpoints, CHECKPOINT_FILE, timeout=25)
    assert not (tmp_path / "never.pt").exists()  # killed mid-way, never finished
    killed_at = torch.load(checkpoint, weights_only=True)
    assert 1 <= killed_at["epoch"] < EPOCHS and not killed_at["finished"]

    # resume in this process with a freshly built model: weights, optimizer, scheduler, sampling
    # generator and dropout RNG all come from the killed process's checkpoint
    resumed_result = _run(checkpoints)
    resumed = {
        "history": [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in resumed_result.history],
        "final_state": resumed_result.final_state,
        "best_state": resumed_result.best_state,
        "best_epoch": resumed_result.best_epoch,
    }
    assert resumed_result.resumed_from_epoch == killed_at["epoch"]

    history, reference = _reference()
    assert resumed["history"] == history
    assert len({row["lr"] for row in history}) > 1  # the LR scheduler's restored state mattered
    assert resumed["best_epoch"] == reference.best_epoch
    for key, value in reference.final_state.items():
        assert torch.equal(resumed["final_state"][key], value), key
    for key, value in reference.best_state.items():
        assert torch.equal(resumed["best_state"][key], value), key


def test_checkpoint_folder_is_keyed_by_partition_config_and_data(tmp_path):
    # the folder is <lake>/checkpoints/<chain>/<config>/<hash of config, data, epoch cap, code>
    # (defs/chain.py's trained_model); checkpoint_dir_for(lake, chain, config, data, max_epochs)
    # is the helper that computes it
    from spotify_engine_assets.defs.chain import checkpoint_dir_for
    from spotify_engine_assets.defs.listening import CHAIN
    from spotify_engine_assets.defs.resources import DataLake

    lake = DataLake(root=str(tmp_path))
    cfg = config("lightgcn")
    folder = checkpoint_dir_for(lake, CHAIN, cfg, "data-a", None)
    assert folder.parent == tmp_path.resolve() / "checkpoints" / "listening" / cfg.name
    assert checkpoint_dir_for(lake, CHAIN, cfg, "data-a", None) == folder
    others = {
        checkpoint_dir_for(lake, CHAIN, cfg, "data-b", None),
        checkpoint_dir_for(lake, CHAIN, config("lightgcn", lr=0.01), "data-a", None),
        checkpoint_dir_for(lake, CHAIN, cfg, "data-a", 5),
    }
    assert folder not in others and len(others) == 3


# ------------------------------------------------- a killed materialization of trained_model

DAGSTER_CONFIG = "gat_enhanced"
DAGSTER_EPOCHS = 40  # the killed run's cap; early stopping may end the resumed run sooner

MATERIALIZE_CHILD = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_resume import materialize_trained_model
result = materialize_trained_model(sys.argv[1], int(sys.argv[2]))
sys.exit(0 if result.success else 1)
"""


def materialize_trained_model(name: str, max_epochs: int, data_stage: bool = False):
    """Materialize ``trained_model`` for partition ``name``, capped at ``max_epochs`` (or, with
    ``data_stage``, the runner's data stage on the tiny world) with the project's definitions
    against the instance of ``$DAGSTER_HOME`` and the data lake of ``$SPOTIFY_ENGINE_DATA_LAKE``."""
    import dagster as dg

    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.runner import DATA_STAGE, dagster_home, run_config

    dagster_home()
    instance = dg.DagsterInstance.get()
    partitions = defs.resolve_asset_graph().get(dg.AssetKey(["listening", "trained_model"])).partitions_def
    if isinstance(partitions, dg.DynamicPartitionsDefinition) and not instance.has_dynamic_partition(
        partitions.name, name
    ):
        instance.add_dynamic_partitions(partitions.name, [name])
    if data_stage:
        selection, config, partition = DATA_STAGE, run_config("tiny_data.yaml"), None
    else:
        selection, config, partition = [dg.AssetKey(["listening", "trained_model"])], run_config(), name
        config.setdefault("ops", {})["listening__trained_model"] = {"config": {"max_epochs": max_epochs}}
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        run_config=config,
        instance=instance,
        resources=defs.resources,
        partition_key=partition,
        raise_on_error=False,
    )


def _failure(result) -> str:
    return " | ".join(
        f"{e.message} {e.step_failure_data.error.message}" for e in result.all_events if e.is_step_failure
    )


def test_killed_trained_model_materialization_resumes_and_keeps_the_previous_version(tmp_path, monkeypatch):
    from spotify_engine_assets.core.config import parse_config
    from spotify_engine_assets.core.data.graph import from_payload
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV
    from spotify_engine_assets.datasets.listening import DATASET

    lake = tmp_path / "lake"
    monkeypatch.setenv(DATA_LAKE_ENV, str(lake))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    data_run = materialize_trained_model(DAGSTER_CONFIG, 1, data_stage=True)
    assert data_run.success, _failure(data_run)
    store = ArtifactStore(lake / "artifacts")
    data = from_payload(load_torch(store.current(["listening", "graph"]) / "data.pt"))
    splits = load_torch(store.current(["listening", "split"]) / "data.pt")

    def load_model(artifact: dict, data):
        """The weights of a ``trained_model`` artifact in its config's model, ready to score."""
        config = parse_config(artifact["config"])
        return DATASET.load(config, data, splits[config.split], artifact["state"])[0]

    # 1. a complete, short materialization: the version that must survive the killed run
    first = materialize_trained_model(DAGSTER_CONFIG, 2)
    assert first.success, _failure(first)
    previous = store.current(["listening", "trained_model"], DAGSTER_CONFIG)
    assert load_torch(previous / "data.pt")["epochs_run"] == 2

    # 2. a longer run in a real subprocess, SIGKILLed once it has written a checkpoint
    child = subprocess.Popen(
        [sys.executable, "-c", MATERIALIZE_CHILD, DAGSTER_CONFIG, str(DAGSTER_EPOCHS)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    checkpoints = lake / "checkpoints" / "listening" / DAGSTER_CONFIG  # <config>/<run hash>/checkpoint.pt
    checkpoint = _kill_at_checkpoint(child, checkpoints, f"*/{CHECKPOINT_FILE}", timeout=180)
    killed_at = torch.load(checkpoint, weights_only=True)
    assert 1 <= killed_at["epoch"] < DAGSTER_EPOCHS and not killed_at["finished"], "the run was not killed mid-way"

    # 3. while the killed run is dead, the previous version is still current and loadable
    assert store.current(["listening", "trained_model"], DAGSTER_CONFIG) == previous
    survivor = load_torch(previous / "data.pt")
    assert survivor["epochs_run"] == 2
    load_model(survivor, data)

    # 4. re-materialized: resumes from the killed run's checkpoint and publishes a new version
    resumed = materialize_trained_model(DAGSTER_CONFIG, DAGSTER_EPOCHS)
    assert resumed.success, _failure(resumed)
    (event,) = resumed.asset_materializations_for_node("listening__trained_model")
    assert event.metadata["resumed_from_epoch"].value == killed_at["epoch"] > 0
    current = store.current(["listening", "trained_model"], DAGSTER_CONFIG)
    assert current != previous
    artifact = load_torch(current / "data.pt")
    assert artifact["epochs_run"] > killed_at["epoch"]
    strip = lambda rows: [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]  # noqa: E731
    assert strip(artifact["history"][: killed_at["epoch"]]) == strip(killed_at["history"])
    model = load_model(artifact, data)
    for key, value in artifact["state"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not checkpoint.exists()  # finished: the checkpoint is cleared
    load_model(load_torch(previous / "data.pt"), data)  # the old version stays loadable
