"""The one trainer of every trainable model of every chain.

Losses (``TrainableConfig.loss``):

* ``bpr`` - BPR on (user, positive, negative) triples; negatives are drawn uniformly from items
  the user has not interacted with in training (vectorized rejection sampling),
  ``negatives_per_positive`` of them per positive (a positive's loss is the mean over its
  negatives). An epoch shuffles the training edges and takes ``steps_per_epoch`` (default 16)
  optimizer steps over all of them, each one forward pass over the message-passing view (the
  models are full-graph GNNs), so epoch cost grows linearly in the edges. With
  ``steps_per_epoch: null`` a step takes ``batch_size * grad_accumulation`` positives instead
  (``E / batch_size`` full-graph passes an epoch); ``grad_accumulation`` scores micro-batches
  from that one pass, so a step with accumulation ``k`` is exactly a step of batch size
  ``k * batch_size``. LightGCN's ``neighbor_fanouts`` trains on sampled neighbourhoods instead
  (``core/training/neighbors.py``): a step of ``batch_size`` positives embeds only its users and
  items, from their sampled blocks, so memory is bounded by the batch, not the graph.
* ``softmax`` - a multinomial likelihood over the whole catalogue: an epoch shuffles the users
  with training items and takes ``steps_per_epoch`` steps over them (or one per ``batch_size``
  users),
  ``-sum_{i in train(u)} log softmax(e_u . E / temperature)_i`` over the batch's pairs divided by
  their number (embeddings L2-normalised first when ``normalize``).

Both add ``l2`` times the squared norm of the step's id embeddings, weight each interaction
(``weight_*``: ``core/training/inputs.py``), and add the config's regularizers, task heads (labels
from the training edges' own attributes only) and multi-objective surrogates: top-k lists are not
differentiable, so each step draws ``surrogate_candidates`` items uniformly and takes each distinct
user's softmax over them as a soft top-k list (``core/training/losses.py``).

Trainers: :class:`BaseTrainer` owns the epoch/step loop; :class:`SimpleTrainer` runs fixed epochs,
:class:`AdvancedTrainer` validates on the chain's metric (the protocol's ``monitor``: Recall@10
listening, R-precision playlists, NDCG@20 Last.fm), stops early and writes resumable checkpoints.
``config.trainer`` picks one; :func:`train` is the entry point.

With ``fusion`` the trained model's scores are then mixed with a closed-form model's (ItemKNN,
EASE, category popularity, ...) at the weight of :data:`FUSION_WEIGHTS` that maximizes the
validation metric (ties: the smaller share of the fused model). The weights stop short of 1: a
fused config always keeps the graph model's scores in its ranking.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ..config import TrainableConfig
from ..evaluation.protocol import LinkPrediction, Protocol
from ..models.base import FitResult, GraphModel, sample_users
from ..storage.artifacts import load_torch, save_torch
from .losses import bpr_step_loss, sampled_bpr_loss, softmax_step_loss
from .sampling import known_keys, sample_negatives

Logger = Callable[[str], None]
CHECKPOINT_FILE = "checkpoint.pt"
FUSION_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_PROTOCOL = LinkPrediction()


class NonFiniteLossError(ValueError):
    """Training diverged: an epoch's loss is NaN or infinite (the weights are not a model)."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


