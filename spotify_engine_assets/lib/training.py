"""One training and evaluation harness for every model.

BPR loss on (user, positive, negative) triples; negatives are drawn uniformly from songs the
user has *not* played in training (vectorized rejection sampling), ``negatives_per_positive``
of them per positive pair (the loss of a positive is the mean over its negatives). Each
optimizer step runs one forward pass over the message-passing graph. After every epoch the
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
"""

from __future__ import annotations

import copy
import hashlib
import json
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
from .models import BasicGATRecommender, GenreAwareGAT, LightGCNRecommender, MostPopular

Logger = Callable[[str], None]


@dataclass
class TrainResult:
    best_state: dict[str, Tensor]
    final_state: dict[str, Tensor]
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_recall: float = 0.0
    epochs_run: int = 0
    seconds: float = 0.0
    resumed_from_epoch: int = 0


def num_nodes_of(data: HeteroData) -> dict[str, int]:
    return {t: int(data[t].num_nodes) for t in data.node_types}


def build_model(config: ModelConfig, num_nodes: dict[str, int]) -> nn.Module:
    """Instantiate the model a config names, seeded by the config."""
    torch.manual_seed(config.seed)
    if config.model == "gat_basic":
        return BasicGATRecommender(num_nodes, config.embedding_dim, heads=config.heads, dropout=config.dropout)
    if config.model == "gat_enhanced":
        return GenreAwareGAT(
            num_nodes,
            hidden_dim=config.embedding_dim,
            num_layers=config.num_layers,
            heads=config.heads,
            dropout=config.dropout,
            residual=config.residual,
            edge_dim=3 if config.use_edge_attr else 0,
        )
    if config.model == "lightgcn":
        return LightGCNRecommender(num_nodes, config.embedding_dim, config.num_layers)
    raise ValueError(f"config {config.name!r}: model {config.model!r} is not trainable")


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


def _fingerprint(config: ModelConfig, epochs: int, view: HeteroData, weights: Tensor | None) -> str:
    """What a checkpoint belongs to: the config, the epoch cap and the training data."""
    digest = hashlib.sha256(json.dumps({"config": config.model_dump(), "epochs": epochs}, sort_keys=True).encode())
    digest.update(view[LISTENS].edge_index.numpy().tobytes())
    digest.update(str(num_nodes_of(view)).encode())
    if weights is not None:
        digest.update(weights.numpy().tobytes())
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


def bpr_step_loss(
    model: nn.Module,
    view: HeteroData,
    users: Tensor,
    positives: Tensor,
    negatives: Tensor,
    weights: Tensor | None,
    micro_batch: int,
    config: ModelConfig | None = None,
) -> Tensor:
    """The loss of one optimizer step: one forward pass, then micro-batches of BPR terms.

    ``negatives`` is ``[B, n]``. Each micro-batch adds ``sum(w * mean_n softplus(neg - pos)) / B``,
    so the total is the (weighted) mean over the step's positives. With ``config``, its
    regularizers are added, computed on the step's sampled users and songs only.
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
    return loss


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
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 1,
) -> TrainResult:
    """Train ``model`` with BPR on the training listens edges of ``view``.

    Args:
        view: The message-passing graph (training listens edges only).
        valid_pairs: ``[2, E]`` validation (user, song) pairs for early stopping.
        max_epochs: Overrides ``config.max_epochs`` (e.g. a tiny CI run).
        on_epoch: Called with each epoch's history row (epoch, loss, valid_recall@10, lr,
            seconds) after validation; an exception it raises (e.g. a pruned hyperparameter
            trial) stops training and propagates.
        weights: Per-interaction BPR weights aligned with ``view[LISTENS].edge_index``
            (see :func:`interaction_weights`); None: every interaction weighs 1.
        checkpoint_dir: Folder for ``checkpoint.pt``; a matching checkpoint there is resumed.
        checkpoint_every: Write a checkpoint every this many epochs (and after the last one).
    """
    log = log or (lambda message: None)
    epochs = max_epochs or config.max_epochs
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    generator = torch.Generator().manual_seed(config.seed)
    train_pairs = view[LISTENS].edge_index
    if weights is not None:
        if weights.shape != (train_pairs.size(1),):
            raise ValueError(f"weights must have one value per training edge ({train_pairs.size(1)}), got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("weights must be finite and non-negative")
    num_songs = view["song"].num_nodes
    known_keys = torch.sort(train_pairs[0] * num_songs + train_pairs[1]).values
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.lr_factor, patience=config.lr_patience
    )
    result = TrainResult(best_state=copy.deepcopy(model.state_dict()), final_state={})
    result.best_valid_recall = -1.0
    started = time.perf_counter()
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    fingerprint = _fingerprint(config, epochs, view, weights) if checkpoint_path else ""
    first_epoch, finished = 1, False
    if checkpoint_path is not None and (state := _load_checkpoint(checkpoint_path, fingerprint, log)) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        result.history = list(state["history"])
        result.best_state = state["best_state"]
        result.best_epoch = int(state["best_epoch"])
        result.best_valid_recall = float(state["best_valid_recall"])
        first_epoch, finished = int(state["epoch"]) + 1, bool(state["finished"])
        result.resumed_from_epoch = int(state["epoch"])
        log(f"resumed from checkpoint at epoch {state['epoch']}")
    step_size = config.batch_size * config.grad_accumulation
    for epoch in range(first_epoch, epochs + 1):
        if finished:
            break
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(train_pairs.size(1), generator=generator)
        total_loss, batches = 0.0, 0
        for batch in order.split(step_size):
            users, positives = train_pairs[0, batch], train_pairs[1, batch]
            draws = users.repeat_interleave(config.negatives_per_positive) if config.negatives_per_positive > 1 else users
            negatives = sample_negatives(draws, known_keys, num_songs, generator).view(users.numel(), -1)
            loss = bpr_step_loss(
                model,
                view,
                users,
                positives,
                negatives,
                None if weights is None else weights[batch],
                config.batch_size,
                config,
            )
            if config.l2:
                loss = loss + config.l2 * model.ego_l2(users, torch.cat([positives, negatives.flatten()]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            batches += 1
        user_emb, song_emb = embed(model, view)
        valid_recall = recall_at_k(user_emb, song_emb, valid_pairs, train_pairs, k=10)
        scheduler.step(valid_recall)
        result.history.append(
            {
                "epoch": epoch,
                "loss": total_loss / max(batches, 1),
                "valid_recall@10": valid_recall,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - epoch_start,
            }
        )
        log(f"epoch {epoch}: loss {total_loss / max(batches, 1):.4f} valid recall@10 {valid_recall:.4f}")
        if on_epoch is not None:
            on_epoch(result.history[-1])
        if valid_recall > result.best_valid_recall:
            result.best_valid_recall = valid_recall
            result.best_epoch = epoch
            result.best_state = copy.deepcopy(model.state_dict())
        elif epoch - result.best_epoch >= config.patience:
            log(f"early stop at epoch {epoch}; best epoch {result.best_epoch}")
            finished = True
        finished = finished or epoch == epochs
        if checkpoint_path is not None and (finished or epoch % checkpoint_every == 0):
            save_torch(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "finished": finished,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": result.history,
                    "best_state": result.best_state,
                    "best_epoch": result.best_epoch,
                    "best_valid_recall": result.best_valid_recall,
                },
                checkpoint_path,
            )
    result.epochs_run = len(result.history)
    result.seconds = time.perf_counter() - started
    result.final_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(result.best_state)
    return result
