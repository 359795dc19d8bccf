"""One training and evaluation harness for every model.

BPR loss on (user, positive, negative) triples; negatives are drawn uniformly from songs the
user has *not* played in training (vectorized rejection sampling), ``negatives_per_positive``
of them per positive pair (the loss of a positive is the mean over its negatives). Each
optimizer step runs one forward pass over the message-passing graph. With the advanced trainer
(the default, see Trainers below), after every epoch the
model is scored on the validation pairs (Recall@10, training songs masked); ReduceLROnPlateau
follows that signal and training stops after ``patience`` epochs without improvement. The best
weights are kept as a deep copy and restored before returning.

Weighted BPR: each training interaction ``e`` gets
``w_e = 1 + a_c * completion_e + a_p * log1p(plays_e) / max log1p(plays) + a_r * 0.5 ** (age_e / half_life)``
(``age_e`` in days before the latest training listen), normalised to mean 1 over the training
edges, so the loss scale (and the learning rate's meaning) stays that of plain BPR. Only training
edges are read (:func:`interaction_weights`).

Gradient accumulation: an optimizer step covers ``grad_accumulation`` micro-batches of
``batch_size`` positives. The models are full-graph GNNs, so one forward pass yields every
embedding: each micro-batch's loss is computed from that one pass and summed (scaled so the step
loss is the mean over the step's positives), then one backward. A step with accumulation ``k`` is
exactly a step of batch size ``k * batch_size`` (a test checks it); memory grows only with the
scoring of the larger step, not with extra forward passes.

Steps per epoch: by default an epoch is ``ceil(E / (batch_size * grad_accumulation))`` optimizer
steps, each a full-graph forward and backward, so epoch cost grows with ``E^2 / batch_size``.
``ModelConfig.steps_per_epoch = k`` (opt-in) makes an epoch exactly ``k`` steps (``min(k, E)``)
over all ``E`` shuffled training edges, each step ``ceil(E / k)`` or one fewer positives scored in
micro-batches of ``batch_size`` as above: epoch cost then grows linearly in the edges.

Regularizers, on the step's sampled users and songs only: ``orthogonality_weight`` times the mean
squared cosine between distinct sampled embeddings (computed through the d x d Gram, never an
N x N one); ``attention_entropy_weight`` times the mean entropy of the attention arriving at the
sampled nodes (GAT models; lower entropy = sharper attention).

Resume: with ``checkpoint_dir`` the harness writes ``checkpoint.pt`` atomically every
``checkpoint_every`` epochs (and at the end): weights, optimizer, scheduler, the torch and
sampling-generator RNG states, history, best state and epoch, and a fingerprint of the config,
epoch cap and training data. A later call with the same folder and fingerprint continues from the
checkpoint (loaded with ``weights_only=True``) and ends with the same result as an uninterrupted
run; a checkpoint with another fingerprint is ignored.

Trainers: :class:`BaseTrainer` owns the epoch/step loop (one forward pass per optimizer step,
vectorized negatives, every loss term below). :class:`SimpleTrainer` runs ``max_epochs`` epochs
over all training data at the fixed learning rate, with no validation, early stopping or
checkpoints: the fastest feedback, and its final weights are its result. :class:`AdvancedTrainer`
adds the validation Recall@10, ReduceLROnPlateau, early stopping, best-weight restore and the
resumable checkpoints described above. ``ModelConfig.trainer`` picks one; :func:`train` is the
entry point every caller uses.

Multi-task heads (``task_complete_weight``, ``task_repeat_weight``): :class:`~.models.TaskHeads`
score each of the step's *training* (user, positive) pairs from the final embeddings; the loss
adds ``sum_t w_t * BCE_t`` (mean over the step's positives). Labels come from the training
edges' own attributes only (:func:`task_labels`): "complete" = ``mean_completion >=
complete_threshold``, "repeat" = ``play_count >= repeat_min_plays``. :func:`task_metrics` scores
the heads on held-out edges (ROC AUC, :func:`roc_auc`).

Multi-objective surrogates (``diversity_weight``, ``coverage_weight``): top-k lists are not
differentiable, so each optimizer step draws ``surrogate_candidates`` songs uniformly from the
catalogue (the same candidates for every user of the step; never an N x N matrix) and takes, for
each distinct user ``u`` of the step, the softmax ``p_u = softmax(e_u . E_C / temperature)``
over the candidates: a soft top-k list.

* coverage: the exposure ``q = mean_u p_u`` is how the step's users' attention spreads over the
  candidates; the loss adds ``coverage_weight * (1 - H(q) / log |C|)`` (minimized: exposure
  entropy rises, more songs get recommended). Uniform candidates make ``q`` an unbiased sample
  of catalogue-wide exposure.
* diversity: ``sum_ij p_ui p_uj cos(s_i, s_j) = || sum_i p_ui s_i / ||s_i|| ||^2``, the expected
  cosine similarity of two songs drawn independently from the user's soft list, is computed as a
  squared norm in ``O(|U| |C| d)``; the loss adds ``diversity_weight`` times its mean over users
  (minimized: each user's list holds less similar songs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from .artifacts import load_torch, save_torch
from .configs import ModelConfig
from .graph import LISTENS
from .metrics import recall_at_k
from .models import BasicGATRecommender, GenreAwareGAT, LightGCNRecommender, MostPopular, TaskHeads

Logger = Callable[[str], None]


@dataclass
class TrainResult:
    best_state: dict[str, Tensor]
    final_state: dict[str, Tensor]
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_recall: float | None = 0.0  # None: the simple trainer validates nothing
    epochs_run: int = 0
    seconds: float = 0.0
    resumed_from_epoch: int = 0


def num_nodes_of(data: HeteroData) -> dict[str, int]:
    return {t: int(data[t].num_nodes) for t in data.node_types}


def build_model(config: ModelConfig, num_nodes: dict[str, int]) -> nn.Module:
    """Instantiate the model a config names, seeded by the config.

    A config that weights a task gets a ``task_heads`` submodule (:class:`TaskHeads`, part of the
    state dict), built after the model so the model's own initialisation does not change.
    """
    torch.manual_seed(config.seed)
    if config.model == "gat_basic":
        model = BasicGATRecommender(num_nodes, config.embedding_dim, heads=config.heads, dropout=config.dropout)
    elif config.model == "gat_enhanced":
        model = GenreAwareGAT(
            num_nodes,
            hidden_dim=config.embedding_dim,
            num_layers=config.num_layers,
            heads=config.heads,
            dropout=config.dropout,
            residual=config.residual,
            edge_dim=3 if config.use_edge_attr else 0,
        )
    elif config.model == "lightgcn":
        model = LightGCNRecommender(num_nodes, config.embedding_dim, config.num_layers)
    else:
        raise ValueError(f"config {config.name!r}: model {config.model!r} is not trainable")
    if config.tasks:
        model.task_heads = TaskHeads(config.embedding_dim, tuple(config.tasks))
    return model


def _is_known(users: Tensor, songs: Tensor, known_keys: Tensor, num_songs: int) -> Tensor:
    keys = users * num_songs + songs
    position = torch.searchsorted(known_keys, keys).clamp(max=known_keys.numel() - 1)
    return known_keys[position] == keys


def sample_negatives(users: Tensor, known_keys: Tensor, num_songs: int, generator: torch.Generator, rounds: int = 20) -> Tensor:
    """One song per user that the user has not played in training.

    ``known_keys`` are the sorted ``user * num_songs + song`` keys of training pairs. Uniform
    rejection sampling, vectorized; the rare draws still clashing after ``rounds`` (users who
    played most of the catalogue) are drawn exactly from the songs that user has not played.
    """
    negatives = torch.randint(num_songs, users.shape, generator=generator)
    for _ in range(rounds):
        clash = _is_known(users, negatives, known_keys, num_songs)
        if not clash.any():
            return negatives
        negatives[clash] = torch.randint(num_songs, (int(clash.sum()),), generator=generator)
    for position in torch.nonzero(_is_known(users, negatives, known_keys, num_songs)).flatten().tolist():
        user = int(users[position])
        played = known_keys[(known_keys >= user * num_songs) & (known_keys < (user + 1) * num_songs)] - user * num_songs
        unplayed = torch.ones(num_songs, dtype=torch.bool)
        unplayed[played] = False
        candidates = torch.nonzero(unplayed).flatten()
        if candidates.numel() == 0:
            raise ValueError(f"user index {user} has played every song in training: no negative exists")
        negatives[position] = candidates[torch.randint(candidates.numel(), (1,), generator=generator)]
    return negatives


@torch.no_grad()
def embed(model: nn.Module | MostPopular, view: HeteroData) -> tuple[Tensor, Tensor]:
    """User and song embeddings in evaluation mode."""
    if isinstance(model, MostPopular):
        return model.embeddings()
    was_training = model.training
    model.eval()
    user, song = model(view)[:2]
    model.train(was_training)
    return user, song


def fit_most_popular(view: HeteroData) -> MostPopular:
    return MostPopular(view["user"].num_nodes, view["song"].num_nodes).fit(view[LISTENS].edge_index)


CHECKPOINT_FILE = "checkpoint.pt"
WEIGHT_COLUMNS = {
    "weight_completion": "mean_completion",
    "weight_play_count": "play_count",
    "weight_recency": "last_played",
}


def interaction_weights(config: ModelConfig, data: HeteroData, train_index: Tensor) -> Tensor | None:
    """Per-interaction BPR weights of the *training* listens edges (None: unweighted config).

    ``data`` is the full listening graph (its listens store keeps ``play_count``,
    ``mean_completion`` and ``last_played``); only the edges in ``train_index`` are read, so the
    normalisations (max play count, the reference time of recency) never see a held-out edge.
    The result is aligned with ``message_passing_graph(data, train_index)[LISTENS].edge_index``.

    Raises:
        ValueError: the config weights a column the graph does not have (before any training).
    """
    if not config.weighted:
        return None
    listens = data[LISTENS]
    missing = [
        f"{field} needs listens.{column}"
        for field, column in WEIGHT_COLUMNS.items()
        if getattr(config, field) and column not in listens
    ]
    if missing:
        raise ValueError(f"config {config.name!r}: the graph lacks a column for weighted BPR: {'; '.join(missing)}")
    weight = torch.ones(train_index.numel(), dtype=torch.float64)
    if config.weight_completion:
        completion = listens.mean_completion[train_index].double().clamp(0.0, 1.0)
        weight += config.weight_completion * completion
    if config.weight_play_count:
        log_plays = torch.log1p(listens.play_count[train_index].double().clamp(min=0.0))
        weight += config.weight_play_count * log_plays / log_plays.max().clamp(min=1e-12)
    if config.weight_recency:
        last = listens.last_played[train_index].double()
        age_days = (last.max() - last) / 86400.0
        weight += config.weight_recency * torch.pow(0.5, age_days / config.half_life_days)
    return (weight / weight.mean()).float()


TASK_COLUMNS = {"complete": ("task_complete_weight", "mean_completion"), "repeat": ("task_repeat_weight", "play_count")}


def task_labels(config: ModelConfig, data: HeteroData, index: Tensor) -> Tensor | None:
    """``[len(index), T]`` 0/1 labels of the config's task heads for the listens edges ``index``
    (None: no task head). Columns follow ``config.tasks``.

    Training passes the training edge index (labels aligned with the message-passing graph's
    listens edges); evaluation passes the test edges. Each label reads only its own edge.

    Raises:
        ValueError: a task head needs a listens column the graph does not have (before any training).
    """
    if not config.tasks:
        return None
    listens = data[LISTENS]
    missing = [
        f"{TASK_COLUMNS[task][0]} needs listens.{TASK_COLUMNS[task][1]}"
        for task in config.tasks
        if TASK_COLUMNS[task][1] not in listens
    ]
    if missing:
        raise ValueError(f"config {config.name!r}: the graph lacks a column for a task head: {'; '.join(missing)}")
    columns = []
    for task in config.tasks:
        if task == "complete":
            columns.append(listens.mean_completion[index].double() >= config.complete_threshold)
        else:
            columns.append(listens.play_count[index].double() >= config.repeat_min_plays)
    return torch.stack(columns, dim=1).float()


def training_inputs(config: ModelConfig, data: HeteroData, train_index: Tensor) -> dict[str, Tensor | None]:
    """:func:`train`'s ``weights`` and ``task_labels`` of ``config`` for the training listens edges
    ``train_index`` of ``data`` (None where the config does not use them).

    Raises:
        ValueError: the config needs a listens column the graph does not have (before any training).
    """
    return {"weights": interaction_weights(config, data, train_index), "task_labels": task_labels(config, data, train_index)}


def roc_auc(scores: Tensor, labels: Tensor) -> float | None:
    """Area under the ROC curve by the rank (Mann-Whitney) formula, ties at their mean rank.

    ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the rank sum of the
    positives; None when one class is absent (the AUC is undefined).
    """
    from scipy.stats import rankdata

    labels = labels.bool().flatten()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if scores.numel() != labels.numel():
        raise ValueError(f"roc_auc: {scores.numel()} scores for {labels.numel()} labels")
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(scores.detach().double().flatten().numpy())
    rank_sum = float(ranks[labels.numpy()].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


@torch.no_grad()
def task_metrics(model: nn.Module, config: ModelConfig, data: HeteroData, view: HeteroData, index: Tensor) -> dict[str, dict]:
    """Per task head: ROC AUC of its logits on the listens edges ``index`` (held-out test edges in
    ``metric_report``), with the edge count and positive rate; empty for a config without heads."""
    labels = task_labels(config, data, index)
    if labels is None:
        return {}
    pairs = data[LISTENS].edge_index[:, index]
    user_emb, song_emb = embed(model, view)
    logits = model.task_heads(user_emb, song_emb, pairs[0], pairs[1])
    return {
        task: {
            "auc": roc_auc(logits[:, column], labels[:, column]),
            "edges": int(labels.size(0)),
            "positive_rate": float(labels[:, column].mean()) if labels.size(0) else 0.0,
        }
        for column, task in enumerate(config.tasks)
    }


def _fingerprint(
    config: ModelConfig, epochs: int, view: HeteroData, weights: Tensor | None, labels: Tensor | None = None
) -> str:
    """What a checkpoint belongs to: the config, the epoch cap and the training data."""
    digest = hashlib.sha256(json.dumps({"config": config.model_dump(), "epochs": epochs}, sort_keys=True).encode())
    digest.update(view[LISTENS].edge_index.numpy().tobytes())
    digest.update(str(num_nodes_of(view)).encode())
    if weights is not None:
        digest.update(weights.numpy().tobytes())
    if labels is not None:
        digest.update(labels.numpy().tobytes())
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


def orthogonality_penalty(embeddings: Tensor) -> Tensor:
    """Mean squared cosine similarity between distinct rows of a sampled ``[m, d]`` batch.

    Equal to the mean off-diagonal square of the ``m x m`` cosine Gram matrix, computed through
    the ``d x d`` Gram (``||E E^T||_F = ||E^T E||_F``): never an N x N (or even m x m) matrix.
    """
    m = embeddings.size(0)
    if m < 2:
        return embeddings.new_zeros(())
    unit = F.normalize(embeddings, dim=1)
    gram = unit.t() @ unit
    return (gram.pow(2).sum() - m) / (m * (m - 1))


def attention_entropy(attention: dict[str, tuple[Tensor, Tensor]], nodes: dict[str, Tensor], num_nodes: dict[str, int]) -> Tensor:
    """Mean entropy of the attention distributions arriving at the sampled ``nodes``.

    ``attention`` maps ``layer/src__rel__dst`` to ``(edge_index, alpha [E, heads])``; for every
    relation whose destination type was sampled, only edges ending at a sampled node are read.
    """
    terms = []
    for key, (index, alpha) in attention.items():
        dst_type = key.rsplit("__", 1)[-1]
        if dst_type not in nodes:
            continue
        selected = torch.zeros(num_nodes[dst_type], dtype=torch.bool)
        selected[nodes[dst_type]] = True
        keep = selected[index[1]]
        if not keep.any():
            continue
        a = alpha[keep].clamp_min(1e-12)
        per_edge = -(a * a.log())  # [E_kept, heads]
        per_node = torch.zeros(num_nodes[dst_type], a.size(1), dtype=a.dtype).index_add(0, index[1][keep], per_edge)
        terms.append(per_node[nodes[dst_type]].mean())
    return torch.stack(terms).mean() if terms else torch.zeros(())


def candidate_softmax(user_emb: Tensor, song_emb: Tensor, users: Tensor, candidates: Tensor, temperature: float) -> Tensor:
    """``[|users|, |candidates|]``: each user's softmax over the candidate songs' scores / temperature."""
    return torch.softmax(user_emb[users] @ song_emb[candidates].t() / temperature, dim=1)


def exposure_entropy(probs: Tensor) -> Tensor:
    """Entropy of the users' mean softmax exposure over the candidates, divided by ``log |C|`` (in [0, 1])."""
    exposure = probs.mean(0)
    return -(exposure * exposure.clamp_min(1e-12).log()).sum() / math.log(probs.size(1))


