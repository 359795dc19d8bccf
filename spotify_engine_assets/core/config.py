"""One config base for every model of every chain, and the metric thresholds.

A model config is one entry of a chain's registry file (``configs/<chain>/models.yaml``): the key
is its name, ``model`` picks the class (a pydantic discriminated union), and every field is
validated by ``Field`` bounds, ``Literal`` choices and validators (unknown fields, wrong types
and out-of-range values fail naming the file, the config and the field; a setting that has no
effect in its config is an error too). :class:`ModelConfig` holds what every config has, the
closed-form models add their own fields, and :class:`TrainableConfig` every field of the one
trainer (``core/training``). Metric gates live in ``configs/thresholds.yaml`` (:class:`Thresholds`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from .storage.paths import configs_dir, safe_name
from .strict_yaml import DuplicateKeyError, load_yaml

MAX_WORLD_SIZE = 16  # training processes of one model (TrainableConfig.world_size)


class ConfigError(ValueError):
    """A configuration file or entry is invalid, or a name is unknown."""


def validation_problems(error: ValidationError) -> str:
    """A pydantic error as ``field: message; ...`` (the discriminator's tag left out of paths)."""
    parts = []
    for entry in error.errors():
        location = [str(part) for part in entry["loc"] if str(part) not in MODEL_KINDS]
        message = entry["msg"].removeprefix("Value error, ")
        parts.append(f"{'.'.join(location)}: {message}" if location else message)
    return "; ".join(parts)


def read_yaml(path: Path) -> dict:
    """A non-empty YAML mapping; any problem is a :class:`ConfigError` naming the file."""
    try:
        loaded = load_yaml(Path(path).read_text(), path)
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: file not found") from error
    except DuplicateKeyError as error:
        raise ConfigError(str(error)) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"{path}: expected a non-empty mapping of names to settings")
    return loaded


