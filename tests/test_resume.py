"""Resumable training: a real training process killed with SIGKILL after its first checkpoint
resumes from that checkpoint and ends exactly like a run that was never interrupted.

(The resumed run happens in the test process: a second child would double the interpreter and
torch-geometric start-up, the slowest part of the test on a busy machine.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from spotify_engine_assets.lib.training import CHECKPOINT_FILE, build_model, num_nodes_of, train

sys.path.insert(0, str(Path(__file__).parent))
from test_training import config, toy_problem  # noqa: E402

TESTS = Path(__file__).parent
EPOCHS = 8

CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_training import config, toy_problem
from spotify_engine_assets.lib.training import build_model, num_nodes_of, train

checkpoint_dir, out, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
view, valid = toy_problem()
cfg = config("gat_enhanced", dropout=0.3, max_epochs={epochs}, patience=100, lr_patience=1,
             negatives_per_positive=3, grad_accumulation=2, batch_size=8)
weights = torch.linspace(0.5, 1.5, view[("user", "listens", "song")].edge_index.size(1))
model = build_model(cfg, num_nodes_of(view))
result = train(model, view, valid, cfg, weights=weights, checkpoint_dir=checkpoint_dir,
               on_epoch=lambda row: time.sleep(pause))
torch.save({{
    "history": [{{k: v for k, v in h.items() if k != "seconds"}} for h in result.history],
    "final_state": result.final_state, "best_state": result.best_state, "best_epoch": result.best_epoch,
    "resumed_from_epoch": result.resumed_from_epoch,
}}, out)
""".format(tests=str(TESTS), epochs=EPOCHS)


def _child(checkpoint_dir: Path, out: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(checkpoint_dir), str(out), str(pause)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run(checkpoint_dir=None):
    """The child's training run, in this process."""
    view, valid = toy_problem()
    cfg = config("gat_enhanced", dropout=0.3, max_epochs=EPOCHS, patience=100, lr_patience=1,
                 negatives_per_positive=3, grad_accumulation=2, batch_size=8)
    weights = torch.linspace(0.5, 1.5, view[("user", "listens", "song")].edge_index.size(1))
    return train(build_model(cfg, num_nodes_of(view)), view, valid, cfg, weights=weights, checkpoint_dir=checkpoint_dir)


def _reference():
    result = _run()
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
    return history, result


def test_sigkilled_training_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoint = checkpoints / CHECKPOINT_FILE
    first = _child(checkpoints, tmp_path / "never.pt", pause=0.3)
    deadline = time.monotonic() + 25
    try:
        while not checkpoint.exists():
            assert first.poll() is None, first.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 25 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.pt").exists()  # killed mid-way, never finished
    killed_at = torch.load(checkpoint, weights_only=True)
    assert 1 <= killed_at["epoch"] < EPOCHS and not killed_at["finished"]

    # resume in this process with a freshly built model: weights, optimizer, scheduler, sampling
    # generator and dropout RNG all come from the killed process's checkpoint
    resumed_result = _run(checkpoints)
    resumed = {
        "history": [{k: v for k, v in h.items() if k != "seconds"} for h in resumed_result.history],
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
    from spotify_engine_assets.defs.resources import DataLake
    from spotify_engine_assets.defs.training import checkpoint_dir_for

    lake = DataLake(root=str(tmp_path))
    cfg = config("lightgcn")
    folder = checkpoint_dir_for(lake, cfg, "data-a", None)
    assert folder.parent == tmp_path.resolve() / "checkpoints" / "trained_model" / cfg.name
    assert checkpoint_dir_for(lake, cfg, "data-a", None) == folder
    others = {
        checkpoint_dir_for(lake, cfg, "data-b", None),
        checkpoint_dir_for(lake, config("lightgcn", lr=0.01), "data-a", None),
        checkpoint_dir_for(lake, cfg, "data-a", 5),
    }
    assert folder not in others and len(others) == 3