def check_finite_loss(loss: float, epoch: int, config: TrainableConfig) -> None:
    """Stop training at the first epoch whose mean loss is not finite (a NaN step makes every later one NaN)."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"config {config.name!r}: training diverged, epoch {epoch} loss is {loss} (lr {config.lr}); "
            "no model is stored - lower lr or check the data and weights",
            epoch,
        )


class BaseTrainer:
    """The epoch/step loop every trainer shares. Subclasses decide what happens around the loop
    (:meth:`_begin`, :meth:`_epoch_metrics`, :meth:`_after_epoch`, :meth:`_end`).

    Args:
        model: A graph model (its schema names the interaction relation).
        view: The message-passing graph (training interactions only).
        config: The model's config.
        max_epochs: Overrides ``config.max_epochs`` (e.g. a tiny CI run).
        log: Receives one progress line per epoch.
        on_epoch: Called with each epoch's history row; an exception it raises (e.g. a pruned
            hyperparameter trial) stops training and propagates.
        users: Train only on these users' interactions (a config's ``user_sample``; None: all).
        weights: Per-interaction loss weights aligned with the view's interaction edges.
        task_labels: ``[E_train, T]`` labels of the config's task heads; required exactly when the
            config has task heads.
    """

    def __init__(
        self,
        model: GraphModel,
        view: HeteroData,
        config: TrainableConfig,
        *,
        max_epochs: int | None = None,
        log: Logger | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        users: Tensor | None = None,
        weights: Tensor | None = None,
        task_labels: Tensor | None = None,
    ) -> None:
        if not config.trainable:
            raise ValueError(f"config {config.name!r}: model {config.model!r} is not trainable")
        self.model, self.view, self.config = model, view, config
        self.log = log or (lambda message: None)
        self.on_epoch = on_epoch
        self.epochs = max_epochs or config.max_epochs
        # sampling and batching run on the CPU (seeded generator); a step's tensors move to the view's device
        self.device = view[model.schema.interaction].edge_index.device
        self.train_pairs = view[model.schema.interaction].edge_index.cpu()
        edges = self.train_pairs.size(1)
        if weights is not None:
            if weights.shape != (edges,):
                raise ValueError(f"weights must have one value per training edge ({edges}), got {tuple(weights.shape)}")
            if not torch.isfinite(weights).all() or (weights < 0).any():
                raise ValueError("weights must be finite and non-negative")
        if config.tasks:
            if task_labels is None or task_labels.shape != (edges, len(config.tasks)):
                got = None if task_labels is None else tuple(task_labels.shape)
                raise ValueError(
                    f"config {config.name!r} trains task heads {list(config.tasks)}: pass task_labels of shape "
                    f"({edges}, {len(config.tasks)}) from task_labels(config, data, schema, train_index), got {got}"
                )
            if not hasattr(model, "task_heads"):
                raise ValueError(
                    f"config {config.name!r}: the model has no task heads; build it with build_model(config, ...)"
                )
        elif task_labels is not None:
            raise ValueError(
                f"config {config.name!r} has no task head (task_*_weight are 0) but task_labels were given"
            )
        self.num_items = int(view[model.schema.item].num_nodes)
        if config.surrogates and config.surrogate_candidates > self.num_items:
            raise ValueError(
                f"config {config.name!r}: surrogate_candidates {config.surrogate_candidates} exceeds the catalogue's "
                f"{self.num_items} {model.schema.item}s"
            )
        self.users = users
        self.edges = None if users is None else torch.nonzero(torch.isin(self.train_pairs[0], users)).flatten()
        if self.edges is not None and self.edges.numel() == 0:
            raise ValueError(f"config {config.name!r}: no training edge among the sampled users")
        if config.loss == "softmax":
            order = torch.argsort(self.train_pairs[0] if self.edges is None else self.train_pairs[0, self.edges])
            self.pair_edges = order if self.edges is None else self.edges[order]
            self.pair_users, self.pair_items = (
                self.train_pairs[0, self.pair_edges],
                self.train_pairs[1, self.pair_edges],
            )
            self.units = torch.unique(self.pair_users)
        self.weights, self.task_labels = weights, task_labels
        self.generator = torch.Generator().manual_seed(config.seed)
        self.sample_generator = self.generator  # neighbourhood sampling (one per rank in distributed training)
        self.known_keys = known_keys(self.train_pairs, self.num_items)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.result = FitResult()

    # ---------------------------------------------------------------- hooks
    def _begin(self) -> tuple[int, bool]:
        """Prepare; return the first epoch to run and whether training is already finished."""
        return 1, False

    def _epoch_metrics(self, epoch: int) -> dict:
        """Extra history columns after an epoch's training steps (e.g. validation)."""
        return {}

    def _after_epoch(self, epoch: int, row: dict, finished: bool) -> bool:
        """Book-keeping after an epoch; returns whether training stops."""
        return finished

    def _end(self) -> None:
        """Settle the result after the last epoch (the model's weights are the final ones)."""

    # ---------------------------------------------------------------- steps
    def _edge_inputs(self, edges: Tensor) -> dict:
        """The loss weights and task labels of a step's training edges, and its surrogate candidates (drawn now)."""
        candidates = None
        if self.config.surrogates:
            candidates = torch.randperm(self.num_items, generator=self.generator)[: self.config.surrogate_candidates]
        inputs = {
            "weights": None if self.weights is None else self.weights[edges],
            "labels": None if self.task_labels is None else self.task_labels[edges],
            "candidates": candidates,
        }
        return {key: None if value is None else value.to(self.device) for key, value in inputs.items()}

    def _part(self, units: int) -> slice | None:
        """This process's share of a step's ``units`` (None: all of them; distributed training
        takes a shard, ``core/training/distributed.py``)."""
        return None

    def _optimize(self, loss: Tensor | None, users: Tensor, items: Tensor, share: float = 1.0) -> float:
        """One optimizer step on ``loss`` plus the L2 penalty of the step's id embeddings (``share``:
        the fraction of the step's units this process holds, used by distributed training only)."""
        if self.config.l2:
            loss = loss + self.config.l2 * self.model.ego_l2(users, items)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def _bpr_step(self, batch: Tensor) -> float:
        config = self.config
        users, positives = self.train_pairs[0, batch], self.train_pairs[1, batch]
        draws = users.repeat_interleave(config.negatives_per_positive) if config.negatives_per_positive > 1 else users
        negatives = sample_negatives(draws, self.known_keys, self.num_items, self.generator).view(users.numel(), -1)
        share, part = 1.0, self._part(users.numel())
        if part is not None:  # the whole step was drawn (the same on every rank); this rank scores its shard
            share = (part.stop - part.start) / users.numel()
            batch, users, positives, negatives = batch[part], users[part], positives[part], negatives[part]
        users, positives, negatives = users.to(self.device), positives.to(self.device), negatives.to(self.device)
        inputs = self._edge_inputs(batch)
        if users.numel() == 0:
            return self._optimize(None, users, positives, 0.0)
        if getattr(config, "neighbor_fanouts", None):
            loss = sampled_bpr_loss(
                self.model,
                self.view,
                users,
                positives,
                negatives,
                inputs["weights"],
                config.neighbor_fanouts,
                self.sample_generator,
            )
            return self._optimize(loss, users, torch.cat([positives, negatives.flatten()]), share)
        loss = bpr_step_loss(
            self.model, self.view, users, positives, negatives, micro_batch=config.batch_size, config=config, **inputs
        )
        return self._optimize(loss, users, torch.cat([positives, negatives.flatten()]), share)

    def _softmax_step(self, batch_users: Tensor) -> float:
        part, pairs = self._part(batch_users.numel()), None
        if part is not None:  # this rank's users of the step; the loss's share is its share of the step's pairs
            pairs = int(torch.isin(self.pair_users, batch_users).sum())
            batch_users = batch_users[part]
        row_of = torch.full((int(self.units.max()) + 1,), -1, dtype=torch.long)
        row_of[batch_users] = torch.arange(batch_users.numel())
        mask = row_of[self.pair_users] >= 0
        rows, items, edges = row_of[self.pair_users[mask]], self.pair_items[mask], self.pair_edges[mask]
        inputs = self._edge_inputs(edges)
        batch_users, rows, items = batch_users.to(self.device), rows.to(self.device), items.to(self.device)
        share = 1.0 if pairs is None else rows.numel() / pairs
        if rows.numel() == 0:
            return self._optimize(None, batch_users, items, 0.0)
        loss = softmax_step_loss(self.model, self.view, batch_users, rows, items, config=self.config, **inputs)
        return self._optimize(loss, batch_users[rows], items, share)

    def _batches(self) -> tuple[Tensor, ...]:
        """The epoch's optimizer steps over the shuffled units (edges for BPR, users for softmax):
        ``steps_per_epoch`` near-equal chunks (at most one per unit), or with ``steps_per_epoch``
        None chunks of ``batch_size`` (x ``grad_accumulation`` for BPR)."""
        config = self.config
        if config.loss == "softmax":
            order = self.units[torch.randperm(self.units.numel(), generator=self.generator)]
        else:
            count = self.train_pairs.size(1) if self.edges is None else self.edges.numel()
            order = torch.randperm(count, generator=self.generator)
            if self.edges is not None:
                order = self.edges[order]
        if config.steps_per_epoch is None:
            return order.split(config.batch_size * (1 if config.loss == "softmax" else config.grad_accumulation))
        steps = config.steps_in_epoch(order.numel())
        return order.tensor_split(steps) if steps else ()

    def _train_epoch(self) -> float:
        """One pass over the shuffled training units; the mean step loss."""
        self.model.train()
        step = self._softmax_step if self.config.loss == "softmax" else self._bpr_step
        losses = [step(batch) for batch in self._batches()]
        return sum(losses) / max(len(losses), 1)

    def fit(self) -> FitResult:
        result = self.result
        started = time.perf_counter()
        first_epoch, finished = self._begin()
        for epoch in range(first_epoch, self.epochs + 1):
            if finished:
                break
            epoch_start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            loss = self._train_epoch()
            check_finite_loss(loss, epoch, self.config)
            train_seconds, cpu = time.perf_counter() - epoch_start, resource.getrusage(resource.RUSAGE_SELF)
            row = {"epoch": epoch, "loss": loss, **self._epoch_metrics(epoch)}
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["seconds"] = time.perf_counter() - epoch_start
            row["train_seconds"] = train_seconds  # the optimizer steps alone, validation excluded
            # the process's CPU time in those steps: system time is page faults and allocator churn
            row["user_seconds"], row["sys_seconds"] = (
                cpu.ru_utime - cpu_start.ru_utime,
                cpu.ru_stime - cpu_start.ru_stime,
            )
            result.history.append(row)
            shown = "".join(
                f" {key.replace('_', ' ')} {value:.4f}" for key, value in row.items() if key.startswith("valid_")
            )
            self.log(
                f"epoch {epoch}/{self.epochs}: loss {loss:.4f}{shown} | "
                f"{epoch_progress(result.history[first_epoch - 1 :], self.epochs - epoch)}"
            )
            if self.on_epoch is not None:
                self.on_epoch(row)
            finished = self._after_epoch(epoch, row, epoch == self.epochs)
        result.epochs_run = len(result.history)
        result.seconds = time.perf_counter() - started
        result.final_state = copy.deepcopy(self.model.state_dict())
        self._end()
        return result