class ModelConfig(BaseModel):
    """What every model config has."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    trainable: ClassVar[bool] = False
    has_attention: ClassVar[bool] = False

    name: str
    model: str
    description: str = ""
    seed: int = Field(0, description="Seed for initialisation, shuffling, negatives and the user sample.")
    split: str | None = Field(
        None, description="Split strategy of the chain to train and evaluate on (None: its first)."
    )
    user_sample: int | None = Field(
        None, ge=1, description="Train and evaluate on a seeded sample of this many users (None: every user)."
    )
    train_on_validation: bool = Field(
        False,
        description="Fit on the training and validation parts (hyperparameters and epochs were chosen on "
        "validation before): the final fit of a tuned config. Needs the simple trainer for trainable models.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, name: str) -> str:
        """The name becomes a partition key and folder names (artifacts, checkpoints, reports)."""
        return safe_name(name, "config name")


class MostPopularConfig(ModelConfig):
    model: Literal["most_popular"]


class ItemKNNConfig(ModelConfig):
    model: Literal["itemknn"]
    shrink: float = Field(10.0, ge=0.0, description="Cosine shrinkage: co-occurrence / (norm_i norm_j + shrink).")
    neighbours: int | None = Field(None, ge=1, description="Keep each item's most similar items only (None: all).")


class EASEConfig(ModelConfig):
    model: Literal["ease"]
    lam: float = Field(100.0, gt=0.0, description="L2 penalty of EASE's closed form.")


class ALSConfig(ModelConfig):
    model: Literal["als"]
    factors: int = Field(32, ge=1)
    regularization: float = Field(0.1, ge=0.0)
    alpha: float = Field(10.0, ge=0.0, description="Confidence 1 + alpha on positives.")
    iterations: int = Field(15, ge=1)


class GraphEASEConfig(ModelConfig):
    model: Literal["graph_ease"]
    lam: float = Field(100.0, gt=0.0)
    side_weight: float = Field(
        0.0,
        ge=0.0,
        description="Weight of each side node (tag, genre, ...) as a pseudo-user row of its items (0: off).",
    )
    friend_weight: float = Field(0.0, ge=0.0, description="Smooth a user's row with the mean of their friends' rows.")
    min_side_items: int = Field(2, ge=1, description="Side nodes with fewer items are left out.")


class CategoryPopularityConfig(ModelConfig):
    model: Literal["category_popularity"]
    category: str | None = Field(
        None,
        description="Side node type the popularity is conditioned on (genre, artist, tag): an item category "
        "of the chain, or a context node type one hop beyond one (a track's artist's genres). None: the chain's "
        "main category.",
    )
    smoothing: float = Field(
        1.0,
        ge=0.0,
        description="Pseudo-interactions of the global category distribution added to each user's "
        "own (a user with few interactions leans on the overall category shares).",
    )
    popularity_exponent: float = Field(
        1.0, ge=0.0, description="Items within a category are ranked by training popularity ** this (0: uniform)."
    )
    backoff: str | None = Field(
        None,
        description="A coarser category the smoothing backs off to instead of the global shares (artist "
        "backing off to genre: a user's unheard artists of their genres first).",
    )
    backoff_smoothing: float = Field(
        1.0, ge=0.0, description="The backoff level's own smoothing toward the global shares."
    )

    @model_validator(mode="after")
    def _backoff_is_another_category(self) -> CategoryPopularityConfig:
        if self.backoff is not None and self.backoff == self.category:
            raise ValueError(f"backoff {self.backoff!r} must differ from category")
        if self.backoff is None and self.backoff_smoothing != 1.0:
            raise ValueError("settings without effect: backoff_smoothing needs backoff")
        return self


# what a graph model's scores can be fused with: the closed-form models (``TrainableConfig.fusion``)
FusableConfig = Annotated[
    MostPopularConfig | CategoryPopularityConfig | ItemKNNConfig | EASEConfig | ALSConfig | GraphEASEConfig,
    Field(discriminator="model"),
]

DEFAULT_STEPS_PER_EPOCH = 16


class TrainableConfig(ModelConfig):
    """The fields of the one trainer (``core/training/trainer.py``)."""

    trainable: ClassVar[bool] = True
    embedding_dim: int = Field(64, gt=0, description="Embedding / hidden size.")
    num_layers: int = Field(2, ge=1, le=8, description="Message-passing layers.")
    lr: float = Field(0.005, gt=0.0, description="Adam learning rate.")
    l2: float = Field(1e-4, ge=0.0, description="L2 penalty on the step's id embeddings.")
    loss: Literal["bpr", "softmax"] = Field(
        "bpr",
        description="bpr: pairwise loss on (user, positive, sampled negative), steps of batch_size positive "
        "pairs; softmax: full-catalogue softmax of each user's training items (embeddings / temperature), steps of "
        "batch_size users.",
    )
    temperature: float = Field(0.1, gt=0.0, description="Softmax loss: logits are scores / temperature.")
    normalize: bool = Field(False, description="Score by cosine: L2-normalise user and item embeddings.")
    batch_size: int = Field(
        4096,
        gt=0,
        description="Positive pairs (bpr) or users (softmax) per optimizer step when steps_per_epoch is None.",
    )
    max_epochs: int = Field(60, ge=1, description="Upper bound on epochs.")
    trainer: Literal["simple", "advanced"] = Field(
        "advanced",
        description="simple: max_epochs epochs at a fixed learning rate, no validation, early stopping or "
        "checkpoints; advanced: the chain's validation metric every eval_every epochs, early stopping, "
        "ReduceLROnPlateau, resumable checkpoints.",
    )
    eval_every: int = Field(1, ge=1, description="Validate every this many epochs (and after the last).")
    valid_users: int | None = Field(
        5000,
        ge=1,
        description="Validation ranks the catalogue for a seeded sample of at most this many users with "
        "validation pairs (None: all of them): ranking costs users x items, so a capped sample keeps validation "
        "linear in the catalogue on large worlds.",
    )
    patience: int = Field(8, ge=1, description="Validations without gain before stopping.")
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0, description="ReduceLROnPlateau factor.")
    lr_patience: int | None = Field(
        3, ge=0, description="ReduceLROnPlateau patience in validations (None: no schedule)."
    )
    # weighted BPR, negatives, step sizing
    weight_completion: float = Field(
        0.0, ge=0.0, description="Weighted loss: strength of the mean-completion term of each training interaction."
    )
    weight_play_count: float = Field(
        0.0, ge=0.0, description="Weighted loss: strength of the log-scaled play-count term (log1p / max log1p)."
    )
    weight_recency: float = Field(
        0.0, ge=0.0, description="Weighted loss: strength of the recency term 0.5 ** (age_days / half_life_days)."
    )
    half_life_days: float = Field(30.0, gt=0.0, description="Half-life of the recency weight, in days.")
    negatives_per_positive: int = Field(1, ge=1, le=10, description="BPR: negatives sampled per positive pair.")
    grad_accumulation: int = Field(
        1,
        ge=1,
        description="BPR: micro-batches of batch_size positives per optimizer step (one forward pass per step).",
    )
    steps_per_epoch: int | None = Field(
        DEFAULT_STEPS_PER_EPOCH,
        ge=1,
        description="An epoch is this many optimizer steps over all training units "
        "(bpr: edges, softmax: users), each ceil(units / steps) or one fewer (at most one step per unit): every step "
        "is a full-graph pass, so epoch cost grows linearly in the edges. None: steps of batch_size (x "
        "grad_accumulation) units, E_train / batch_size full-graph passes an epoch. A config that sets batch_size or "
        "grad_accumulation and not steps_per_epoch gets None.",
    )
    # regularizers, task heads, surrogates
    orthogonality_weight: float = Field(
        0.0,
        ge=0.0,
        description="Regularizer: mean squared cosine between the step's distinct user and item embeddings.",
    )
    attention_entropy_weight: float = Field(
        0.0, ge=0.0, description="Regularizer (attention models): mean attention entropy at the step's users and items."
    )
    task_complete_weight: float = Field(
        0.0,
        ge=0.0,
        description="Multi-task: weight of the BCE of a 'will complete' head (mean_completion >= "
        "complete_threshold) on the step's training edges, added to the loss; 0: no head.",
    )
    task_repeat_weight: float = Field(
        0.0,
        ge=0.0,
        description="Multi-task: weight of the BCE of a 'will repeat' head (play_count >= repeat_min_plays) "
        "on the step's training edges, added to the loss; 0: no head.",
    )
    complete_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Multi-task: an interaction counts as completed at this mean completion."
    )
    repeat_min_plays: int = Field(
        2, ge=2, description="Multi-task: an interaction counts as repeated at this play count."
    )
    diversity_weight: float = Field(
        0.0,
        ge=0.0,
        description="Multi-objective: weight of the expected pairwise cosine similarity of two items drawn "
        "from each step user's softmax over sampled candidate items (minimized: more diverse lists).",
    )
    coverage_weight: float = Field(
        0.0,
        ge=0.0,
        description="Multi-objective: weight of 1 - the normalised entropy of the step users' mean "
        "softmax exposure over sampled candidate items (minimized: exposure spread over more items).",
    )
    surrogate_temperature: float = Field(
        0.5,
        gt=0.0,
        description="Multi-objective: softmax temperature of the surrogates (lower: closer to a top-k list).",
    )
    surrogate_candidates: int = Field(
        256,
        ge=2,
        description="Multi-objective: items sampled uniformly per optimizer step as the surrogates' candidates.",
    )
    fusion: FusableConfig | None = Field(
        None,
        description="After training, mix the model's scores with a closed-form model's, given as a registry "
        "entry without its name (e.g. {model: itemknn, shrink: 10} or {model: category_popularity, category: "
        "artist}) and fitted on the same training view: (1 - w) z(model) + w z(other) (z: per-user "
        "standardization), w chosen on the validation metric and stored with the weights.",
    )
    fusion_weight: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="The fusion's w, fixed (chosen on validation before, like max_epochs for a "
        "final fit with train_on_validation); None: chosen on the validation part after training.",
    )
    world_size: int = Field(
        1,
        ge=1,
        le=MAX_WORLD_SIZE,
        description="Training processes (core/training/distributed.py): 1 trains in "
        "process; n > 1 launches n torchrun workers (gloo on CPU, NCCL on CUDA, one torch thread each) that split every "
        "optimizer step's units (bpr: positives, softmax: users) into n shards of the same global step and all-reduce "
        "the gradients, so a step equals the 1-process step up to float summation order. Every worker propagates over "
        "the full graph: the speed-up is in the loss, not in the message passing (sampled steps, neighbor_fanouts, "
        "split both).",
    )

    @property
    def tasks(self) -> dict[str, float]:
        """The multi-task heads this config trains, by name, with their loss weights."""
        weights = {"complete": self.task_complete_weight, "repeat": self.task_repeat_weight}
        return {task: weight for task, weight in weights.items() if weight > 0}

    @property
    def weighted(self) -> bool:
        """Whether the loss is weighted per interaction."""
        return bool(self.weight_completion or self.weight_play_count or self.weight_recency)

    @property
    def surrogates(self) -> bool:
        return bool(self.diversity_weight or self.coverage_weight)

    @property
    def layers(self) -> int:
        """The message-passing layers the model really has (for cost estimates)."""
        return self.num_layers

    def positives_per_step(self, train_pairs: int) -> int:
        """The most units one step takes out of ``train_pairs`` (BPR: positives; softmax: users):
        ``batch_size * grad_accumulation``, or with ``steps_per_epoch`` ``ceil(train_pairs / steps)``
        (at least 1)."""
        if self.steps_per_epoch is None:
            return self.batch_size * self.grad_accumulation
        return max(1, math.ceil(train_pairs / self.steps_per_epoch))

    def steps_in_epoch(self, train_pairs: int) -> int:
        """Optimizer steps of one epoch over ``train_pairs`` units (0 for none)."""
        if self.steps_per_epoch is None:
            return math.ceil(train_pairs / (self.batch_size * self.grad_accumulation))
        return min(self.steps_per_epoch, train_pairs)

    def _changed(self, *names: str) -> list[str]:
        return [name for name in names if getattr(self, name) != type(self).model_fields[name].default]

    @model_validator(mode="after")
    def _settings_need_their_objective(self) -> TrainableConfig:
        idle = [
            f"{setting} needs {switch}"
            for setting, switch, active in (
                ("complete_threshold", "task_complete_weight > 0", self.task_complete_weight),
                ("repeat_min_plays", "task_repeat_weight > 0", self.task_repeat_weight),
                ("surrogate_temperature", "diversity_weight or coverage_weight > 0", self.surrogates),
                ("surrogate_candidates", "diversity_weight or coverage_weight > 0", self.surrogates),
                ("temperature", "loss: softmax", self.loss == "softmax"),
            )
            if not active and self._changed(setting)
        ]
        if idle:
            raise ValueError(f"settings without effect: {'; '.join(idle)}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _fusion_entry(cls, data):
        """``fusion`` is a registry entry without a name (it is named ``fusion``); the settings of
        earlier versions, ``itemknn_fusion: true`` with ``fusion_shrink``, mean ``{model: itemknn,
        shrink: fusion_shrink}`` (stored artifacts keep loading)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "itemknn_fusion" in data or "fusion_shrink" in data:
            if "fusion" in data:
                raise ValueError("give fusion, or the older itemknn_fusion / fusion_shrink, not both")
            legacy, shrink = data.pop("itemknn_fusion", False), data.pop("fusion_shrink", None)
            if legacy:
                data["fusion"] = {"model": "itemknn", **({} if shrink is None else {"shrink": shrink})}
            elif shrink is not None:
                raise ValueError("settings without effect: fusion_shrink needs itemknn_fusion: true")
        if isinstance(data.get("fusion"), dict):
            if "name" in data["fusion"] and data["fusion"]["name"] != "fusion":
                raise ValueError("fusion: remove the 'name' field, the fused model is named 'fusion'")
            data["fusion"] = {**data["fusion"], "name": "fusion"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _fixed_size_steps_when_asked(cls, data):
        """A config that sizes its steps (batch_size or grad_accumulation) and does not name
        steps_per_epoch takes fixed-size steps."""
        if (
            isinstance(data, dict)
            and "steps_per_epoch" not in data
            and ({"batch_size", "grad_accumulation"} & data.keys())
        ):
            data = {**data, "steps_per_epoch": None}
        return data

    @model_validator(mode="after")
    def _one_way_to_size_a_step(self) -> TrainableConfig:
        if self.loss == "softmax":
            clash = self._changed("negatives_per_positive", "grad_accumulation")
            if clash:
                raise ValueError(f"{' and '.join(clash)} apply to BPR steps; the softmax loss takes users, not pairs")
        if self.steps_per_epoch is not None:
            clash = [f"{name} {getattr(self, name)}" for name in self._changed("batch_size", "grad_accumulation")]
            if clash:
                raise ValueError(
                    f"steps_per_epoch {self.steps_per_epoch} sizes each optimizer step itself; "
                    f"remove {' and '.join(clash)}"
                )
        return self

    @model_validator(mode="after")
    def _validation_is_not_training(self) -> TrainableConfig:
        if self.train_on_validation and self.trainer == "advanced":
            raise ValueError("train_on_validation needs trainer: simple (the advanced trainer stops on validation)")
        if self.train_on_validation and self.fusion is not None and self.fusion_weight is None:
            raise ValueError("fusion chooses its weight on validation; to train on validation too, fix fusion_weight")
        if self.fusion is None and self.fusion_weight is not None:
            raise ValueError("settings without effect: fusion_weight needs fusion")
        if self.fusion is not None:
            idle = [
                name
                for name in ("train_on_validation", "user_sample", "split", "seed", "description")
                if getattr(self.fusion, name) != ModelConfig.model_fields[name].default
            ]
            if idle:
                raise ValueError(
                    f"fusion: {', '.join(idle)}: no effect (the fused model is fitted on the "
                    "graph model's own training view)"
                )
        if self.attention_entropy_weight and not self.has_attention:
            raise ValueError(f"attention_entropy_weight needs an attention model, not {self.model}")
        return self

    @model_validator(mode="after")
    def _shards_add_up(self) -> TrainableConfig:
        """world_size > 1 splits a step's units over processes and sums their gradients: a loss
        term that is not a sum over those units cannot be split that way."""
        if self.world_size > 1:
            batch_level = [
                name
                for name in ("orthogonality_weight", "attention_entropy_weight", "diversity_weight", "coverage_weight")
                if getattr(self, name)
            ]
            if batch_level:
                raise ValueError(
                    f"world_size {self.world_size}: {', '.join(batch_level)} are terms of the whole step's "
                    "distinct users and items, not sums over its units, so shards cannot add them up; "
                    "use world_size: 1"
                )
        return self


class LightGCNConfig(TrainableConfig):
    model: Literal["lightgcn"]
    neighbor_fanouts: list[int] | None = Field(
        None,
        description="Mini-batch training on sampled neighbourhoods (core/training/neighbors.py): per layer, "
        "the neighbours a node keeps (-1: all; larger degrees are sampled, reweighted to stay unbiased); a step "
        "propagates only over its batch's sampled blocks, so its memory is bounded by batch_size x the fanouts' "
        "product, not the graph. Steps of batch_size positives (steps_per_epoch null), BPR only. None: full-graph steps.",
    )

    @model_validator(mode="before")
    @classmethod
    def _sampled_steps_take_batches(cls, data):
        if isinstance(data, dict) and data.get("neighbor_fanouts") is not None and "steps_per_epoch" not in data:
            data = {**data, "steps_per_epoch": None}
        return data

    @model_validator(mode="after")
    def _fanouts_fit_the_model(self) -> LightGCNConfig:
        fanouts = self.neighbor_fanouts
        if fanouts is None:
            return self
        problems = []
        if len(fanouts) != self.num_layers:
            problems.append(f"{len(fanouts)} fanouts for {self.num_layers} layers (one per layer)")
        if any(f == 0 or f < -1 for f in fanouts):
            problems.append(f"fanouts must be >= 1 or -1 (all), got {fanouts}")
        if self.steps_per_epoch is not None:
            problems.append("sampled steps take batch_size positives; set steps_per_epoch: null")
        if self.loss != "bpr":
            problems.append("sampled steps train with loss: bpr")
        extras = [
            name
            for name in (
                "orthogonality_weight",
                "diversity_weight",
                "coverage_weight",
                "task_complete_weight",
                "task_repeat_weight",
            )
            if getattr(self, name)
        ]
        if extras:
            problems.append(f"{', '.join(extras)} need the full graph's embeddings")
        if problems:
            raise ValueError(f"neighbor_fanouts {fanouts}: {'; '.join(problems)}")
        return self


class AttentionConfig(TrainableConfig):
    has_attention: ClassVar[bool] = True
    heads: int = Field(1, ge=1, le=16, description="Attention heads.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability.")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> AttentionConfig:
        if self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be divisible by heads {self.heads}")
        return self


class BasicGATConfig(AttentionConfig):
    model: Literal["gat_basic"]

    @property
    def layers(self) -> int:
        return 1  # one attention layer, whatever num_layers says


class GenreAwareGATConfig(AttentionConfig):
    model: Literal["gat_enhanced"]
    residual: bool = Field(True, description="Residual connections between layers.")
    use_edge_attr: bool = Field(True, description="Interaction edge attributes in the attention.")
    transform: bool = Field(False, description="Learn a linear message map per relation and layer (default: identity).")


class PlaylistGATConfig(AttentionConfig):
    model: Literal["playlist_gat"]
    cooccurrence_k: int = Field(
        0,
        ge=0,
        le=200,
        description="Also pass messages item->item along each item's k most co-occurring items "
        "(shrunk cosine over the training interactions; 0: no such relation).",
    )
    cooccurrence_shrink: float = Field(10.0, ge=0.0, description="Shrinkage of the co-occurrence cosine.")
    user_ids: bool = Field(
        True,
        description="Learn a free embedding per user (False: users start at zero and are built from their "
        "training items only).",
    )


class TagFriendGATConfig(AttentionConfig):
    model: Literal["tag_friend_gat"]
    use_categories: bool = Field(True, description="Pass messages along the item-category relations (tags).")
    use_social: bool = Field(True, description="Pass messages along the user-user relation (friends).")
    conv: Literal["light", "gatv2"] = Field(
        "light", description="light: attention without transforms; gatv2: GATv2Conv."
    )
    side_weight: float = Field(0.5, ge=0.0, description="Initial weight of the side relations (learned per layer).")


CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    cls.model_fields["model"].annotation.__args__[0]: cls
    for cls in (
        MostPopularConfig,
        CategoryPopularityConfig,
        ItemKNNConfig,
        EASEConfig,
        ALSConfig,
        GraphEASEConfig,
        LightGCNConfig,
        BasicGATConfig,
        GenreAwareGATConfig,
        PlaylistGATConfig,
        TagFriendGATConfig,
    )
}
MODEL_KINDS = tuple(CONFIG_CLASSES)
ANY_CONFIG = Annotated[Union[tuple(CONFIG_CLASSES.values())], Field(discriminator="model")]  # noqa: UP007 - built from a tuple
_ADAPTER = TypeAdapter(ANY_CONFIG)


