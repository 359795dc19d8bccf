"""A chain is data, not code: a :class:`Dataset` names what differs between chains, and every step
after the split (models, training, evaluation, reports, studies, serving) is the same core code.

A dataset says: its schema (the relations), its evaluation protocol (metric set, validation
metric, ranking rules), its registry of model configs and split strategies, how to build the
message-passing view of a training part (:attr:`view`: ``(graph, train_index, heldout_index) ->
HeteroData``, nothing held out visible), and the leakage counts a split must keep at zero
(:attr:`split_violations`). The graph is a ``HeteroData`` whose interaction relation holds every
interaction; a split is ``{strategy: {"train", "valid", "test"}}`` of index tensors into those
interactions (a view takes the edges in index order).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from .config import ModelConfig
from .data.graph import Schema, category_features, heldout_in_view, num_nodes_of, training_view
from .data.splits import check_partition
from .evaluation.protocol import Protocol
from .evaluation.report import EvaluationData, user_types_of
from .models import FitResult, Recommender, build_model, load_model, sample_users
from .registry import Registry
from .training.inputs import training_inputs


def split_violations(data: HeteroData, splits: dict, schema: Schema, view=None, cover: bool = True) -> dict[str, int]:
    """Per strategy of ``splits``: indices in several parts (or, with ``cover``, in none) or out of
    range, and held-out interactions visible in the view of the training part. All must be 0."""
    view = view or (lambda graph, train, heldout: training_view(graph, schema, train))
    counts = {}
    for strategy in (s for s in splits if s != "settings"):
        parts = splits[strategy]
        for name, value in check_partition(parts, int(data[schema.interaction].edge_index.size(1)), cover).items():
            counts[f"{strategy}/{name}"] = value
        heldout = torch.cat([parts["valid"], parts["test"]])
        counts[f"{strategy}/heldout_in_view"] = heldout_in_view(
            view(data, parts["train"], heldout), data, schema, heldout
        )
    return counts


@dataclass(frozen=True)
class Dataset:
    """One chain's data-specific parts (module docstring)."""

    name: str
    schema: Schema
    protocol: Protocol
    registry: Registry
    view: Callable[[HeteroData, Tensor, Tensor], HeteroData]
    split_violations: Callable[[HeteroData, dict], dict[str, int]]
    description: str = ""

    @property
    def strategies(self) -> tuple[str, ...]:
        return self.registry.strategies

    def pairs(self, data: HeteroData, index: Tensor) -> Tensor:
        return data[self.schema.interaction].edge_index[:, index]

    def training_index(self, split: dict, config: ModelConfig) -> Tensor:
        """The interactions a config learns from: the training part, or with ``train_on_validation``
        the training and validation parts (in index order)."""
        if config.train_on_validation:
            return torch.sort(torch.cat([split["train"], split["valid"]])).values
        return split["train"]

    def view_for(self, data: HeteroData, split: dict, config: ModelConfig) -> HeteroData:
        """The message-passing view a config trains and scores on: its training interactions, and
        everything else of the split held out."""
        train = self.training_index(split, config)
        heldout = split["test"] if config.train_on_validation else torch.cat([split["valid"], split["test"]])
        return self.view(data, train, heldout)

    def sample(self, data: HeteroData, config: ModelConfig) -> Tensor | None:
        """The config's seeded user sample (None: every user)."""
        return sample_users(int(data[self.schema.user].num_nodes), config.user_sample, config.seed)

    def build(self, config: ModelConfig, data: HeteroData) -> Recommender:
        return build_model(config, self.schema, num_nodes_of(data))

    def fit(
        self,
        config: ModelConfig,
        data: HeteroData,
        split: dict,
        model: Recommender | None = None,
        device: torch.device | str | None = None,
        **training,
    ) -> tuple[Recommender, FitResult, HeteroData]:
        """Build ``config``'s model and fit it on its view of ``split`` (one strategy's parts):
        closed-form models solve, graph models train with the one trainer (``training``: its
        ``max_epochs``, ``log``, ``on_epoch``, ``checkpoint_dir``, ``checkpoint_every``), early
        stopping on the validation part with the chain's protocol and weighting / labelling from
        the training edges only (``model``: one :meth:`build` made already). A graph model trains on
        ``device`` (default CPU) and comes back on the CPU. Returns the model (ready to score), the
        fit and the view."""
        view = self.view_for(data, split, config)
        model = model if model is not None else self.build(config, data)
        if config.trainable:
            training.update(training_inputs(config, data, self.schema, self.training_index(split, config)))
            training.update(
                valid_pairs=self.pairs(data, split["valid"]),
                protocol=self.protocol.for_graph(data),
                users=self.sample(data, config),
            )
        if not config.trainable or device is None or torch.device(device).type == "cpu":
            return model, model.fit(view, **training), view
        result = model.to(device).fit(copy.copy(view).to(device), **training)
        model.to("cpu").reset_cache()
        result.best_state = {key: value.cpu() for key, value in result.best_state.items()}
        result.final_state = {key: value.cpu() for key, value in result.final_state.items()}
        return model.prepare(view), result, view

    def load(self, config: ModelConfig, data: HeteroData, split: dict, state: dict) -> tuple[Recommender, HeteroData]:
        """A trained model from its stored state, ready to score on its view of ``split``."""
        view = self.view_for(data, split, config)
        return load_model(config, self.schema, view, state), view

    def evaluation_data(
        self, data: HeteroData, split: dict, config: ModelConfig, segments: pl.DataFrame | None = None
    ) -> EvaluationData:
        """What the metric report needs: test pairs scored with the config's training (and
        validation) pairs masked, item category features, user ids and types, the user sample."""
        user_ids = data[self.schema.user].get("node_id")
        if not isinstance(user_ids, Tensor):
            user_ids = torch.arange(int(data[self.schema.user].num_nodes))
        return EvaluationData(
            num_users=int(data[self.schema.user].num_nodes),
            num_items=int(data[self.schema.item].num_nodes),
            train=self.pairs(data, self.training_index(split, config)),
            valid=self.pairs(data, split["valid"][:0] if config.train_on_validation else split["valid"]),
            test=self.pairs(data, split["test"]),
            user_ids=user_ids,
            categories={
                role: features
                for role in self.schema.categories
                if (features := category_features(data, self.schema, role)) is not None
            },
            user_types=user_types_of(user_ids, segments) if segments is not None else None,
            users=self.sample(data, config),
        )
