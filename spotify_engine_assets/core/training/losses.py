"""Loss terms of one optimizer step, shared by every trainable model of every chain.

* :func:`bpr_step_loss` - BPR on (user, positive, ``n`` negatives) triples from one forward pass,
  in micro-batches (gradient accumulation); weighted per positive.
* :func:`softmax_step_loss` - the full-catalogue softmax of a batch of users over their training
  items (scores / temperature), weighted per pair.
* :func:`extra_terms` - what the config adds to either: the orthogonality and attention-entropy
  regularizers on the step's sampled users and items, the task heads' weighted BCE on the step's
  (user, positive) pairs, and the diversity / coverage surrogates over sampled candidate items
  (``docs`` in ``core/training/trainer.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from ..config import ModelConfig, TrainableConfig
from ..models.base import GraphModel


def pair_scores(user_emb: Tensor, item_emb: Tensor, users: Tensor, items: Tensor) -> Tensor:
    """Dot products of the pairs ``(users[i], items[i])``."""
    return (user_emb[users] * item_emb[items]).sum(-1)


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


def attention_entropy(
    attention: dict[str, tuple[Tensor, Tensor]], nodes: dict[str, Tensor], num_nodes: dict[str, int]
) -> Tensor:
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


def candidate_softmax(
    user_emb: Tensor, item_emb: Tensor, users: Tensor, candidates: Tensor, temperature: float
) -> Tensor:
    """``[|users|, |candidates|]``: each user's softmax over the candidate items' scores / temperature."""
    return torch.softmax(user_emb[users] @ item_emb[candidates].t() / temperature, dim=1)


def exposure_entropy(probs: Tensor) -> Tensor:
    """Entropy of the users' mean softmax exposure over the candidates, divided by ``log |C|`` (in [0, 1])."""
    exposure = probs.mean(0)
    return -(exposure * exposure.clamp_min(1e-12).log()).sum() / math.log(probs.size(1))


def expected_similarity(probs: Tensor, candidate_emb: Tensor) -> Tensor:
    """Mean over users of ``sum_ij p_ui p_uj cos(s_i, s_j)`` (two independent draws from the user's
    softmax), computed as ``|| p_u @ normalize(S) ||^2``: never a candidate x candidate matrix."""
    return (probs @ F.normalize(candidate_emb, dim=1)).pow(2).sum(1).mean()


def objective_penalty(
    user_emb: Tensor, item_emb: Tensor, users: Tensor, candidates: Tensor, config: ModelConfig
) -> Tensor:
    """The multi-objective surrogate terms of one step (module docstring): ``diversity_weight *
    expected_similarity + coverage_weight * (1 - exposure_entropy)`` over the step's distinct users."""
    probs = candidate_softmax(user_emb, item_emb, torch.unique(users), candidates, config.surrogate_temperature)
    penalty = user_emb.new_zeros(())
    if config.diversity_weight:
        penalty = penalty + config.diversity_weight * expected_similarity(probs, item_emb[candidates])
    if config.coverage_weight:
        penalty = penalty + config.coverage_weight * (1.0 - exposure_entropy(probs))
    return penalty


def forward(model: GraphModel, view: HeteroData, config: ModelConfig | None) -> tuple[Tensor, Tensor, dict | None]:
    """The step's one forward pass (with attention when the config regularizes it)."""
    if config is not None and getattr(config, "attention_entropy_weight", 0.0):
        return model.encode(view, return_attention=True)
    user_emb, item_emb = model.encode(view)[:2]
    return user_emb, item_emb, None


def extra_terms(
    loss: Tensor,
    model: GraphModel,
    config: TrainableConfig | None,
    out: tuple[Tensor, Tensor, dict | None],
    users: Tensor,
    positives: Tensor,
    negatives: Tensor,
    labels: Tensor | None,
    candidates: Tensor | None,
) -> Tensor:
    """``loss`` plus the config's regularizers, task heads and surrogates (module docstring)."""
    if config is None:
        return loss
    user_emb, item_emb, attention = out
    if config.orthogonality_weight or config.attention_entropy_weight:
        step_users, step_items = torch.unique(users), torch.unique(torch.cat([positives, negatives]))
    if config.orthogonality_weight:
        penalty = orthogonality_penalty(user_emb[step_users]) + orthogonality_penalty(item_emb[step_items])
        loss = loss + config.orthogonality_weight * penalty
    if config.attention_entropy_weight:
        schema = model.schema
        sizes = {schema.user: user_emb.size(0), schema.item: item_emb.size(0)}
        entropy = attention_entropy(attention, {schema.user: step_users, schema.item: step_items}, sizes)
        loss = loss + config.attention_entropy_weight * entropy
    if config.tasks:
        if labels is None or labels.shape != (users.numel(), len(config.tasks)):
            got = None if labels is None else tuple(labels.shape)
            shape = (users.numel(), len(config.tasks))
            raise ValueError(f"config {config.name!r}: task heads need labels of shape {shape}, got {got}")
        logits = model.task_heads(user_emb, item_emb, users, positives)
        per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
        task_weights = torch.tensor(list(config.tasks.values()), dtype=per_task.dtype)
        loss = loss + (task_weights * per_task).sum()
    if config.surrogates:
        if candidates is None:
            raise ValueError(f"config {config.name!r}: the diversity/coverage surrogates need candidate items")
        loss = loss + objective_penalty(user_emb, item_emb, users, candidates, config)
    return loss


