"""Sparse message passing: aggregate along a relation with one sparse-dense product.

A graph layer whose message from ``j`` to ``i`` is a scalar coefficient times ``x_j`` (LightGCN's
``1 / sqrt(d_i d_j)``, an attention coefficient times that normalisation) needs no ``[E, d]``
message tensor: the layer is ``A @ x`` with ``A[i, j]`` the coefficient, a CSR sparse-dense product
(``torch.sparse.mm``). :class:`Adjacency` holds a relation's pattern in CSR order (built once per
graph view and cached by the models); :meth:`Adjacency.spmm` multiplies with per-edge values that
may require gradients. Its backward is ``A^T @ grad`` for ``x`` (the transposed pattern is kept)
and a sampled dense-dense product (``torch.sparse.sampled_addmm``: ``grad @ x^T`` only at the
pattern) for the values, so neither direction materializes per-edge messages.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

# torch warns once per process that CSR support is "beta"; the operations used here are stable
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    # the pattern is built here, sorted and in range: torch's per-call invariant check is skipped
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _compressed(rows: Tensor, cols: Tensor, num_rows: int, num_cols: int) -> tuple[Tensor, Tensor, Tensor]:
    """(order, crow_indices, col_indices) of the pattern ``(rows, cols)`` sorted row-major."""
    order = torch.argsort(rows * num_cols + cols, stable=True)
    crow = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=num_rows).cumsum(0)
    return order, crow, cols[order].contiguous()


class Adjacency:
    """A relation's sparsity pattern: rows are destination nodes, columns source nodes.

    ``edge_index`` is ``[2, E]`` (source row 0, destination row 1); values passed to :meth:`spmm`
    and :meth:`matrix` are in that edge order. Duplicate edges are kept (their values add up).
    """

    def __init__(self, edge_index: Tensor, num_src: int, num_dst: int) -> None:
        src, dst = edge_index[0].long(), edge_index[1].long()
        self.shape = (int(num_dst), int(num_src))
        self.order, self.crow, self.col = _compressed(dst, src, *self.shape)
        # the transposed pattern (rows = sources), as positions into the CSR values
        self.t_order, self.t_crow, self.t_col = _compressed(
            src[self.order], dst[self.order], self.shape[1], self.shape[0]
        )
        self.num_edges = int(edge_index.size(1))
        # the sampled product for the values' gradient needs a pattern without duplicates
        keys = dst[self.order] * self.shape[1] + src[self.order]
        unique, self.inverse = torch.unique_consecutive(keys, return_inverse=True)
        if unique.numel() == keys.numel():
            self.inverse, self.unique_crow, self.unique_col = None, self.crow, self.col
        else:
            _, self.unique_crow, self.unique_col = _compressed(
                unique // self.shape[1], unique % self.shape[1], *self.shape
            )

    def to(self, device: torch.device | str) -> Adjacency:
        for name in ("order", "crow", "col", "t_order", "t_crow", "t_col", "inverse", "unique_crow", "unique_col"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def matrix(self, values: Tensor) -> Tensor:
        """The sparse CSR matrix with per-edge ``values`` (edge order; no gradient to the values)."""
        return _csr(self.crow, self.col, values[self.order].detach(), self.shape)

    def spmm(self, values: Tensor, x: Tensor) -> Tensor:
        """``A @ x`` with ``A[dst, src] = values`` (``[E]``, edge order): ``[num_dst, d]``;
        differentiable in ``values`` and ``x``."""
        if values.shape != (self.num_edges,):
            raise ValueError(f"expected one value per edge ({self.num_edges}), got {tuple(values.shape)}")
        return _SpMM.apply(values[self.order], x, self)


class _SpMM(torch.autograd.Function):
    """``A(values) @ x`` for CSR-ordered values (see :class:`Adjacency`)."""

    @staticmethod
    def forward(ctx, values: Tensor, x: Tensor, adjacency: Adjacency) -> Tensor:
        ctx.adjacency = adjacency
        ctx.save_for_backward(values, x)
        return torch.sparse.mm(_csr(adjacency.crow, adjacency.col, values, adjacency.shape), x, reduce="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, x = ctx.saved_tensors
        adjacency: Adjacency = ctx.adjacency
        grad = grad.contiguous()
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            zeros = values.new_zeros(adjacency.unique_col.numel())
            pattern = _csr(adjacency.unique_crow, adjacency.unique_col, zeros, adjacency.shape)
            grad_values = torch.sparse.sampled_addmm(pattern, grad, x.detach().T, beta=0.0).values()
            if adjacency.inverse is not None:
                grad_values = grad_values[adjacency.inverse]
        if ctx.needs_input_grad[1]:
            transposed = _csr(adjacency.t_crow, adjacency.t_col, values[adjacency.t_order], adjacency.shape[::-1])
            grad_x = torch.sparse.mm(transposed, grad, reduce="sum")
        return grad_values, grad_x, None


def relation_degrees(edge_index: Tensor, num_src: int, num_dst: int) -> tuple[Tensor, Tensor]:
    """(source out-degree, destination in-degree) within a relation, as floats clamped to 1."""
    src_degree = torch.bincount(edge_index[0], minlength=num_src).clamp(min=1).float()
    dst_degree = torch.bincount(edge_index[1], minlength=num_dst).clamp(min=1).float()
    return src_degree, dst_degree


def symmetric_norm(edge_index: Tensor, num_src: int, num_dst: int) -> Tensor:
    """LightGCN's per-edge ``1 / sqrt(d_src d_dst)`` (degrees within the relation, clamped to 1)."""
    src_degree, dst_degree = relation_degrees(edge_index, num_src, num_dst)
    return (src_degree[edge_index[0]] * dst_degree[edge_index[1]]).rsqrt()


class AdjacencyCache:
    """What a model builds once per graph view: an entry is rebuilt when any of the tensors it was
    built from is another tensor (compared by identity; the cache holds them, so their addresses
    cannot be reused by a new view's)."""

    def __init__(self) -> None:
        self.entries: dict[Hashable, tuple[tuple[Tensor, ...], Any]] = {}

    def get(self, key: Hashable, sources: tuple[Tensor, ...], build: Callable[[], Any]) -> Any:
        entry = self.entries.get(key)
        if entry is None or len(entry[0]) != len(sources) or any(a is not b for a, b in zip(entry[0], sources)):
            entry = (sources, build())
            self.entries[key] = entry
        return entry[1]

    def clear(self) -> None:
        self.entries.clear()
