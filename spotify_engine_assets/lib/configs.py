"""The registry of named model configurations (the partitions of the trained-model asset).

``spotify_engine_assets/configs/models.yaml`` maps a config name to its settings; every field
is validated (unknown fields, wrong types and out-of-range values fail with the config and
field named). Metric thresholds for the gates live in ``configs/thresholds.yaml``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .paths import configs_dir

ModelKind = Literal["most_popular", "lightgcn", "gat_basic", "gat_enhanced"]


class ConfigError(ValueError):
    """A configuration file or entry is invalid, or a name is unknown."""


class ModelConfig(BaseModel):
    """One named, trainable configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: ModelKind = Field(description="Model family.")
    description: str = ""
    split: Literal["random", "temporal"] = Field("random", description="Which split asset to train and evaluate on.")
    embedding_dim: int = Field(64, gt=0, description="Embedding / hidden size.")
    num_layers: int = Field(2, ge=1, le=8, description="Message-passing layers.")
    heads: int = Field(1, ge=1, le=16, description="Attention heads (GAT models).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability.")
    residual: bool = Field(True, description="Residual connections (enhanced GAT).")
    use_edge_attr: bool = Field(True, description="Listens edge attributes in attention (enhanced GAT).")
    lr: float = Field(0.005, gt=0.0, description="Adam learning rate.")
    l2: float = Field(1e-4, ge=0.0, description="L2 penalty on the batch's id embeddings.")
    batch_size: int = Field(4096, gt=0, description="Positive pairs per optimizer step.")
    max_epochs: int = Field(60, ge=1, description="Upper bound on epochs.")
    patience: int = Field(8, ge=1, description="Epochs without validation Recall@10 gain before stopping.")
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0, description="ReduceLROnPlateau factor.")
    lr_patience: int = Field(3, ge=0, description="ReduceLROnPlateau patience (epochs).")
    seed: int = Field(0, description="Seed for initialisation, shuffling and negatives.")
    # advanced training (lib/training.py): weighted BPR, several negatives, gradient accumulation
    weight_completion: float = Field(
        0.0, ge=0.0, description="Weighted BPR: strength of the mean-completion term of each training interaction."
    )
    weight_play_count: float = Field(
        0.0, ge=0.0, description="Weighted BPR: strength of the log-scaled play-count term (log1p / max log1p)."
    )
    weight_recency: float = Field(
        0.0, ge=0.0, description="Weighted BPR: strength of the recency term 0.5 ** (age_days / half_life_days)."
    )
    half_life_days: float = Field(30.0, gt=0.0, description="Half-life of the recency weight, in days.")
    negatives_per_positive: int = Field(1, ge=1, le=10, description="Negatives sampled per positive pair.")
    grad_accumulation: int = Field(
        1, ge=1, description="Micro-batches of batch_size positives per optimizer step (one forward pass per step)."
    )
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Opt-in: an epoch is this many optimizer steps over all training edges (each step's batch is "
        "ceil(E_train / steps) or one fewer positives; at most E_train steps), so epoch cost grows linearly in the "
        "edges instead of with (E_train / batch_size) full-graph passes. None (default): steps of batch_size x "
        "grad_accumulation positives. Excludes a non-default batch_size or grad_accumulation.",
    )
    orthogonality_weight: float = Field(
        0.0, ge=0.0, description="Regularizer: mean squared cosine between the batch's distinct user and song embeddings."
    )
    attention_entropy_weight: float = Field(
        0.0, ge=0.0, description="Regularizer (GAT models): mean attention entropy at the batch's users and songs."
    )
    # trainer, multi-task heads and multi-objective surrogates (lib/training.py)
    trainer: Literal["simple", "advanced"] = Field(
        "advanced",
        description="simple: every epoch on all training data at a fixed learning rate, no validation, early stopping "
        "or checkpoints (fastest feedback); advanced: validation Recall@10, early stopping, ReduceLROnPlateau, "
        "periodic resumable checkpoints.",
    )
    task_complete_weight: float = Field(
        0.0, ge=0.0, description="Multi-task: weight of the BCE of a 'will complete' head (mean_completion >= "
        "complete_threshold) on the step's training edges, added to the BPR loss; 0: no head."
    )
    task_repeat_weight: float = Field(
        0.0, ge=0.0, description="Multi-task: weight of the BCE of a 'will repeat' head (play_count >= repeat_min_plays) "
        "on the step's training edges, added to the BPR loss; 0: no head."
    )
    complete_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Multi-task: an interaction counts as completed at this mean completion."
    )
    repeat_min_plays: int = Field(2, ge=2, description="Multi-task: an interaction counts as repeated at this play count.")
    diversity_weight: float = Field(
        0.0, ge=0.0, description="Multi-objective: weight of the expected pairwise cosine similarity of two songs drawn "
        "from each batch user's softmax over sampled candidate songs (minimized: more diverse lists)."
    )
    coverage_weight: float = Field(
        0.0, ge=0.0, description="Multi-objective: weight of 1 - the normalised entropy of the batch users' mean "
        "softmax exposure over sampled candidate songs (minimized: exposure spread over more songs)."
    )
    surrogate_temperature: float = Field(
        0.5, gt=0.0, description="Multi-objective: softmax temperature of the surrogates (lower: closer to a top-k list)."
    )
    surrogate_candidates: int = Field(
        256, ge=2, description="Multi-objective: songs sampled uniformly per optimizer step as the surrogates' candidates."
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.model.startswith("gat") and self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be divisible by heads {self.heads}")
        return self

    @model_validator(mode="after")
    def _training_options_need_a_trainable_model(self) -> ModelConfig:
        if self.model == "most_popular":
            changed = [
                name
                for name in (
                    "weight_completion",
                    "weight_play_count",
                    "weight_recency",
                    "negatives_per_positive",
                    "grad_accumulation",
                    "steps_per_epoch",
                    "orthogonality_weight",
                    "trainer",
                    "task_complete_weight",
                    "task_repeat_weight",
                    "diversity_weight",
                    "coverage_weight",
                )
                if getattr(self, name) != type(self).model_fields[name].default
            ]
            if changed:
                raise ValueError(f"{', '.join(changed)} only apply to trainable models, not most_popular")
        return self

    @model_validator(mode="after")
    def _attention_entropy_needs_attention(self) -> ModelConfig:
        if self.attention_entropy_weight and not self.model.startswith("gat"):
            raise ValueError(f"attention_entropy_weight needs an attention model (gat_basic, gat_enhanced), not {self.model}")
        return self

    @model_validator(mode="after")
    def _settings_need_their_objective(self) -> ModelConfig:
        idle = [
            f"{setting} needs {switch} > 0"
            for setting, switch, active in (
                ("complete_threshold", "task_complete_weight", self.task_complete_weight),
                ("repeat_min_plays", "task_repeat_weight", self.task_repeat_weight),
                ("surrogate_temperature", "diversity_weight or coverage_weight", self.diversity_weight or self.coverage_weight),
                ("surrogate_candidates", "diversity_weight or coverage_weight", self.diversity_weight or self.coverage_weight),
            )
            if not active and getattr(self, setting) != type(self).model_fields[setting].default
        ]
        if idle:
            raise ValueError(f"settings without effect: {'; '.join(idle)}")
        return self

    @model_validator(mode="after")
    def _one_way_to_size_a_step(self) -> ModelConfig:
        if self.steps_per_epoch is not None:
            clash = [
                f"{name} {getattr(self, name)}"
                for name in ("batch_size", "grad_accumulation")
                if getattr(self, name) != type(self).model_fields[name].default
            ]
            if clash:
                raise ValueError(
                    f"steps_per_epoch {self.steps_per_epoch} sizes each optimizer step itself; remove {' and '.join(clash)}"
                )
        return self

    def positives_per_step(self, train_pairs: int) -> int:
        """The most positives one optimizer step takes on ``train_pairs`` training edges:
        ``batch_size * grad_accumulation``, or with ``steps_per_epoch`` ``ceil(train_pairs / steps)``
        (at least 1)."""
        if self.steps_per_epoch is None:
            return self.batch_size * self.grad_accumulation
        return max(1, math.ceil(train_pairs / self.steps_per_epoch))

    def steps_in_epoch(self, train_pairs: int) -> int:
        """Optimizer steps of one epoch over ``train_pairs`` training edges (0 for no edges)."""
        if self.steps_per_epoch is None:
            return math.ceil(train_pairs / (self.batch_size * self.grad_accumulation))
        return min(self.steps_per_epoch, train_pairs)

    @property
    def tasks(self) -> dict[str, float]:
        """The multi-task heads this config trains, by name, with their loss weights."""
        weights = {"complete": self.task_complete_weight, "repeat": self.task_repeat_weight}
        return {task: weight for task, weight in weights.items() if weight > 0}

    @property
    def trainable(self) -> bool:
        return self.model != "most_popular"

    @property
    def weighted(self) -> bool:
        """Whether the BPR loss is weighted per interaction."""
        return bool(self.weight_completion or self.weight_play_count or self.weight_recency)


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: file not found") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"{path}: expected a non-empty mapping of names to settings")
    return loaded


def load_registry(path: Path | None = None) -> dict[str, ModelConfig]:
    """All named configs from ``models.yaml`` (or ``path``), validated."""
    path = path or configs_dir() / "models.yaml"
    return registry_from_mapping(_read_yaml(path), path)


def registry_from_mapping(entries: dict, path: Path | str) -> dict[str, ModelConfig]:
    """Validate a ``models.yaml``-schema mapping (name -> settings); errors name ``path``."""
    registry = {}
    for name, settings in entries.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: config {name!r} must be a mapping")
        if "name" in settings:
            raise ConfigError(f"{path}: config {name!r}: remove the 'name' field, the key is the name")
        try:
            registry[str(name)] = ModelConfig(name=str(name), **settings)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ConfigError(f"{path}: config {name!r}: {problems}") from None
    return registry


@functools.cache
def default_registry() -> dict[str, ModelConfig]:
    return load_registry()


def get_config(name: str, registry: dict[str, ModelConfig] | None = None) -> ModelConfig:
    """The config named ``name``; an unknown name lists the known ones. Without ``registry``:
    ``models.yaml``, then the configs promoted into the data lake (``lib/registry.py``)."""
    if registry is None:
        registry = default_registry()
        if name not in registry:
            from .registry import full_registry  # promoted configs (imports this module)

            registry = full_registry()
    if name not in registry:
        raise ConfigError(f"unknown model config {name!r}; known configs: {', '.join(sorted(registry))}")
    return registry[name]


class Thresholds(BaseModel):
    """Metric gates, all ratios (never percentages)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ndcg10_min_ratio_vs_most_popular: float = Field(gt=0.0)
    ndcg10_min_ratio_vs_random: float = Field(gt=0.0)
    # A/B comparisons and the champion gate (see lib/stats.py)
    ab_alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Family-wise significance level (Holm).")
    ab_primary_test: Literal["ttest", "wilcoxon"] = Field("ttest", description="Paired test behind verdicts.")
    ab_bootstrap_resamples: int = Field(2000, ge=100, description="Bootstrap resamples for confidence intervals.")
    champion_metric: str = Field("ndcg@10", description="Per-user metric the champion gate and promotion test.")
    champion_min_improvement: float = Field(0.0, ge=0.0, description="Mean gain a challenger needs to be promoted.")
    # Fairness (warning check): largest gap between groups, relative to the best group
    fairness_metric: str = Field("ndcg@10", description="Per-user metric compared across user groups.")
    fairness_max_relative_gap: float = Field(0.75, gt=0.0, le=1.0, description="Warn above this relative gap.")


def load_thresholds(path: Path | None = None) -> Thresholds:
    path = path or configs_dir() / "thresholds.yaml"
    try:
        return Thresholds(**_read_yaml(path))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from None