def expected_similarity(probs: Tensor, candidate_emb: Tensor) -> Tensor:
    """Mean over users of ``sum_ij p_ui p_uj cos(s_i, s_j)`` (two independent draws from the user's
    softmax), computed as ``|| p_u @ normalize(S) ||^2``: never a candidate x candidate matrix."""
    return (probs @ F.normalize(candidate_emb, dim=1)).pow(2).sum(1).mean()


def objective_penalty(user_emb: Tensor, song_emb: Tensor, users: Tensor, candidates: Tensor, config: ModelConfig) -> Tensor:
    """The multi-objective surrogate terms of one step (module docstring): ``diversity_weight *
    expected_similarity + coverage_weight * (1 - exposure_entropy)`` over the step's distinct users."""
    probs = candidate_softmax(user_emb, song_emb, torch.unique(users), candidates, config.surrogate_temperature)
    penalty = user_emb.new_zeros(())
    if config.diversity_weight:
        penalty = penalty + config.diversity_weight * expected_similarity(probs, song_emb[candidates])
    if config.coverage_weight:
        penalty = penalty + config.coverage_weight * (1.0 - exposure_entropy(probs))
    return penalty


def bpr_step_loss(
    model: nn.Module,
    view: HeteroData,
    users: Tensor,
    positives: Tensor,
    negatives: Tensor,
    weights: Tensor | None,
    micro_batch: int,
    config: ModelConfig | None = None,
    *,
    labels: Tensor | None = None,
    candidates: Tensor | None = None,
) -> Tensor:
    """The loss of one optimizer step: one forward pass, then micro-batches of BPR terms.

    ``negatives`` is ``[B, n]``. Each micro-batch adds ``sum(w * mean_n softplus(neg - pos)) / B``,
    so the total is the (weighted) mean over the step's positives. With ``config``, its
    regularizers are added, computed on the step's sampled users and songs only, its task heads'
    weighted BCE on the step's (user, positive) pairs (``labels``: ``[B, T]``, from
    :func:`task_labels`), and its multi-objective surrogates over ``candidates`` (song indices).
    """
    if config is not None and config.attention_entropy_weight:
        user_emb, song_emb, attention = model(view, return_attention=True)
    else:
        user_emb, song_emb = model(view)[:2]
    total = users.numel()
    loss = user_emb.new_zeros(())
    for start in range(0, total, micro_batch):
        u, p, n = users[start : start + micro_batch], positives[start : start + micro_batch], negatives[start : start + micro_batch]
        pos_score = model.score(user_emb, song_emb, u, p)
        neg_score = model.score(user_emb, song_emb, u.repeat_interleave(n.size(1)), n.flatten()).view(n.shape)
        per_positive = F.softplus(neg_score - pos_score.unsqueeze(1)).mean(1)
        if weights is not None:
            per_positive = per_positive * weights[start : start + micro_batch]
        loss = loss + per_positive.sum() / total
    if config is not None and config.orthogonality_weight:
        songs = torch.unique(torch.cat([positives, negatives.flatten()]))
        penalty = orthogonality_penalty(user_emb[torch.unique(users)]) + orthogonality_penalty(song_emb[songs])
        loss = loss + config.orthogonality_weight * penalty
    if config is not None and config.attention_entropy_weight:
        sampled = {"user": torch.unique(users), "song": torch.unique(torch.cat([positives, negatives.flatten()]))}
        sizes = {"user": user_emb.size(0), "song": song_emb.size(0)}
        loss = loss + config.attention_entropy_weight * attention_entropy(attention, sampled, sizes)
    if config is not None and config.tasks:
        if labels is None or labels.shape != (total, len(config.tasks)):
            got = None if labels is None else tuple(labels.shape)
            raise ValueError(f"config {config.name!r}: task heads need labels of shape ({total}, {len(config.tasks)}), got {got}")
        logits = model.task_heads(user_emb, song_emb, users, positives)
        per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
        task_weights = torch.tensor(list(config.tasks.values()), dtype=per_task.dtype)
        loss = loss + (task_weights * per_task).sum()
    if config is not None and (config.diversity_weight or config.coverage_weight):
        if candidates is None:
            raise ValueError(f"config {config.name!r}: the diversity/coverage surrogates need candidate songs")
        loss = loss + objective_penalty(user_emb, song_emb, users, candidates, config)
    return loss


