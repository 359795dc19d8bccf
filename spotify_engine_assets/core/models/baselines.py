"""Closed-form and non-parametric recommenders, behind the same protocol as the graph models
(:class:`~.base.Recommender`): ``fit(view)`` solves on the training interactions of the view,
``score(users)`` ranks the whole catalogue.

* :class:`MostPopular` - items ranked by their number of training users (the reference).
* :class:`CategoryPopularity` - popularity conditioned on a category (genre, artist, tag): a user's
  smoothed category shares times each category's items by training popularity,
  ``score(u, i) = sum_c theta_uc p(i | c)`` with ``theta_uc = (n_uc + a pi_c) / (n_u + a)`` and
  ``p(i | c) ∝ pop(i) ** b`` over the items of ``c`` (the strong simple baseline where the data is
  generated, or chosen, by taste for a category).
* :class:`ItemKNN` - item-item cosine with shrinkage, ``S = XᵀX / (‖x_i‖‖x_j‖ + shrink)``
  (diagonal zeroed), optionally only each item's ``neighbours`` most similar items kept; a user
  scores ``x_u S``. Sparse throughout (scipy).
* :class:`EASE` - Steck's closed-form shallow autoencoder, ``B = I - P diagMat(1 / diag(P))`` with
  ``P = (XᵀX + λI)⁻¹`` and zero diagonal, solved in its dual form over users (exact).
* :class:`ALS` - implicit-feedback matrix factorisation (Hu, Koren, Volinsky) through the
  ``implicit`` library, confidence ``1 + alpha`` on positives.
* :class:`GraphEASE` - EASE solved on the graph's interactions *and* the item-category edges
  (each side node, e.g. a tag, a weighted pseudo-user row of its items), with each user's row
  smoothed over the social relation at scoring time.

Items without a training interaction get ``UNSEEN_SCORE`` from the item-item models (they have no
evidence for them).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import scatter

from ..config import ALSConfig, CategoryPopularityConfig, EASEConfig, GraphEASEConfig
from ..data.graph import Schema, interaction_matrix, reverse
from .base import UNSEEN_SCORE, Recommender


class MostPopular(Recommender):
    """Every user gets the items with the most training users."""

    def __init__(self, config, schema: Schema, num_nodes: dict[str, int]) -> None:
        super().__init__(config, schema, num_nodes)
        self.popularity = torch.zeros(self.num_items)

    def _fit(self, view: HeteroData) -> None:
        items = view[self.schema.interaction].edge_index[1]
        self.popularity = torch.bincount(items, minlength=self.num_items).float()

    def score(self, users: Tensor) -> Tensor:
        return self.popularity.expand(users.numel(), -1)

    def factors(self) -> tuple[Tensor, Tensor]:
        """Rank-1 factors reproducing the popularity ranking through a dot product."""
        return torch.ones(self.num_users, 1), self.popularity.view(-1, 1)


class CategoryError(ValueError):
    """A category-popularity config names a category the chain's graph cannot reach."""


def item_categories(view: HeteroData, schema: Schema, category: str | None) -> sp.csr_matrix:
    """Binary ``items x categories`` membership of the node type ``category`` (module docstring of
    :class:`CategoryPopularity`): an item-category relation's target, or a context relation's
    target one hop beyond it (track -> artist -> genre); None: the main category."""
    relations = list(schema.categories.values())
    if not relations:
        raise CategoryError(f"the {schema.item} graph has no category relation to condition popularity on")
    target = category or relations[0][2]
    num_items = int(view[schema.item].num_nodes)

    def matrix(edge_type, rows: int, cols: int) -> sp.csr_matrix:
        edges = view[edge_type].edge_index.numpy()
        out = sp.csr_matrix((np.ones(edges.shape[1], dtype=np.float32), (edges[0], edges[1])), shape=(rows, cols))
        out.data[:] = 1.0  # duplicates count once
        return out

    for relation in relations:
        if relation[2] == target and relation in view.edge_types:
            return matrix(relation, num_items, int(view[target].num_nodes))
    for relation in relations:
        for context in schema.context:
            for hop in (context, reverse(context)):
                if hop[0] == relation[2] and hop[2] == target and hop in view.edge_types:
                    side = int(view[relation[2]].num_nodes)
                    both = matrix(relation, num_items, side) @ matrix(hop, side, int(view[target].num_nodes))
                    both.data[:] = 1.0
                    return both.tocsr()
    reachable = sorted({r[2] for r in relations} | {c[2] for c in schema.context} | {c[0] for c in schema.context})
    raise CategoryError(f"category {target!r} is not reachable from {schema.item} (one of: {', '.join(reachable)})")


