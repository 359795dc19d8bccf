"""The one model protocol every recommender of every chain implements.

A :class:`Recommender` is built from its config, the chain's :class:`~..data.graph.Schema` and
the node counts, then

* ``fit(view, **training)`` learns from the message-passing view (training interactions only);
  closed-form models solve, graph models run the one trainer (``core/training``);
* ``prepare(view)`` makes a loaded model ready to score on ``view`` (closed-form models refit,
  deterministically; graph models compute their embeddings);
* ``score(users)`` returns ``[len(users), num_items]`` scores of the whole catalogue;
* ``factors()`` returns ``(user, item)`` embeddings when the model has them (None otherwise);
* ``parameter_count()`` and ``state_dict()`` / ``load_state_dict()`` for the artifact;
* graph models also return their attention: ``model(view, return_attention=True)``.

So tables, studies, A/B tests and serving treat every model alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from ..config import ModelConfig, TrainableConfig
from ..data.graph import EdgeType, Schema, num_nodes_of
from .propagation import AdjacencyCache

ScoreFn = Callable[[Tensor], Tensor]  # user indices -> [n, num_items] scores
UNSEEN_SCORE = -1e9  # an item a closed-form model has no evidence for


@dataclass
class FitResult:
    """What fitting left behind: for graph models the trainer's history (one row per epoch: loss,
    ``valid_<metric>`` on validation epochs, learning rate, seconds), the best epoch and its
    validation value (``monitor``; None for the simple trainer), the best and final weights, and
    the validation metric of each ItemKNN fusion weight tried."""

    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    best_valid: float | None = None
    monitor: str | None = None
    resumed_from_epoch: int = 0
    fusion: dict[float, float] = field(default_factory=dict)
    best_state: dict[str, Tensor] = field(default_factory=dict)
    final_state: dict[str, Tensor] = field(default_factory=dict)


def standardize(values: Tensor) -> Tensor:
    """Zero mean, unit standard deviation over the last dimension (constant rows become 0)."""
    centered = values - values.mean(-1, keepdim=True)
    return centered / values.std(-1, keepdim=True).clamp(min=1e-12)


def fused(first: Tensor, second: Tensor, weight: float) -> Tensor:
    """``(1 - weight) * z(first) + weight * z(second)`` (``weight`` 0 or 1: one side, unchanged)."""
    if weight <= 0.0:
        return first
    if weight >= 1.0:
        return second
    return (1.0 - weight) * standardize(first) + weight * standardize(second)


def sample_users(num_users: int, cap: int | None, seed: int) -> Tensor | None:
    """A config's seeded user sample (None: every user, also when the cap is not below the count)."""
    if cap is None or cap >= num_users:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(num_users, generator=generator)[:cap]).values


class Recommender:
    """The protocol (module docstring); closed-form models subclass it directly."""

    trainable = False

    def __init__(self, config: ModelConfig, schema: Schema, num_nodes: dict[str, int]) -> None:
        self.config, self.schema = config, schema
        self.num_users, self.num_items = int(num_nodes[schema.user]), int(num_nodes[schema.item])

    def _fit(self, view: HeteroData) -> None:
        raise NotImplementedError

    def fit(self, view: HeteroData, **training) -> FitResult:
        """Closed form: solve on ``view`` (training options do not apply and are ignored)."""
        started = time.perf_counter()
        self._fit(view)
        return FitResult(seconds=time.perf_counter() - started)

    def prepare(self, view: HeteroData) -> Recommender:
        """Refit on ``view``: closed-form fits are deterministic, so the artifact stores no state."""
        self._fit(view)
        return self

    def score(self, users: Tensor) -> Tensor:
        raise NotImplementedError

    def factors(self) -> tuple[Tensor, Tensor] | None:
        return None

    def evidence_scores(self, users: Tensor) -> Tensor:
        """``score`` with items the model has no evidence for at 0 instead of ``UNSEEN_SCORE``
        (what a fusion standardizes)."""
        scores = self.score(users)
        return scores.masked_fill(scores <= UNSEEN_SCORE, 0.0)

    def parameter_count(self) -> int:
        return 0

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.config.model} refits from the graph and keeps no state, got keys {sorted(state)}")