class SimpleTrainer(BaseTrainer):
    """Fixed epochs at the config's fixed learning rate: no validation, no early stopping, no
    checkpoints. The result's best state is the final state (``best_epoch`` = the last epoch,
    ``best_valid`` None)."""

    def _end(self) -> None:
        self.result.best_state = copy.deepcopy(self.result.final_state)
        self.result.best_epoch = self.result.epochs_run
        self.result.best_valid = None


class AdvancedTrainer(BaseTrainer):
    """The protocol's validation metric every ``eval_every`` epochs (and after the last) on the
    validation pairs (training items masked), ReduceLROnPlateau on it (unless ``lr_patience`` is
    None), early stopping after ``patience`` validations without gain, the best weights restored at
    the end. With ``checkpoint_dir`` it saves ``checkpoint.pt`` atomically every ``checkpoint_every``
    epochs (and at the end) - weights, optimizer, scheduler, the torch and sampling RNG states,
    history, best state and epoch, and a fingerprint of the config, epoch cap and training data - and
    a later call with the same folder and fingerprint continues from it (loaded with
    ``weights_only=True``), ending exactly as an uninterrupted run.

    Args:
        valid_pairs: ``[2, E]`` validation (user, item) pairs (training items masked when ranking).
        protocol: The chain's evaluation protocol (its ``monitor`` is the validation metric).
        checkpoint_dir: Folder for ``checkpoint.pt``; a matching checkpoint there is resumed.
        checkpoint_every: Write a checkpoint every this many epochs (and after the last one).
    """

    def __init__(
        self,
        model: GraphModel,
        view: HeteroData,
        config: TrainableConfig,
        valid_pairs: Tensor,
        *,
        protocol: Protocol = DEFAULT_PROTOCOL,
        checkpoint_dir: Path | str | None = None,
        checkpoint_every: int = 1,
        **options,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if valid_pairs is None or valid_pairs.numel() == 0:
            raise ValueError(f"config {config.name!r}: the advanced trainer needs validation pairs")
        super().__init__(model, view, config, **options)
        self.valid_pairs, self.protocol = valid_pairs, protocol
        self.valid_users = validation_users(valid_pairs, config, self.users)
        self.monitor = f"valid_{protocol.monitor}"
        self.result.monitor = protocol.monitor
        self.checkpoint_every = checkpoint_every
        self.scheduler = (
            None
            if config.lr_patience is None
            else torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", factor=config.lr_factor, patience=config.lr_patience
            )
        )
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
        self.fingerprint = (
            ""
            if self.checkpoint_path is None
            else _fingerprint(config, self.epochs, model, view, self.users, self.weights, self.task_labels)
        )

    def _begin(self) -> tuple[int, bool]:
        result = self.result
        result.best_state = copy.deepcopy(self.model.state_dict())
        result.best_valid = -1.0
        path = self.checkpoint_path
        state = None if path is None else _load_checkpoint(path, self.fingerprint, self.log)
        if state is None:
            return 1, False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        result.history, result.best_state = list(state["history"]), state["best_state"]
        result.best_epoch, result.best_valid = int(state["best_epoch"]), float(state["best_valid"])
        result.resumed_from_epoch = int(state["epoch"])
        self.log(f"resumed from checkpoint at epoch {state['epoch']}")
        return int(state["epoch"]) + 1, bool(state["finished"])

    def _epoch_metrics(self, epoch: int) -> dict:
        if epoch % self.config.eval_every and epoch != self.epochs:
            return {}
        metrics = self._validation()
        if self.scheduler is not None:
            self.scheduler.step(metrics[self.protocol.monitor])
        return {f"valid_{name}": value for name, value in metrics.items() if not name.endswith("_evaluated")}

    def _validation(self) -> dict[str, float]:
        """The validation metrics of the current weights (distributed training: rank 0's, broadcast)."""
        return validate(self.model, self.view, self.valid_pairs, self.protocol, self.valid_users)

    def _after_epoch(self, epoch: int, row: dict, finished: bool) -> bool:
        result = self.result
        if self.monitor in row:
            if row[self.monitor] > result.best_valid:
                result.best_valid = row[self.monitor]
                result.best_epoch = epoch
                result.best_state = copy.deepcopy(self.model.state_dict())
            elif epoch - result.best_epoch >= self.config.patience * self.config.eval_every:
                self.log(f"early stop at epoch {epoch}; best epoch {result.best_epoch}")
                finished = True
        if self.checkpoint_path is not None and (finished or epoch % self.checkpoint_every == 0):
            state = {
                "fingerprint": self.fingerprint,
                "epoch": epoch,
                "finished": finished,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": result.history,
                "best_state": result.best_state,
                "best_epoch": result.best_epoch,
                "best_valid": result.best_valid,
            }
            save_torch(state, self.checkpoint_path)
        return finished

    def _end(self) -> None:
        self.model.load_state_dict(self.result.best_state)