def parse_config(settings: dict) -> ModelConfig:
    """The config class that ``settings['model']`` names, validated (pydantic errors propagate)."""
    return _ADAPTER.validate_python(settings)


def config_class(kind: str) -> type[ModelConfig]:
    return CONFIG_CLASSES.get(kind, ModelConfig)


def update_config(config: ModelConfig, **changes) -> ModelConfig:
    """``config`` with ``changes`` applied and validated again (``model_copy`` skips validation)."""
    return parse_config({**config.model_dump(), **changes})


def configs_from_mapping(entries: dict, path: Path | str) -> dict[str, ModelConfig]:
    """Validate a registry mapping (name -> settings); errors name ``path``."""
    registry = {}
    for name, settings in entries.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: config {name!r} must be a mapping")
        if "name" in settings:
            raise ConfigError(f"{path}: config {name!r}: remove the 'name' field, the key is the name")
        if "model" not in settings:
            raise ConfigError(f"{path}: config {name!r}: model: field required (one of {', '.join(MODEL_KINDS)})")
        try:
            registry[str(name)] = parse_config({**settings, "name": str(name)})
        except ValidationError as error:
            raise ConfigError(f"{path}: config {name!r}: {validation_problems(error)}") from None
    return registry


class Thresholds(BaseModel):
    """Metric gates, all ratios (never percentages), on each chain's primary metric."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_ratio_vs_most_popular: float = Field(
        gt=0.0, description="A trained model's primary test metric must reach this multiple of most-popular's."
    )
    min_ratio_vs_random: float = Field(
        gt=0.0, description="Most-popular itself must reach this multiple of a random ranking."
    )
    ab_alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Family-wise significance level (Holm).")
    ab_primary_test: Literal["ttest", "wilcoxon"] = Field("ttest", description="Paired test behind verdicts.")
    ab_bootstrap_resamples: int = Field(2000, ge=100, description="Bootstrap resamples for confidence intervals.")
    champion_metric: str = Field(
        "primary", description="Per-user metric of the champion gate ('primary': the chain's)."
    )
    champion_min_improvement: float = Field(0.0, ge=0.0, description="Mean gain a challenger needs to be promoted.")
    fairness_metric: str = Field(
        "primary", description="Per-user metric compared across user groups ('primary': the chain's)."
    )
    fairness_max_relative_gap: float = Field(0.75, gt=0.0, le=1.0, description="Warn above this relative gap.")

    def metric(self, name: str, primary: str) -> str:
        return primary if name == "primary" else name


def load_thresholds(path: Path | None = None) -> Thresholds:
    path = path or configs_dir() / "thresholds.yaml"
    try:
        return Thresholds(**read_yaml(path))
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_problems(error)}") from None
