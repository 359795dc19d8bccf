"""One training and evaluation harness for every model.

BPR loss on (user, positive, negative) triples; negatives are drawn uniformly from songs the
user has *not* played in training (vectorized rejection sampling). Each optimizer step runs
one forward pass over the message-passing graph. After every epoch the model is scored on the
validation pairs (Recall@10, training songs masked); ReduceLROnPlateau follows that signal and
training stops after ``patience`` epochs without improvement. The best weights are kept as a
deep copy and restored before returning.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData

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


def train(
    model: nn.Module,
    view: HeteroData,
    valid_pairs: Tensor,
    config: ModelConfig,
    max_epochs: int | None = None,
    log: Logger | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` with BPR on the training listens edges of ``view``.

    Args:
        view: The message-passing graph (training listens edges only).
        valid_pairs: ``[2, E]`` validation (user, song) pairs for early stopping.
        max_epochs: Overrides ``config.max_epochs`` (e.g. a tiny CI run).
        on_epoch: Called with each epoch's history row (epoch, loss, valid_recall@10, lr,
            seconds) after validation; an exception it raises (e.g. a pruned hyperparameter
            trial) stops training and propagates.
    """
    log = log or (lambda message: None)
    epochs = max_epochs or config.max_epochs
    generator = torch.Generator().manual_seed(config.seed)
    train_pairs = view[LISTENS].edge_index
    num_songs = view["song"].num_nodes
    known_keys = torch.sort(train_pairs[0] * num_songs + train_pairs[1]).values
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.lr_factor, patience=config.lr_patience
    )
    result = TrainResult(best_state=copy.deepcopy(model.state_dict()), final_state={})
    result.best_valid_recall = -1.0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(train_pairs.size(1), generator=generator)
        total_loss, batches = 0.0, 0
        for batch in order.split(config.batch_size):
            users, positives = train_pairs[0, batch], train_pairs[1, batch]
            negatives = sample_negatives(users, known_keys, num_songs, generator)
            user_emb, song_emb = model(view)[:2]
            pos_score = model.score(user_emb, song_emb, users, positives)
            neg_score = model.score(user_emb, song_emb, users, negatives)
            loss = F.softplus(neg_score - pos_score).mean()
            if config.l2:
                loss = loss + config.l2 * model.ego_l2(users, torch.cat([positives, negatives]))
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
            break
    result.epochs_run = len(result.history)
    result.seconds = time.perf_counter() - started
    result.final_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(result.best_state)
    return result
