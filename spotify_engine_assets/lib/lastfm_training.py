"""Training harness for the Last.fm graph models.

One full-graph forward pass per optimizer step over the message-passing graph (training listens
only); the loss is either

* ``softmax`` - a multinomial likelihood over the *whole* artist catalogue: for a batch of users,
  ``-sum_{i in train(u)} log softmax(e_u . E / temperature)_i`` divided by the batch's positives
  (embeddings L2-normalised first when ``normalize``), or
* ``bpr`` - BPR with one uniformly drawn negative per training pair (an artist the user has
  not listened to in training),

plus ``weight_decay`` times the squared norm of the batch's ego embeddings. Validation NDCG@20
(the protocol of :func:`spotify_engine_assets.lib.lastfm.evaluate_scores`) every
``eval_every`` epochs drives early stopping with ``patience`` evaluations; the best weights are
restored. :func:`fit_epochs` retrains for a fixed number of epochs (the final fit on the whole
training part at the epoch count picked on validation).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from .lastfm import LISTENS, evaluate_scores


@dataclass
class TrainSettings:
    epochs: int = 200
    lr: float = 0.01
    batch_users: int = 256
    loss: str = "softmax"
    temperature: float = 0.1
    normalize: bool = True
    weight_decay: float = 0.0
    eval_every: int = 5
    patience: int = 4
    seed: int = 0


@dataclass
class TrainOutcome:
    best_epoch: int
    best_metric: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def embed(model: nn.Module, graph: HeteroData, settings: TrainSettings) -> tuple[Tensor, Tensor]:
    users, artists = model(graph)
    if settings.normalize:
        users, artists = nn.functional.normalize(users, dim=1), nn.functional.normalize(artists, dim=1)
    return users, artists


def scorer(model: nn.Module, graph: HeteroData, settings: TrainSettings):
    """A ``score_fn`` for :func:`evaluate_scores` from the model's embeddings (no gradients)."""
    model.eval()
    with torch.no_grad():
        users, artists = embed(model, graph, settings)
    return lambda batch: users[batch] @ artists.T


def _loss(model, graph, batch_users, rows, cols, positives, num_items, settings, generator) -> Tensor:
    users, artists = embed(model, graph, settings)
    if settings.loss == "softmax":
        logits = users[batch_users] @ artists.T / settings.temperature
        log_p = torch.log_softmax(logits, dim=1)
        loss = -log_p[rows, cols].sum() / rows.numel()
    elif settings.loss == "bpr":
        user_of_pair = batch_users[rows]
        negatives = torch.randint(0, num_items, (rows.numel(),), generator=generator)
        known = torch.isin(user_of_pair * num_items + negatives, positives)
        negatives[known] = torch.randint(0, num_items, (int(known.sum()),), generator=generator)
        pos = (users[user_of_pair] * artists[cols]).sum(1)
        neg = (users[user_of_pair] * artists[negatives]).sum(1)
        loss = -nn.functional.logsigmoid(pos - neg).mean()
    else:
        raise ValueError(f"unknown loss {settings.loss!r}")
    if settings.weight_decay > 0:
        ego = model.ego_embeddings()
        loss = loss + settings.weight_decay * ego.pow(2).sum(1).mean()
    return loss


def train(
    model: nn.Module,
    graph: HeteroData,
    num_items: int,
    settings: TrainSettings,
    valid: Tensor | None = None,
    log=None,
) -> TrainOutcome:
    """Train on ``graph``'s listens; with ``valid`` early-stop on validation NDCG@20."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    train_pairs = graph[LISTENS].edge_index
    positives = train_pairs[0] * num_items + train_pairs[1]
    order = torch.argsort(train_pairs[0])
    pair_users, pair_items = train_pairs[0][order], train_pairs[1][order]
    all_users = torch.unique(pair_users)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    start = time.perf_counter()
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history, bad = [], 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        permutation = all_users[torch.randperm(all_users.numel(), generator=generator)]
        total = 0.0
        for chunk in permutation.split(settings.batch_users):
            row_of = torch.full((int(all_users.max()) + 1,), -1, dtype=torch.long)
            row_of[chunk] = torch.arange(chunk.numel())
            mask = row_of[pair_users] >= 0
            rows, cols = row_of[pair_users[mask]], pair_items[mask]
            loss = _loss(model, graph, chunk, rows, cols, positives, num_items, settings, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        record = {"epoch": epoch, "loss": total, "seconds": time.perf_counter() - start}
        if valid is not None and (epoch % settings.eval_every == 0 or epoch == settings.epochs):
            metrics = evaluate_scores(scorer(model, graph, settings), train_pairs, valid, num_items)
            record["valid_ndcg@20"] = metrics["ndcg@20"]
            record["valid_recall@20"] = metrics["recall@20"]
            if metrics["ndcg@20"] > best[0]:
                best, bad = (metrics["ndcg@20"], epoch, copy.deepcopy(model.state_dict())), 0
            else:
                bad += 1
        history.append(record)
        if log is not None:
            log(record)
        if valid is not None and bad >= settings.patience:
            break
    seconds = time.perf_counter() - start
    if valid is not None:
        model.load_state_dict(best[2])
        return TrainOutcome(best_epoch=best[1], best_metric=best[0], seconds=seconds, history=history)
    return TrainOutcome(best_epoch=settings.epochs, best_metric=float("nan"), seconds=seconds, history=history)