class GraphModel(nn.Module, Recommender):
    """A trainable graph model: ``forward(view, return_attention=False)`` returns one embedding per
    user and item (and the attention per relation and layer when asked); a pair scores as the dot
    product (cosine with ``config.normalize``). ``relations`` are the relations it passes messages
    along. ``fit`` runs the one trainer; with ``config.fusion`` the scores are mixed with that
    closed-form model's (fitted on the same view) at the weight chosen on validation (a buffer,
    saved with the weights)."""

    trainable = True
    reads_edge_masks = False  # True: the model applies ``edge_masks`` itself (sparse aggregation)
    relations: tuple = ()

    def __init__(self, config: TrainableConfig, schema: Schema, num_nodes: dict[str, int]) -> None:
        nn.Module.__init__(self)
        Recommender.__init__(self, config, schema, num_nodes)
        self._factors: tuple[Tensor, Tensor] | None = None
        self._fused: tuple | None = None  # (the view's interaction edges, the fused model fitted on it)
        self.adjacency_cache = AdjacencyCache()
        self.edge_masks: dict[EdgeType, Tensor] | None = None

    def reset_cache(self) -> None:
        """Forget what was built for earlier views."""
        self.adjacency_cache.clear()

    def edge_mask(self, relation: EdgeType) -> Tensor | None:
        return None if self.edge_masks is None else self.edge_masks.get(relation)

    def encode(self, view: HeteroData, return_attention: bool = False):
        """The forward pass, embeddings L2-normalised when the config scores by cosine."""
        out = self(view, return_attention=return_attention)
        if not self.config.normalize:
            return out
        return (F.normalize(out[0], dim=1), F.normalize(out[1], dim=1), *out[2:])

    def fit(self, view: HeteroData, **training) -> FitResult:
        from ..training.trainer import train  # the trainer builds on this module

        return train(self, view, training.pop("valid_pairs", None), self.config, **training)

    @torch.no_grad()
    def prepare(self, view: HeteroData) -> GraphModel:
        was_training = self.training
        self.eval()
        self._factors = self.encode(view)[:2]
        self.train(was_training)
        interactions = view[self.schema.interaction].edge_index
        fusion = self.config.fusion
        if fusion is not None and (self._fused is None or self._fused[0] is not interactions):
            from .baselines import CLOSED_FORM

            other = CLOSED_FORM[fusion.model](fusion, self.schema, num_nodes_of(view))
            self._fused = (interactions, other.prepare(view.cpu() if interactions.is_cuda else view))
        return self

    def enable_fusion(self) -> None:
        if not hasattr(self, "fusion_weight"):
            self.register_buffer("fusion_weight", torch.tensor(0.0))

    def factors(self) -> tuple[Tensor, Tensor] | None:
        if self._factors is None:
            raise RuntimeError(f"{self.config.name}: call fit() or prepare(view) before scoring")
        return self._factors

    def embedding_scores(self, users: Tensor) -> Tensor:
        user, item = self.factors()
        return user[users.to(user.device)] @ item.T

    def score(self, users: Tensor, fusion_weight: float | None = None) -> Tensor:
        scores = self.embedding_scores(users)
        if self.config.fusion is None:
            return scores
        weight = float(self.fusion_weight) if fusion_weight is None else fusion_weight
        if weight <= 0.0:
            return scores
        return fused(scores, self._fused[1].evidence_scores(users.cpu()).to(scores.device), weight)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def ego_l2(self, users: Tensor, items: Tensor) -> Tensor:
        """Squared L2 norm of the id embeddings a step touches (mean per pair)."""
        raise NotImplementedError


class IdEmbeddings(GraphModel):
    """Graph models with one id embedding table per node type (normal, std 0.1)."""

    def init_embeddings(self, node_types: tuple[str, ...], num_nodes: dict[str, int], dim: int) -> None:
        self.node_types, self.embedding_dim = node_types, dim
        self.embeddings = nn.ModuleDict({t: nn.Embedding(num_nodes[t], dim) for t in node_types})
        for table in self.embeddings.values():
            nn.init.normal_(table.weight, std=0.1)

    def ego_l2(self, users: Tensor, items: Tensor) -> Tensor:
        penalty = self.embeddings[self.schema.item](items).pow(2).sum()
        if self.schema.user in self.embeddings:
            penalty = self.embeddings[self.schema.user](users).pow(2).sum() + penalty
        return penalty / users.numel()