def bpr_step_loss(
    model: GraphModel,
    view: HeteroData,
    users: Tensor,
    positives: Tensor,
    negatives: Tensor,
    weights: Tensor | None,
    micro_batch: int,
    config: TrainableConfig | None = None,
    *,
    labels: Tensor | None = None,
    candidates: Tensor | None = None,
) -> Tensor:
    """The loss of one BPR step: one forward pass, then micro-batches of BPR terms.

    ``negatives`` is ``[B, n]``. Each micro-batch adds ``sum(w * mean_n softplus(neg - pos)) / B``,
    so the total is the (weighted) mean over the step's positives; with ``config``, its
    :func:`extra_terms` are added (``labels``: ``[B, T]`` task labels; ``candidates``: item
    indices of the surrogates).
    """
    out = forward(model, view, config)
    user_emb, item_emb = out[0], out[1]
    total = users.numel()
    loss = user_emb.new_zeros(())
    for start in range(0, total, micro_batch):
        part = slice(start, start + micro_batch)
        u, p, n = users[part], positives[part], negatives[part]
        pos_score = pair_scores(user_emb, item_emb, u, p)
        neg_score = pair_scores(user_emb, item_emb, u.repeat_interleave(n.size(1)), n.flatten()).view(n.shape)
        per_positive = F.softplus(neg_score - pos_score.unsqueeze(1)).mean(1)
        if weights is not None:
            per_positive = per_positive * weights[part]
        loss = loss + per_positive.sum() / total
    return extra_terms(loss, model, config, out, users, positives, negatives.flatten(), labels, candidates)


def softmax_step_loss(
    model: GraphModel,
    view: HeteroData,
    batch_users: Tensor,
    rows: Tensor,
    items: Tensor,
    weights: Tensor | None,
    config: TrainableConfig,
    *,
    labels: Tensor | None = None,
    candidates: Tensor | None = None,
) -> Tensor:
    """The loss of one softmax step: ``-sum_pairs w log softmax(e_u . E / temperature)_i`` over the
    batch users' training pairs (``rows`` index ``batch_users``, ``items`` the positives), divided by
    the number of pairs; plus the config's :func:`extra_terms`."""
    out = forward(model, view, config)
    user_emb, item_emb = out[0], out[1]
    log_p = torch.log_softmax(user_emb[batch_users] @ item_emb.T / config.temperature, dim=1)
    nll = -log_p[rows, items]
    if weights is not None:
        nll = nll * weights
    loss = nll.sum() / rows.numel()
    return extra_terms(loss, model, config, out, batch_users[rows], items, items.new_empty(0), labels, candidates)


@torch.no_grad()
def task_metrics(model: GraphModel, config: ModelConfig, labels: Tensor | None, pairs: Tensor) -> dict[str, dict]:
    """Per task head: ROC AUC of its logits on the ``[2, E]`` interaction pairs (held-out test edges
    in the metric report) against ``labels`` (from their own attributes), with the edge count and
    positive rate; empty for a config without heads."""
    if labels is None:
        return {}
    user_emb, item_emb = model.factors()
    logits = model.task_heads(user_emb, item_emb, pairs[0], pairs[1])
    return {
        task: {
            "auc": roc_auc(logits[:, column], labels[:, column]),
            "edges": int(labels.size(0)),
            "positive_rate": float(labels[:, column].mean()) if labels.size(0) else 0.0,
        }
        for column, task in enumerate(config.tasks)
    }


def sampled_bpr_loss(
    model: GraphModel,
    view: HeteroData,
    users: Tensor,
    positives: Tensor,
    negatives: Tensor,
    weights: Tensor | None,
    fanouts: list[int],
    generator: torch.Generator,
) -> Tensor:
    """BPR of one step on sampled neighbourhoods (:func:`..training.neighbors.sampled_bpr_embeddings`):
    the step's users and items are embedded from their sampled blocks only; the same (weighted)
    mean over positives of ``mean_n softplus(neg - pos)`` as :func:`bpr_step_loss`."""
    from .neighbors import sampled_bpr_embeddings

    user_emb, pos_emb, neg_emb = sampled_bpr_embeddings(model, view, users, positives, negatives, fanouts, generator)
    pos_score = (user_emb * pos_emb).sum(-1)
    neg_score = (user_emb.unsqueeze(1) * neg_emb).sum(-1)
    per_positive = F.softplus(neg_score - pos_score.unsqueeze(1)).mean(1)
    if weights is not None:
        per_positive = per_positive * weights
    return per_positive.sum() / users.numel()
