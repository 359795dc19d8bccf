"""Sampled neighbourhoods: LightGCN embeddings of a batch's nodes from a few neighbours per hop.

A full-graph LightGCN step propagates every node ``num_layers`` times, whatever the batch. For a
graph too large for that, a step can instead compute only the embeddings it scores, each from a
sampled neighbourhood (GraphSAGE-style node-wise sampling, written with torch ops: PyG's samplers
need ``pyg-lib`` or ``torch-sparse``).

**Sampling** (:func:`sample_blocks`). ``N_0`` are the seeds (deduplicated). Hop ``j`` draws, for
every target ``v`` in ``N_{j-1}``, up to ``fanouts[j-1] = f`` of its neighbours from the CSR
adjacency: a target of degree ``d_v <= f`` keeps all its edges with their weights
``A_hat[v, u]``; a larger one gets ``f`` neighbours drawn uniformly with replacement, each weighted
``A_hat[v, u] * d_v / f``. The sampled row ``Â[v]`` is then an unbiased estimate of the full row:
``E[Â[v] @ x] = sum_u P(u) * f * A_hat[v, u] d_v / f * x_u = A_hat[v] @ x`` with ``P(u) = 1 / d_v``.
``N_j`` is the deduplicated set of drawn neighbours, and the hop's :class:`Block` is the small
``|N_{j-1}| x |N_j|`` sparse matrix with local indices (so ``|N_j| <= |N_{j-1}| * f`` and the
block has at most that many edges: the cost of a step is bounded by ``batch * prod(fanouts)``).

**Propagation** (:func:`sampled_lightgcn`). LightGCN's embedding ``e = sum_k a_k A_hat^k h0`` is
evaluated by Horner's scheme, innermost hop first, each product on the sampled nodes only::

    z_L = a_L h0[N_L]
    z_j = a_j h0[N_j] + Â_{j+1} z_{j+1}        (j = L-1 .. 1)
    e[N_0] = a_0 h0[N_0] + Â_1 z_1

Each hop's rows are drawn independently of the other hops given the node sets, so the product
of the sampled blocks is an unbiased estimate of ``A_hat^k`` on the seeds' rows, and with every
fanout at least the maximum degree (or ``-1``: all neighbours, PyG's convention) the result is the
full forward pass exactly, up to float summation order. Gradients reach the id embedding at the
sampled nodes only (``h0[N_j]`` gathers).

:func:`sampled_bpr_embeddings` gives a BPR step its user, positive and negative embeddings from one
sampled forward over the union of the step's nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from ..models.lightgcn import LightGCN
from ..models.propagation import Adjacency


@dataclass
class Block:
    """One hop of a sampled neighbourhood: ``targets`` (global ids, the previous hop's nodes) <-
    ``sources`` (global ids, this hop's nodes), an edge list with local indices and weights.

    ``edge_index`` is ``[2, E]`` (local source row 0, local target row 1, :class:`Adjacency`'s
    convention); ``weight[e]`` is ``A_hat[target, source]``, times ``degree / fanout`` for a
    target whose neighbours were drawn. :meth:`propagate` is ``Â @ x`` for ``x`` over ``sources``.
    """

    targets: Tensor
    sources: Tensor
    edge_index: Tensor
    weight: Tensor

    def __post_init__(self) -> None:
        self.adjacency = Adjacency(self.edge_index, self.sources.numel(), self.targets.numel())

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.size(1))

    def propagate(self, x: Tensor) -> Tensor:
        """``[len(targets), d]``: the block's weighted sum of ``x`` (``[len(sources), d]``) per target."""
        return self.adjacency.spmm(self.weight.to(x.dtype), x)


def _check_fanouts(fanouts: Sequence[int]) -> list[int]:
    fanouts = [int(f) for f in fanouts]
    bad = [f for f in fanouts if f == 0 or f < -1]
    if bad:
        raise ValueError(f"fanouts must be positive (or -1 for all neighbours), got {fanouts}")
    return fanouts


def sample_hop(
    rowptr: Tensor,
    col: Tensor,
    norm_values: Tensor,
    targets: Tensor,
    fanout: int,
    generator: torch.Generator | None = None,
) -> Block:
    """One hop of :func:`sample_blocks` for the (deduplicated) ``targets``: their sampled
    neighbours, deduplicated into the block's sources (module docstring)."""
    device = rowptr.device
    start = rowptr[targets]
    degree = rowptr[targets + 1] - start
    drawn = degree > fanout if fanout >= 0 else torch.zeros_like(degree, dtype=torch.bool)
    counts = torch.where(drawn, torch.full_like(degree, fanout), degree)
    total = int(counts.sum())
    target_local = torch.repeat_interleave(torch.arange(targets.numel(), device=device), counts)
    first = torch.cumsum(counts, 0) - counts  # each target's first slot
    offset = torch.arange(total, device=device) - first[target_local]  # 0..count-1 within a target
    row_degree, row_drawn = degree[target_local], drawn[target_local]
    if bool(drawn.any()):
        # uniform draws in [0, degree): float64 so that rounding never reaches the degree itself
        uniform = torch.rand(
            total,
            generator=generator,
            dtype=torch.float64,
            device=generator.device if generator is not None else device,
        ).to(device)
        picked = torch.minimum((uniform * row_degree).long(), row_degree - 1)
        offset = torch.where(row_drawn, picked, offset)
    position = start[target_local] + offset
    weight = norm_values[position]
    if bool(drawn.any()):
        weight = weight * torch.where(row_drawn, row_degree.to(weight.dtype) / fanout, weight.new_ones(()))
    sources, source_local = torch.unique(col[position], return_inverse=True)
    return Block(targets, sources, torch.stack([source_local, target_local]), weight)


def sample_blocks(
    rowptr: Tensor,
    col: Tensor,
    norm_values: Tensor,
    seeds: Tensor,
    fanouts: Sequence[int],
    generator: torch.Generator | None = None,
) -> list[Block]:
    """The sampled neighbourhood of ``seeds``, one :class:`Block` per hop (module docstring).

    Args:
        rowptr: ``[N + 1]`` CSR row pointers (rows are the nodes whose neighbours are listed).
        col: ``[nnz]`` neighbour ids in CSR order.
        norm_values: ``[nnz]`` edge weights ``A_hat[row, col]`` in CSR order (for LightGCN's
            adjacency, ``norm[adjacency.order]``: :func:`lightgcn_csr`).
        seeds: Node ids (any shape, duplicates allowed); ``blocks[0].targets`` is their sorted set.
        fanouts: Neighbours drawn per target at each hop (``-1``: all of them).
        generator: The random draws' generator (its device may differ from the graph's).

    ``blocks[j].targets`` is ``blocks[j - 1].sources``; the draws are vectorized (one ``rand`` per
    hop, no loop over nodes).
    """
    fanouts = _check_fanouts(fanouts)
    if rowptr.dim() != 1 or col.shape != norm_values.shape or int(rowptr[-1]) != col.numel():
        raise ValueError(
            f"expected a CSR pattern: rowptr [N + 1] ending at nnz, col and norm_values [nnz]; got "
            f"{tuple(rowptr.shape)} (last {int(rowptr[-1])}), {tuple(col.shape)}, {tuple(norm_values.shape)}"
        )
    targets = torch.unique(seeds.to(rowptr.device).long().flatten())
    if targets.numel() and (int(targets[0]) < 0 or int(targets[-1]) >= rowptr.numel() - 1):
        raise ValueError(f"seed ids must lie in [0, {rowptr.numel() - 1}), got {int(targets[0])}..{int(targets[-1])}")
    blocks = []
    for fanout in fanouts:
        blocks.append(sample_hop(rowptr, col, norm_values, targets, fanout, generator))
        targets = blocks[-1].sources
    return blocks


def lightgcn_csr(model: LightGCN, view: HeteroData) -> tuple[Tensor, Tensor, Tensor]:
    """``(rowptr, col, norm_values)``: the model's normalized adjacency of ``view`` in CSR order
    (rows are destinations; the graph is symmetric), cached with the model's adjacency."""
    adjacency, norm = model.adjacency(view)

    def build() -> tuple[Tensor, Tensor, Tensor]:
        return adjacency.crow, adjacency.col, norm[adjacency.order].detach()

    return model.adjacency_cache.get("neighbors/csr", (adjacency.crow, norm), build)


def _check_model(model, fanouts: Sequence[int]) -> list[int]:
    if not isinstance(model, LightGCN):
        raise TypeError(f"sampled neighbourhoods implement LightGCN only, got {type(model).__name__}")
    if model.edge_masks is not None:
        raise ValueError("sampled propagation does not apply edge masks (explanations run the full forward)")
    fanouts = _check_fanouts(fanouts)
    if len(fanouts) != model.config.num_layers:
        raise ValueError(f"one fanout per layer: the model has {model.config.num_layers} layers, got fanouts {fanouts}")
    return fanouts


def sampled_lightgcn(
    model: LightGCN,
    view: HeteroData,
    nodes: Tensor,
    fanouts: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    sparse_grad: bool = False,
) -> Tensor:
    """``[len(nodes), d]``: LightGCN's final embedding (``sum_k alpha_k A_hat^k h0``, as
    :meth:`LightGCN.forward`) of the homogeneous node ids ``nodes`` (users ``0..U-1``, items
    ``U..U+I-1``; 1-D, duplicates allowed) from sampled neighbourhoods, by Horner's scheme over the
    blocks (module docstring). Unbiased; exact when every fanout covers every degree. Not
    L2-normalised (``config.normalize`` is applied by :func:`sampled_bpr_embeddings`).

    With ``sparse_grad`` the id embedding's gradient is a sparse tensor holding the sampled nodes'
    rows only (``F.embedding(..., sparse=True)``), for ``torch.optim.SparseAdam``: a dense
    optimizer updates every row of the table each step, whatever the batch.
    """
    fanouts = _check_model(model, fanouts)
    weight, alpha = model.model.embedding.weight, model.model.alpha
    rowptr, col, norm_values = lightgcn_csr(model, view)
    if nodes.dim() != 1:
        raise ValueError(f"nodes must be 1-D, got shape {tuple(nodes.shape)}")
    seeds, inverse = torch.unique(nodes.to(weight.device).long(), return_inverse=True)
    blocks = sample_blocks(rowptr, col, norm_values, seeds, fanouts, generator)
    # one gather of the id embeddings of every sampled node: its backward writes one [N, d]
    # gradient, not one per hop; each hop's (sorted) node set is then a set of rows of ``h0``
    hops = [blocks[0].targets] + [block.sources for block in blocks]
    union = torch.unique(torch.cat(hops))
    h0 = F.embedding(union, weight, sparse=sparse_grad)
    rows = [torch.searchsorted(union, nodes_j) for nodes_j in hops]
    z = h0[rows[-1]] * alpha[-1]
    for hop in range(len(blocks) - 1, -1, -1):  # z over N_hop = blocks[hop].targets
        z = h0[rows[hop]] * alpha[hop] + blocks[hop].propagate(z)
    return z[inverse]


def sampled_bpr_embeddings(
    model: LightGCN,
    view: HeteroData,
    users: Tensor,
    positives: Tensor,
    negatives: Tensor,
    fanouts: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    sparse_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(user_emb, pos_emb, neg_emb)`` of a BPR step, shaped ``users.shape + (d,)`` and so on
    (e.g. ``[B, d]``, ``[B, d]``, ``[B, n, d]``), from one :func:`sampled_lightgcn` over the
    deduplicated union of the step's users and items (``positives`` and ``negatives`` are item
    indices ``0..I-1``); L2-normalised when ``config.normalize``, like ``model.encode``.
    ``sparse_grad``: see :func:`sampled_lightgcn`."""
    offset = model.num_users
    parts = (users.flatten(), positives.flatten() + offset, negatives.flatten() + offset)
    embedding = sampled_lightgcn(model, view, torch.cat(parts), fanouts, generator, sparse_grad=sparse_grad)
    if model.config.normalize:
        embedding = F.normalize(embedding, dim=1)
    user_emb, pos_emb, neg_emb = embedding.split([part.numel() for part in parts])
    d = embedding.size(1)
    return user_emb.view(*users.shape, d), pos_emb.view(*positives.shape, d), neg_emb.view(*negatives.shape, d)
