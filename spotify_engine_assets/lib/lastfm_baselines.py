"""Non-graph baselines for Last.fm 2K, all behind one interface: ``fit(train_pairs)`` then
``scores(users) -> [len(users), num_items]``.

* :class:`MostPopular` - artists ranked by their number of training users (the reference).
* :class:`ItemKNN` - item-item cosine similarity with shrinkage, optionally only each item's
  ``neighbours`` most similar items kept.
* :class:`EASE` - Steck's closed-form shallow autoencoder, ``B = I - P diagMat(1 / diag(P))`` with
  ``P = (X^T X + lambda I)^-1`` and zero diagonal. Solved only over artists with a training
  interaction (the others have an all-zero column and get a score of ``-1e9``), which shrinks the
  dense solve from 17,632 to about 15,300 items.
* :class:`ALS` - implicit-feedback matrix factorisation (Hu, Koren, Volinsky) through the
  ``implicit`` library, confidence ``1 + alpha`` on positives.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .lastfm import interaction_matrix

UNSEEN_SCORE = -1e9


class MostPopular:
    def __init__(self, num_users: int, num_items: int) -> None:
        self.num_users, self.num_items = num_users, num_items

    def fit(self, train: Tensor) -> MostPopular:
        self.popularity = torch.bincount(train[1], minlength=self.num_items).float()
        return self

    def scores(self, users: Tensor) -> Tensor:
        return self.popularity.expand(users.numel(), -1)


class _ItemItem:
    """Shared parts of the item-item models: the user rows and the seen-item restriction."""

    def __init__(self, num_users: int, num_items: int) -> None:
        self.num_users, self.num_items = num_users, num_items

    def _prepare(self, train: Tensor) -> Tensor:
        self.items = torch.unique(train[1])
        position = torch.full((self.num_items,), -1, dtype=torch.long)
        position[self.items] = torch.arange(self.items.numel())
        x = torch.zeros(self.num_users, self.items.numel())
        x[train[0], position[train[1]]] = 1.0
        self.x = x
        return x

    def _finish(self, b: Tensor) -> None:
        """All users' scores at once: sparse user rows times the dense item-item matrix."""
        self.user_scores = torch.sparse.mm(self.x.to_sparse(), b)

    def scores(self, users: Tensor) -> Tensor:
        out = torch.full((users.numel(), self.num_items), UNSEEN_SCORE)
        out[:, self.items] = self.user_scores[users]
        return out


class ItemKNN(_ItemItem):
    def __init__(self, num_users: int, num_items: int, shrink: float = 10.0, neighbours: int | None = None) -> None:
        super().__init__(num_users, num_items)
        self.shrink, self.neighbours = shrink, neighbours

    def fit(self, train: Tensor) -> ItemKNN:
        import scipy.sparse as sp

        x = self._prepare(train)
        xs = sp.csr_matrix(x.numpy())
        gram = (xs.T @ xs).tocoo()  # sparse co-occurrence counts
        norms = np.sqrt(np.asarray(xs.sum(axis=0)).ravel())
        values = gram.data / (norms[gram.row] * norms[gram.col] + self.shrink + 1e-9)
        values[gram.row == gram.col] = 0.0
        sim = torch.zeros(x.size(1), x.size(1))
        sim[torch.from_numpy(gram.row.astype(np.int64)), torch.from_numpy(gram.col.astype(np.int64))] = torch.from_numpy(
            values.astype(np.float32)
        )
        if self.neighbours is not None and self.neighbours < sim.size(0):
            # keep, for each target item (column), its most similar source items
            by_target = sim.T.contiguous()
            top = by_target.topk(self.neighbours, dim=1)
            by_target.zero_()
            by_target.scatter_(1, top.indices, top.values)
            sim = by_target.T
        self._finish(sim)
        return self


class EASE(_ItemItem):
    """Solved in its dual form (Woodbury identity): with ``K = X X^T`` (users x users),
    ``X P = (lambda I + K)^-1 X`` and ``diag(P) = (1 - colsum(X * (lambda I + K)^-1 X)) / lambda``, so
    ``X B = X - (X P) diagMat(1 / diag(P))`` needs one users x users inverse instead of an
    items x items one: exact, and seconds instead of minutes when items outnumber users."""

    def __init__(self, num_users: int, num_items: int, lam: float = 100.0) -> None:
        super().__init__(num_users, num_items)
        self.lam = lam

    def fit(self, train: Tensor) -> EASE:
        x = self._prepare(train).double()
        k = x @ x.T
        k.diagonal().add_(self.lam)
        y = torch.cholesky_solve(x, torch.linalg.cholesky(k))  # (lambda I + K)^-1 X = X P
        diag_p = (1.0 - (x * y).sum(dim=0)) / self.lam
        self.user_scores = (x - y / diag_p[None, :]).float()
        return self


class ALS:
    def __init__(
        self,
        num_users: int,
        num_items: int,
        factors: int = 32,
        regularization: float = 0.1,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 0,
    ) -> None:
        self.num_users, self.num_items = num_users, num_items
        self.params = dict(factors=factors, regularization=regularization, alpha=alpha, iterations=iterations)
        self.seed = seed

    def fit(self, train: Tensor) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        # implicit asks for a single-threaded BLAS (its own threads do the work); one thread here
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                **self.params, random_state=self.seed, num_threads=1, calculate_training_loss=False
            )
            model.fit(interaction_matrix(train, self.num_users, self.num_items), show_progress=False)
        self.user_factors = torch.from_numpy(np.asarray(model.user_factors)).float()
        self.item_factors = torch.from_numpy(np.asarray(model.item_factors)).float()
        return self

    def scores(self, users: Tensor) -> Tensor:
        return self.user_factors[users] @ self.item_factors.T