def epoch_progress(rows: list[dict], remaining: int) -> str:
    """``"0.52 s/epoch, ETA 25 s"``: the mean wall seconds (validation included) of the epochs
    ``rows`` run in this process and the time the ``remaining`` epochs would take at that pace
    (an upper bound when early stopping may end the run sooner)."""
    pace = sum(row["seconds"] for row in rows) / max(len(rows), 1)
    return f"{pace:.2f} s/epoch, ETA {format_duration(pace * remaining)}"


def format_duration(seconds: float) -> str:
    """``"25 s"``, ``"3 min 20 s"``, ``"1 h 05 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def validation_users(valid_pairs: Tensor | None, config: TrainableConfig, users: Tensor | None = None) -> Tensor | None:
    """The users validation ranks for: those with validation pairs (among ``users`` when given),
    a seeded sample of ``config.valid_users`` of them when there are more (None: every one)."""
    if valid_pairs is None or config.valid_users is None:
        return users
    candidates = torch.unique(valid_pairs[0])
    if users is not None:
        candidates = candidates[torch.isin(candidates, users)]
    sample = sample_users(candidates.numel(), config.valid_users, config.seed)
    return users if sample is None else candidates[sample]


@torch.no_grad()
def validate(
    model: GraphModel,
    view: HeteroData,
    valid_pairs: Tensor,
    protocol: Protocol,
    users: Tensor | None = None,
    fusion_weight: float | None = None,
) -> dict[str, float]:
    """The protocol's validation metrics of the model's current weights on ``view`` (evaluation
    mode; training interactions masked); with ``fusion_weight``, of its fused scores."""
    model.prepare(view)
    score = model.embedding_scores if fusion_weight is None else (lambda users_: model.score(users_, fusion_weight))
    return protocol.validate(
        score, view[model.schema.interaction].edge_index.cpu(), valid_pairs.cpu(), model.num_items, users
    )


def choose_fusion_weight(
    model: GraphModel,
    view: HeteroData,
    valid_pairs: Tensor,
    protocol: Protocol,
    users: Tensor | None = None,
    log: Logger | None = None,
) -> dict[float, float]:
    """Set ``model.fusion_weight`` to the weight of :data:`FUSION_WEIGHTS` with the best validation
    metric of the fused scores (ties: the smaller share of the fused model); returns each weight's value."""
    fusion = {w: validate(model, view, valid_pairs, protocol, users, w)[protocol.monitor] for w in FUSION_WEIGHTS}
    chosen = max(fusion, key=lambda weight: (fusion[weight], -weight))
    model.fusion_weight.fill_(chosen)
    (log or (lambda message: None))(
        f"{model.config.fusion.model} fusion weight {chosen} (validation {protocol.monitor} {fusion[chosen]:.4f}; {fusion[0.0]:.4f} without)"
    )
    return fusion