class BaseTrainer:
    """The epoch/step loop every trainer shares.

    Each epoch shuffles the training listens edges (``view[LISTENS].edge_index``) with the
    config-seeded generator and takes one optimizer step per ``batch_size * grad_accumulation``
    positives (with ``steps_per_epoch``: that many steps of ``ceil(E / steps)`` or one fewer
    positives, scored in micro-batches of ``batch_size``): vectorized negatives, candidate songs for the surrogates, one forward pass and
    :func:`bpr_step_loss` (plus the L2 penalty on the step's id embeddings). Subclasses decide
    what happens around the loop (:meth:`_begin`, :meth:`_epoch_metrics`, :meth:`_after_epoch`,
    :meth:`_end`).

    Args:
        view: The message-passing graph (training listens edges only).
        max_epochs: Overrides ``config.max_epochs`` (e.g. a tiny CI run).
        log: Receives one progress line per epoch.
        on_epoch: Called with each epoch's history row; an exception it raises (e.g. a pruned
            hyperparameter trial) stops training and propagates.
        weights: Per-interaction BPR weights aligned with the training edges (:func:`interaction_weights`).
        task_labels: ``[E_train, T]`` labels of the config's task heads (:func:`task_labels` of the
            training index); required exactly when the config has task heads.
    """

    def __init__(
        self,
        model: nn.Module,
        view: HeteroData,
        config: ModelConfig,
        *,
        max_epochs: int | None = None,
        log: Logger | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        weights: Tensor | None = None,
        task_labels: Tensor | None = None,
    ) -> None:
        if not config.trainable:
            raise ValueError(f"config {config.name!r}: model {config.model!r} is not trainable")
        self.model, self.view, self.config = model, view, config
        self.log = log or (lambda message: None)
        self.on_epoch = on_epoch
        self.epochs = max_epochs or config.max_epochs
        self.train_pairs = view[LISTENS].edge_index
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
                    f"({edges}, {len(config.tasks)}) from task_labels(config, data, train_index), got {got}"
                )
            if not hasattr(model, "task_heads"):
                raise ValueError(f"config {config.name!r}: the model has no task heads; build it with build_model(config, ...)")
        elif task_labels is not None:
            raise ValueError(f"config {config.name!r} has no task head (task_*_weight are 0) but task_labels were given")
        self.num_songs = int(view["song"].num_nodes)
        if (config.diversity_weight or config.coverage_weight) and config.surrogate_candidates > self.num_songs:
            raise ValueError(
                f"config {config.name!r}: surrogate_candidates {config.surrogate_candidates} exceeds the catalogue's "
                f"{self.num_songs} songs"
            )
        self.weights, self.task_labels = weights, task_labels
        self.generator = torch.Generator().manual_seed(config.seed)
        self.known_keys = torch.sort(self.train_pairs[0] * self.num_songs + self.train_pairs[1]).values
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.result = TrainResult(best_state={}, final_state={})

    # ---------------------------------------------------------------- hooks
    def _begin(self) -> tuple[int, bool]:
        """Prepare; return the first epoch to run and whether training is already finished."""
        return 1, False

    def _epoch_metrics(self) -> dict:
        """Extra history columns after an epoch's training steps (e.g. validation)."""
        return {}

    def _after_epoch(self, epoch: int, row: dict, finished: bool) -> bool:
        """Book-keeping after an epoch; returns whether training stops."""
        return finished

    def _end(self) -> None:
        """Settle the result after the last epoch (the model's weights are the final ones)."""

    # ---------------------------------------------------------------- loop
    def _step(self, batch: Tensor) -> float:
        config, model = self.config, self.model
        users, positives = self.train_pairs[0, batch], self.train_pairs[1, batch]
        draws = users.repeat_interleave(config.negatives_per_positive) if config.negatives_per_positive > 1 else users
        negatives = sample_negatives(draws, self.known_keys, self.num_songs, self.generator).view(users.numel(), -1)
        candidates = None
        if config.diversity_weight or config.coverage_weight:
            candidates = torch.randperm(self.num_songs, generator=self.generator)[: config.surrogate_candidates]
        loss = bpr_step_loss(
            model,
            self.view,
            users,
            positives,
            negatives,
            None if self.weights is None else self.weights[batch],
            config.batch_size,
            config,
            labels=None if self.task_labels is None else self.task_labels[batch],
            candidates=candidates,
        )
        if config.l2:
            loss = loss + config.l2 * model.ego_l2(users, torch.cat([positives, negatives.flatten()]))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def _train_epoch(self) -> float:
        """One pass over the shuffled training edges; the mean step loss."""
        self.model.train()
        order = torch.randperm(self.train_pairs.size(1), generator=self.generator)
        losses = [self._step(batch) for batch in self._batches(order)]
        return sum(losses) / max(len(losses), 1)

    def _batches(self, order: Tensor) -> tuple[Tensor, ...]:
        """The epoch's optimizer steps: chunks of ``batch_size * grad_accumulation`` positives, or
        with ``steps_per_epoch`` exactly that many near-equal chunks (at most one per edge)."""
        config = self.config
        if config.steps_per_epoch is None:
            return order.split(config.batch_size * config.grad_accumulation)
        steps = config.steps_in_epoch(order.numel())
        return order.tensor_split(steps) if steps else ()

    def fit(self) -> TrainResult:
        result = self.result
        started = time.perf_counter()
        first_epoch, finished = self._begin()
        for epoch in range(first_epoch, self.epochs + 1):
            if finished:
                break
            epoch_start = time.perf_counter()
            loss = self._train_epoch()
            row = {"epoch": epoch, "loss": loss, **self._epoch_metrics()}
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["seconds"] = time.perf_counter() - epoch_start
            result.history.append(row)
            shown = "".join(f" {key.replace('_', ' ')} {value:.4f}" for key, value in row.items() if key.startswith("valid_"))
            self.log(f"epoch {epoch}: loss {loss:.4f}{shown}")
            if self.on_epoch is not None:
                self.on_epoch(row)
            finished = self._after_epoch(epoch, row, epoch == self.epochs)
        result.epochs_run = len(result.history)
        result.seconds = time.perf_counter() - started
        result.final_state = copy.deepcopy(self.model.state_dict())
        self._end()
        return result


