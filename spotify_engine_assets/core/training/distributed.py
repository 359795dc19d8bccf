"""Multi-process (data-parallel) training of one model: ``TrainableConfig.world_size`` > 1.

:func:`train_distributed` writes a job (the model as its config, schema, node counts and weights;
the training view; the validation pairs; the protocol as its class and fields; the loss weights and
task labels; the torch RNG state: tensors and plain containers only, so every rank loads it with
``weights_only=True``) to a temporary folder and runs
``python -m torch.distributed.run --standalone --nproc_per_node=world_size`` on this module: a
127.0.0.1 rendezvous, ``gloo`` on the CPU (``nccl`` when the view is on CUDA, one GPU per rank),
one torch thread per rank. A launcher starts it (:data:`Launcher`): by default a child process
whose output is relayed line by line to ``log``; the Dagster asset passes one that runs it through
Dagster Pipes (``defs/ddp_pipes.py``; this module imports no Dagster). Rank 0 writes the
:class:`FitResult` back, and the caller's model is left holding its best state.

Each rank runs the one trainer (:mod:`.trainer`) with three changes:

* **Sharded steps.** Every rank draws the *whole* step from the same seeded generator (shuffle,
  negatives, surrogate candidates), so the ranks agree on it without communication, then scores
  only its contiguous shard of the step's units (bpr: positives, softmax: users). Each rank
  propagates over the full graph (replicated; full-graph models have no per-unit forward pass).
* **Gradient all-reduce.** A rank's loss (and L2 term) is scaled by its share of the step's units
  (softmax: of its pairs) and the gradients are summed over ranks with one ``all_reduce`` of a
  flat buffer (a manual all-reduce rather than ``DistributedDataParallel``: the models run custom
  sparse autograd functions and some parameters get no gradient in a step, which DDP handles
  only with ``find_unused_parameters``; the flat sum is also simpler to prove exact). The mean
  losses are sums over units divided by their count, so the summed gradient is the 1-process
  step's gradient, up to float summation order: 2 ranks train the same model as 1 process.
  Terms of the step's distinct users and items (orthogonality, attention entropy, surrogates) are
  not such sums; the config rejects them with ``world_size > 1``.
* **Validation on rank 0.** Rank 0 validates; its metrics are broadcast, so every rank steps the
  ReduceLROnPlateau schedule and takes the early-stopping decision on the same numbers. Only
  rank 0 writes checkpoints (every rank resumes from the same file). Sampled steps
  (``neighbor_fanouts``) sample neighbourhoods with a per-rank generator (``seed + rank offset``),
  so they match 1-process training in distribution, not bit for bit; that generator is not in the
  checkpoint.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch_geometric.data import HeteroData

from ..config import TrainableConfig, parse_config
from ..data.graph import Schema, from_payload, to_payload
from ..evaluation.protocol import Protocol
from ..models.base import FitResult, GraphModel
from .trainer import AdvancedTrainer, Logger, SimpleTrainer, validate

JOB_FILE, RESULT_FILE = "job.pt", "result.pt"
RANK_SEED_OFFSET = 7919  # sampled steps: rank r samples neighbourhoods with seed + 7919 * r
PACKAGE_ROOT = Path(__file__).resolve().parents[3]


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA tensors, ``gloo`` for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


class ShardedSteps:
    """The distributed trainer's changes (module docstring); mixed in before a trainer class."""

    def _setup_ranks(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.sample_generator = torch.Generator().manual_seed(self.config.seed + RANK_SEED_OFFSET * self.rank)
        self.trained_parameters = [p for p in self.model.parameters() if p.requires_grad]

    def _part(self, units: int) -> slice | None:
        """Rank ``r``'s contiguous shard: sizes differ by at most one (``tensor_split``'s)."""
        base, extra = divmod(units, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def _optimize(self, loss: Tensor | None, users: Tensor, items: Tensor, share: float = 1.0) -> float:
        if loss is not None:
            if self.config.l2:
                loss = loss + self.config.l2 * self.model.ego_l2(users, items)
            loss = loss * share
        self.optimizer.zero_grad()
        if loss is not None:
            loss.backward()
        params = self.trained_parameters
        # which parameters got a gradient on any rank (the others stay None, as Adam skips them in one process)
        head = torch.tensor(
            [0.0 if loss is None else float(loss.detach())] + [float(p.grad is not None) for p in params],
            dtype=torch.float64,
            device=self.device,
        )
        dist.all_reduce(head)
        present = [p for p, flag in zip(params, head[1:].tolist()) if flag > 0]
        if present:
            flat = torch.cat(
                [(p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)).flatten() for p in present]
            )
            dist.all_reduce(flat)
            for p, grad in zip(present, flat.split([p.numel() for p in present])):
                p.grad = grad.view_as(p)
        self.optimizer.step()
        return float(head[0])


class DistributedSimpleTrainer(ShardedSteps, SimpleTrainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_ranks()


class DistributedAdvancedTrainer(ShardedSteps, AdvancedTrainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup_ranks()

    def _validation(self) -> dict[str, float]:
        box = [
            validate(self.model, self.view, self.valid_pairs, self.protocol, self.valid_users)
            if self.rank == 0
            else None
        ]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def _after_epoch(self, epoch: int, row: dict, finished: bool) -> bool:
        if self.rank == 0:
            return super()._after_epoch(epoch, row, finished)
        path, self.checkpoint_path = self.checkpoint_path, None  # rank 0 writes the checkpoint
        try:
            return super()._after_epoch(epoch, row, finished)
        finally:
            self.checkpoint_path = path


@dataclasses.dataclass(frozen=True)
class Launch:
    """One multi-process training to start (what a :data:`Launcher` runs): ``world_size`` torchrun
    ranks on the job in ``folder``, with ``env`` as their whole environment."""

    folder: Path
    world_size: int
    backend: str
    env: dict[str, str]
    config_name: str

    def command(self, module: str = __name__) -> list[str]:
        """``python -m torch.distributed.run`` (torchrun: a 127.0.0.1 rendezvous, no restarts) running
        ``module`` on every rank with the folder as its argument; ``module`` must call :func:`worker`
        on it (this module does)."""
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.world_size}",
            "--max-restarts=0",
            "-m",
            module,
            str(self.folder),
        ]


Launcher = Callable[[Launch, Logger], None]
"""Runs a :class:`Launch` to its end, relaying what the ranks log to the logger; raises
RuntimeError when they fail. :func:`run_subprocess` is the default; the Dagster asset launches
through Dagster Pipes instead (``defs/ddp_pipes.py``)."""


def run_subprocess(launch: Launch, log: Logger, timeout_s: float | None = None) -> None:
    """The plain launcher: torchrun as a child process, its output (rank 0's log, the other ranks'
    and torchrun's messages) relayed line by line to ``log``; a failure's message ends with the last
    40 lines."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    process = subprocess.Popen(
        launch.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=launch.env
    )
    try:
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            log(line)
        code = process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 0:
        raise RuntimeError(
            f"config {launch.config_name!r}: distributed training failed (exit {code}):\n" + "\n".join(tail)
        )


def train_distributed(
    model: GraphModel,
    view: HeteroData,
    valid_pairs: Tensor | None,
    config: TrainableConfig,
    *,
    protocol: Protocol,
    max_epochs: int | None = None,
    log: Logger | None = None,
    on_epoch=None,
    users: Tensor | None = None,
    weights: Tensor | None = None,
    task_labels: Tensor | None = None,
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 1,
    timeout_s: float | None = None,
    launcher: Launcher | None = None,
) -> FitResult:
    """Train ``model`` in ``config.world_size`` torchrun processes (module docstring) started by
    ``launcher`` (default :func:`run_subprocess` with ``timeout_s``); the model ends holding the
    result's best state. Arguments as :func:`.trainer.train` (``on_epoch`` must be None: epochs are
    not reported live across processes).

    Raises:
        ValueError: ``on_epoch`` given, or fewer CUDA devices than ranks.
        RuntimeError: a worker failed (the plain launcher's message ends with the workers' last output lines).
    """
    log = log or (lambda message: None)
    world = config.world_size
    if on_epoch is not None:
        raise ValueError(
            f"config {config.name!r}: world_size {world} trains in other processes and cannot call "
            "on_epoch each epoch (e.g. a study's pruning); use world_size: 1"
        )
    device = view[model.schema.interaction].edge_index.device
    if device.type == "cuda" and torch.cuda.device_count() < world:
        raise ValueError(
            f"config {config.name!r}: world_size {world} on CUDA needs one GPU per rank; this machine "
            f"has {torch.cuda.device_count()}"
        )
    if launcher is None:
        launcher = functools.partial(run_subprocess, timeout_s=timeout_s)
    with tempfile.TemporaryDirectory(prefix="ddp-train-") as folder:
        # plain containers and tensors only (loaded with weights_only=True): the model travels as its
        # config, schema, node counts and weights, the protocol as its class and fields
        job = {
            "config": config.model_dump(),
            "schema": dataclasses.asdict(model.schema),
            "num_nodes": {t: int(view[t].num_nodes) for t in view.node_types},
            "state": model.state_dict(),
            "view": to_payload(view),
            "valid_pairs": valid_pairs,
            "protocol": protocol_payload(protocol),
            "device": device.type,
            "torch_rng": torch.get_rng_state(),
            "options": dict(max_epochs=max_epochs, users=users, weights=weights, task_labels=task_labels),
            "advanced": dict(
                checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
                checkpoint_every=checkpoint_every,
            ),
        }
        torch.save(job, Path(folder) / JOB_FILE)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
        }
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the rendezvous is 127.0.0.1
        launch = Launch(Path(folder), world, backend_for(device), env, config.name)
        log(f"training in {world} processes ({launch.backend}): {' '.join(launch.command()[1:6])}")
        launcher(launch, log)
        result_path = Path(folder) / RESULT_FILE
        if not result_path.exists():
            raise RuntimeError(
                f"config {config.name!r}: distributed training ended without rank 0's result ({RESULT_FILE})"
            )
        with torch.serialization.safe_globals([FitResult]):
            result = torch.load(result_path, weights_only=True)
    model.load_state_dict(result.best_state)
    return result


def protocol_payload(protocol: Protocol) -> dict:
    """A dataclass protocol as its class path and field values (tensors, strings, tuples)."""
    cls = type(protocol)
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "fields": {f.name: getattr(protocol, f.name) for f in dataclasses.fields(protocol)},
    }


def protocol_from_payload(payload: dict) -> Protocol:
    """The protocol :func:`protocol_payload` describes; the class must be a :class:`Protocol`."""
    module, _, name = payload["class"].partition(":")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Protocol)):
        raise ValueError(f"distributed job: {payload['class']!r} is not an evaluation protocol")
    return cls(**payload["fields"])


def _cpu(state: dict) -> dict:
    return {key: value.cpu() for key, value in state.items()}


def worker(folder: Path, log: Logger | None = None) -> dict | None:
    """One rank (run by torchrun): the job's trainer over this rank's shards; rank 0 saves the result
    and logs to ``log`` (default: its stdout). Returns, on rank 0 only, what the ranks did: the
    backend, every rank's process, host and seconds (wall, from the job's load to the end of its
    fit) and the fit's per-epoch history."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    job = torch.load(folder / JOB_FILE, map_location="cpu", weights_only=True)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if job["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))
    try:
        rank = dist.get_rank()
        config: TrainableConfig = parse_config(job["config"])
        from ..models import build_model  # the model registry imports the trainer

        model = build_model(config, Schema(**job["schema"]), job["num_nodes"])  # seeds torch: RNG state after it
        model.load_state_dict(job["state"])
        torch.set_rng_state(job["torch_rng"])  # the caller's global RNG (e.g. dropout masks), the same on every rank
        model, view = model.to(device), from_payload(job["view"]).to(device)
        rank_log = (log or (lambda message: print(message, flush=True))) if rank == 0 else None
        options = dict(job["options"], log=rank_log)
        if config.trainer == "simple":
            trainer = DistributedSimpleTrainer(model, view, config, **options)
        else:
            protocol = protocol_from_payload(job["protocol"])
            trainer = DistributedAdvancedTrainer(
                model, view, config, job["valid_pairs"], protocol=protocol, **job["advanced"], **options
            )
        result = trainer.fit()
        if rank == 0:
            result.best_state, result.final_state = _cpu(result.best_state), _cpu(result.final_state)
            torch.save(result, folder / RESULT_FILE)
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(
            ranks,
            {
                "rank": rank,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "device": str(device),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        dist.barrier()
        if rank == 0:
            return {
                "backend": backend_for(device),
                "world_size": dist.get_world_size(),
                "ranks": ranks,
                "history": result.history,
                "epochs_run": result.epochs_run,
                "fit_seconds": result.seconds,
            }
        return None
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