class _CategoryLevel:
    """One category level of :class:`CategoryPopularity`: each user's category counts (an
    interaction split over its item's categories), their totals and ``p(item | category)``."""

    def __init__(self, x: sp.csr_matrix, member: sp.csr_matrix, popularity: np.ndarray, exponent: float) -> None:
        share = sp.diags(1.0 / np.maximum(np.asarray(member.sum(axis=1)).ravel(), 1.0)) @ member
        self.counts = (x @ share).tocsr()
        self.user_total = np.asarray(self.counts.sum(axis=1)).ravel()
        weight = np.where(popularity > 0, popularity**exponent, 0.0)  # an unheard item weighs 0, even at exponent 0
        within = (member.T @ sp.diags(weight)).tocsr()
        mass = np.asarray(within.sum(axis=1)).ravel()
        self.item_given_category = (sp.diags(1.0 / np.maximum(mass, 1e-12)) @ within).tocsr().astype(np.float32)

    def scores(self, rows: np.ndarray, smoothing: float, prior: np.ndarray) -> np.ndarray:
        """``(own counts x p(item | category) + smoothing * prior) / (total + smoothing)``."""
        own = np.asarray((self.counts[rows] @ self.item_given_category).todense(), dtype=np.float32)
        scale = (1.0 / np.maximum(self.user_total[rows] + smoothing, 1e-12)).astype(np.float32)
        return (own + smoothing * prior) * scale[:, None]


class CategoryPopularity(Recommender):
    """Popularity conditioned on a category (module docstring); with ``backoff`` the smoothing
    leans on the user's scores at the coarser category (themselves smoothed toward global
    popularity) instead of global popularity."""

    config: CategoryPopularityConfig

    def _fit(self, view: HeteroData) -> None:
        config = self.config
        x = interaction_matrix(view[self.schema.interaction].edge_index, self.num_users, self.num_items)
        x.data[:] = 1.0
        popularity = np.asarray(x.sum(axis=0)).ravel()
        self.prior = (popularity / max(popularity.sum(), 1e-12)).astype(np.float32)[None, :]
        categories = [config.category] + ([config.backoff] if config.backoff else [])
        self.levels = [
            _CategoryLevel(x, item_categories(view, self.schema, c), popularity, config.popularity_exponent)
            for c in categories
        ]

    def score(self, users: Tensor) -> Tensor:
        rows = users.cpu().numpy()
        smoothing = [self.config.smoothing, self.config.backoff_smoothing][: len(self.levels)]
        scores = self.prior
        for level, alpha in reversed(list(zip(self.levels, smoothing))):
            scores = level.scores(rows, alpha, scores)
        return torch.from_numpy(scores if scores.shape[0] == rows.size else np.repeat(scores, rows.size, axis=0))

    def parameter_count(self) -> int:
        return sum(int(level.counts.nnz + level.item_given_category.nnz) for level in self.levels)