class SimpleTrainer(BaseTrainer):
    """Fixed epochs on all training data at the config's fixed learning rate: no validation, no
    early stopping, no checkpoints. The result's best state is the final state
    (``best_epoch`` = the last epoch, ``best_valid_recall`` None)."""

    def _end(self) -> None:
        self.result.best_state = copy.deepcopy(self.result.final_state)
        self.result.best_epoch = self.result.epochs_run
        self.result.best_valid_recall = None


class AdvancedTrainer(BaseTrainer):
    """Validation Recall@10 after every epoch, ReduceLROnPlateau on it, early stopping after
    ``patience`` epochs without gain, the best weights restored at the end, and resumable
    checkpoints every ``checkpoint_every`` epochs in ``checkpoint_dir`` (module docstring).

    Args:
        valid_pairs: ``[2, E]`` validation (user, song) pairs (training songs masked when ranking).
        checkpoint_dir: Folder for ``checkpoint.pt``; a matching checkpoint there is resumed.
        checkpoint_every: Write a checkpoint every this many epochs (and after the last one).
    """

    def __init__(
        self,
        model: nn.Module,
        view: HeteroData,
        config: ModelConfig,
        valid_pairs: Tensor,
        *,
        checkpoint_dir: Path | str | None = None,
        checkpoint_every: int = 1,
        **options,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        super().__init__(model, view, config, **options)
        self.valid_pairs = valid_pairs
        self.checkpoint_every = checkpoint_every
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=config.lr_factor, patience=config.lr_patience
        )
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
        self.fingerprint = (
            _fingerprint(config, self.epochs, view, self.weights, self.task_labels) if self.checkpoint_path else ""
        )

    def _begin(self) -> tuple[int, bool]:
        result = self.result
        result.best_state = copy.deepcopy(self.model.state_dict())
        result.best_valid_recall = -1.0
        if self.checkpoint_path is None:
            return 1, False
        state = _load_checkpoint(self.checkpoint_path, self.fingerprint, self.log)
        if state is None:
            return 1, False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        result.history = list(state["history"])
        result.best_state = state["best_state"]
        result.best_epoch = int(state["best_epoch"])
        result.best_valid_recall = float(state["best_valid_recall"])
        result.resumed_from_epoch = int(state["epoch"])
        self.log(f"resumed from checkpoint at epoch {state['epoch']}")
        return int(state["epoch"]) + 1, bool(state["finished"])

    def _epoch_metrics(self) -> dict:
        user_emb, song_emb = embed(self.model, self.view)
        valid_recall = recall_at_k(user_emb, song_emb, self.valid_pairs, self.train_pairs, k=10)
        self.scheduler.step(valid_recall)
        return {"valid_recall@10": valid_recall}

    def _after_epoch(self, epoch: int, row: dict, finished: bool) -> bool:
        result = self.result
        if row["valid_recall@10"] > result.best_valid_recall:
            result.best_valid_recall = row["valid_recall@10"]
            result.best_epoch = epoch
            result.best_state = copy.deepcopy(self.model.state_dict())
        elif epoch - result.best_epoch >= self.config.patience:
            self.log(f"early stop at epoch {epoch}; best epoch {result.best_epoch}")
            finished = True
        if self.checkpoint_path is not None and (finished or epoch % self.checkpoint_every == 0):
            save_torch(
                {
                    "fingerprint": self.fingerprint,
                    "epoch": epoch,
                    "finished": finished,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "generator": self.generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": result.history,
                    "best_state": result.best_state,
                    "best_epoch": result.best_epoch,
                    "best_valid_recall": result.best_valid_recall,
                },
                self.checkpoint_path,
            )
        return finished

    def _end(self) -> None:
        self.model.load_state_dict(self.result.best_state)