def train(
    model: GraphModel,
    view: HeteroData,
    valid_pairs: Tensor | None,
    config: TrainableConfig,
    max_epochs: int | None = None,
    log: Logger | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    *,
    protocol: Protocol = DEFAULT_PROTOCOL,
    users: Tensor | None = None,
    weights: Tensor | None = None,
    task_labels: Tensor | None = None,
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 1,
    launcher=None,
) -> FitResult:
    """Train ``model`` on the interactions of ``view`` with the config's trainer (module docstring).

    ``config.trainer == "advanced"`` (default): :class:`AdvancedTrainer` (validation on
    ``valid_pairs`` with ``protocol``, early stopping, ReduceLROnPlateau, checkpoints in
    ``checkpoint_dir``); ``"simple"``: :class:`SimpleTrainer` (``valid_pairs`` unused; a
    ``checkpoint_dir`` is an error, it writes none). On return the model holds the result's best
    state (and its fusion weight) and is prepared to score on ``view``. Arguments: see
    :class:`BaseTrainer` and :class:`AdvancedTrainer`. With ``config.world_size > 1`` the same
    trainer runs in that many torchrun processes started by ``launcher`` (:mod:`.distributed`;
    None: a child process; ignored with world_size 1; ``on_epoch`` is then an error), and the
    fusion weight is chosen here afterwards.
    """
    if not config.trainable:
        raise ValueError(f"config {config.name!r}: model {config.model!r} is not trainable")
    options = dict(
        max_epochs=max_epochs, log=log, on_epoch=on_epoch, users=users, weights=weights, task_labels=task_labels
    )
    if config.trainer == "simple" and checkpoint_dir is not None:
        raise ValueError(f"config {config.name!r}: the simple trainer writes no checkpoints; use trainer: advanced")
    if config.world_size > 1:
        from .distributed import train_distributed

        result = train_distributed(
            model,
            view,
            valid_pairs,
            config,
            protocol=protocol,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            launcher=launcher,
            **options,
        )
    elif config.trainer == "simple":
        result = SimpleTrainer(model, view, config, **options).fit()
    else:
        result = AdvancedTrainer(
            model,
            view,
            config,
            valid_pairs,
            protocol=protocol,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            **options,
        ).fit()
    model.prepare(view)
    if config.fusion is not None:
        if config.fusion_weight is None:
            users = validation_users(valid_pairs, config, users)
            result.fusion = choose_fusion_weight(model, view, valid_pairs, protocol, users, log)
        else:
            model.fusion_weight.fill_(config.fusion_weight)
        result.best_state = copy.deepcopy(model.state_dict())
    return result


def _fingerprint(
    config: TrainableConfig,
    epochs: int,
    model: GraphModel,
    view: HeteroData,
    users: Tensor | None,
    weights: Tensor | None,
    labels: Tensor | None = None,
) -> str:
    """What a checkpoint belongs to: the config, the epoch cap and the training data."""
    digest = hashlib.sha256(json.dumps({"config": config.model_dump(), "epochs": epochs}, sort_keys=True).encode())
    digest.update(view[model.schema.interaction].edge_index.cpu().numpy().tobytes())
    digest.update(str({t: int(view[t].num_nodes) for t in view.node_types}).encode())
    for tensor in (users, weights, labels):
        if tensor is not None:
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _load_checkpoint(path: Path, fingerprint: str, log: Logger) -> dict | None:
    if not path.exists():
        return None
    try:
        state = load_torch(path)
    except ValueError as error:
        log(f"ignoring unreadable checkpoint: {error}")
        return None
    if state.get("fingerprint") != fingerprint:
        log(f"ignoring checkpoint {path}: it belongs to another config or data")
        return None
    return state