def item_similarity(view: HeteroData, schema: Schema, shrink: float, neighbours: int | None = None) -> sp.csr_matrix:
    """Sparse item-item cosine similarity with shrinkage from the view's training interactions
    (float32, diagonal zero); with ``neighbours``, each item (column) keeps its most similar items."""
    x = interaction_matrix(
        view[schema.interaction].edge_index, int(view[schema.user].num_nodes), int(view[schema.item].num_nodes)
    )
    co = (x.T @ x).tocoo()
    norms = np.sqrt(np.asarray(x.sum(0)).ravel())
    values = co.data / (norms[co.row] * norms[co.col] + shrink + 1e-12)
    values[co.row == co.col] = 0.0
    rows, cols = co.row, co.col
    if neighbours is not None:
        order = np.lexsort((rows, -values, cols))  # per target column: most similar first
        rank = np.arange(order.size) - np.searchsorted(cols[order], cols[order])
        keep = order[rank < neighbours]
        rows, cols, values = rows[keep], cols[keep], values[keep]
    return sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=co.shape)


class ItemKNN(Recommender):
    """Item-item cosine with shrinkage (module docstring)."""

    def _fit(self, view: HeteroData) -> None:
        shrink, neighbours = self.config.shrink, self.config.neighbours
        self.x = interaction_matrix(view[self.schema.interaction].edge_index, self.num_users, self.num_items)
        self.similarity = item_similarity(view, self.schema, shrink, neighbours)
        self.unseen = torch.from_numpy(np.asarray(self.x.sum(0)).ravel() == 0)

    def similarity_scores(self, users: Tensor) -> Tensor:
        """``x_u S`` of each user (0 for items without evidence)."""
        return torch.from_numpy(np.asarray((self.x[users.numpy()] @ self.similarity).todense(), dtype=np.float32))

    def score(self, users: Tensor) -> Tensor:
        return self.similarity_scores(users).masked_fill(self.unseen, UNSEEN_SCORE)

    def parameter_count(self) -> int:
        return int(self.similarity.nnz)


class _SeenItems(Recommender):
    """Item-item models solved over the items with a training interaction only."""

    def _rows(self, view: HeteroData) -> Tensor:
        train = view[self.schema.interaction].edge_index
        self.items = torch.unique(train[1])
        self.position = torch.full((self.num_items,), -1, dtype=torch.long)
        self.position[self.items] = torch.arange(self.items.numel())
        x = torch.zeros(self.num_users, self.items.numel())
        x[train[0], self.position[train[1]]] = 1.0
        return x

    def score(self, users: Tensor) -> Tensor:
        out = torch.full((users.numel(), self.num_items), UNSEEN_SCORE)
        out[:, self.items] = self.user_scores[users]
        return out

    def parameter_count(self) -> int:
        return int(self.items.numel()) ** 2


class EASE(_SeenItems):
    """Solved in its dual form (Woodbury identity): with ``K = X Xᵀ`` (users x users),
    ``X P = (λI + K)⁻¹ X`` and ``diag(P) = (1 - colsum(X * (λI + K)⁻¹ X)) / λ``, so
    ``X B = X - (X P) diagMat(1 / diag(P))`` needs one users x users inverse instead of an
    items x items one: exact, and seconds instead of minutes when items outnumber users."""

    config: EASEConfig

    def _fit(self, view: HeteroData) -> None:
        x = self._rows(view).double()
        k = x @ x.T
        k.diagonal().add_(self.config.lam)
        y = torch.cholesky_solve(x, torch.linalg.cholesky(k))  # (lambda I + K)^-1 X = X P
        diag_p = (1.0 - (x * y).sum(dim=0)) / self.config.lam
        self.user_scores = (x - y / diag_p[None, :]).float()