def train(
    model: nn.Module,
    view: HeteroData,
    valid_pairs: Tensor,
    config: ModelConfig,
    max_epochs: int | None = None,
    log: Logger | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    *,
    weights: Tensor | None = None,
    task_labels: Tensor | None = None,
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 1,
) -> TrainResult:
    """Train ``model`` on the training listens edges of ``view`` with the config's trainer.

    ``config.trainer == "advanced"`` (default): :class:`AdvancedTrainer` (validation on
    ``valid_pairs``, early stopping, ReduceLROnPlateau, checkpoints in ``checkpoint_dir``);
    ``"simple"``: :class:`SimpleTrainer` (``valid_pairs`` unused; a ``checkpoint_dir`` is an
    error, it writes none). The model holds the result's best state on return. Arguments: see
    :class:`BaseTrainer` and :class:`AdvancedTrainer`.
    """
    options = dict(max_epochs=max_epochs, log=log, on_epoch=on_epoch, weights=weights, task_labels=task_labels)
    if config.trainer == "simple":
        if checkpoint_dir is not None:
            raise ValueError(f"config {config.name!r}: the simple trainer writes no checkpoints; use trainer: advanced")
        return SimpleTrainer(model, view, config, **options).fit()
    return AdvancedTrainer(
        model, view, config, valid_pairs, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, **options
    ).fit()