class GraphEASE(_SeenItems):
    """EASE on the interactions plus side rows (module docstring): with ``Z`` = the user rows
    stacked on the side rows (each side node's items, log1p of its edge weight when the relation
    has one, L2-normalised and scaled by ``side_weight``; side nodes with fewer than
    ``min_side_items`` items left out), ``P = (ZᵀZ + λI)⁻¹`` solved in the dual over the rows of
    ``Z``; a query row ``q_u = x_u + friend_weight * mean_{v ~ u} x_v`` scores ``q_u B``."""

    config: GraphEASEConfig

    def _fit(self, view: HeteroData) -> None:
        config, schema = self.config, self.schema
        self._rows(view)
        train, n_items = view[schema.interaction].edge_index, self.items.numel()
        x = sp.csr_matrix(
            (np.ones(train.size(1)), (train[0].numpy(), self.position[train[1]].numpy())),
            shape=(self.num_users, n_items),
        )
        rows = [x]
        side = next(iter(schema.categories.values()), None)
        if config.side_weight > 0 and side is not None:
            edges = view[side].edge_index
            keep = self.position[edges[0]] >= 0
            items, nodes = self.position[edges[0, keep]].numpy(), edges[1, keep].numpy()
            store = view[side]
            weight = (
                np.log1p(store.edge_weight[keep].double().numpy()) if "edge_weight" in store else np.ones(items.size)
            )
            used, node_row = np.unique(nodes, return_inverse=True)
            t = sp.csr_matrix((weight, (node_row, items)), shape=(len(used), n_items))
            t = t[np.asarray((t > 0).sum(axis=1)).ravel() >= config.min_side_items]
            norms = np.sqrt(np.asarray(t.multiply(t).sum(axis=1)).ravel())
            rows.append(sp.diags(config.side_weight / np.maximum(norms, 1e-12)) @ t)
        z = sp.vstack(rows).tocsr()  # (users + side nodes) x items, sparse
        k = torch.from_numpy((z @ z.T).toarray())
        k.diagonal().add_(config.lam)
        m = torch.cholesky_inverse(torch.linalg.cholesky(k)).numpy()  # (lambda I + Z Z^T)^-1
        mz = np.asarray((z.T @ m).T)  # M Z, dense (users + side nodes) x items
        diag_p = (1.0 - np.asarray(z.multiply(mz).sum(axis=0)).ravel()) / config.lam
        query = x.toarray()
        if config.friend_weight > 0 and schema.social is not None:
            friends = view[schema.social].edge_index
            summed = scatter(
                torch.from_numpy(query)[friends[1]], friends[0], dim=0, dim_size=self.num_users, reduce="mean"
            )
            query = query + config.friend_weight * summed.numpy()
        # query P = (query - query Z^T M Z) / lambda, computed as ((query Z^T) M) Z
        qzm = np.asarray((z @ query.T).T) @ m
        query_p = (query - np.asarray((z.T @ qzm.T).T)) / config.lam
        self.user_scores = torch.from_numpy(query - query_p / diag_p[None, :]).float()


class ALS(Recommender):
    """Implicit-feedback ALS from ``implicit`` (one thread, seeded: deterministic)."""

    config: ALSConfig

    def _fit(self, view: HeteroData) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        config = self.config
        # implicit asks for a single-threaded BLAS (its own threads do the work); one thread here
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=config.factors,
                regularization=config.regularization,
                alpha=config.alpha,
                iterations=config.iterations,
                random_state=config.seed,
                num_threads=1,
                calculate_training_loss=False,
            )
            matrix = interaction_matrix(view[self.schema.interaction].edge_index, self.num_users, self.num_items)
            model.fit(matrix, show_progress=False)
        self.user_factors = torch.from_numpy(np.asarray(model.user_factors)).float()
        self.item_factors = torch.from_numpy(np.asarray(model.item_factors)).float()

    def score(self, users: Tensor) -> Tensor:
        return self.user_factors[users] @ self.item_factors.T

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.user_factors, self.item_factors

    def parameter_count(self) -> int:
        return self.user_factors.numel() + self.item_factors.numel()


CLOSED_FORM: dict[str, type[Recommender]] = {
    "most_popular": MostPopular,
    "category_popularity": CategoryPopularity,
    "itemknn": ItemKNN,
    "ease": EASE,
    "als": ALS,
    "graph_ease": GraphEASE,
}
