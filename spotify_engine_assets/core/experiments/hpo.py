"""Hyperparameter optimization with Optuna for every chain, Dagster-free.

A *search space* per model family (``configs/<chain>/search_spaces.yaml``) names a base config of
the chain's registry and the fields of its config class to sample. Spaces are validated before any
trial runs: unknown fields, empty or inverted ranges, log ranges that reach 0 and values the config
class rejects fail with a ``ConfigError`` naming the family and the field.

A parameter may be *conditional*: ``when: {loss: softmax}`` samples it only when the named
categorical parameter of the same space took that value (a list: any of them). Sampling is
define-by-run (:meth:`SearchSpace.suggest`: conditions first), so a trial records only the fields it
used, and a field whose condition fails takes its config-class default (the config classes reject a
setting without effect: temperature without the softmax loss, negatives_per_positive with it). A
condition must name another categorical parameter and values among its choices. Every combination a
space can draw (its categorical choices, ranges at their bounds) must make a valid config, so a
study wastes no trial on an impossible one (``heads`` not dividing ``embedding_dim``: choose
categorical values that always fit together); a numeric clash that check cannot see is pruned
untrained, its reason in the trial's ``invalid`` and ``pruned_by`` user attributes.

Every family, baseline or graph model, gets the same budget: a run's ``n_trials`` (or ``timeout_s``)
whatever the family; closed-form trials have no epochs to prune and no resource estimate to limit.

A study is a seeded Optuna study (TPE sampler, median pruner) in a storage given by URL:
``sqlite:///path.db``, any SQLAlchemy database URL (one study shared by workers on several
machines) or ``journal:///path.log`` (several processes on one file system). It resumes
(``load_if_exists``) with the finished trials of a killed run.

Each trial fits the sampled config on the chain's training part and returns its best validation
value (the protocol's ``monitor``, reported per validation epoch so the pruner may stop it); no
trial trains on validation data and test data never enters a study. Multi-objective mode: a seeded
NSGA-II sampler over the primary metric (maximize), training seconds (minimize) and coverage@10
(maximize), all on validation and never pruned; the outcome is the Pareto front (:func:`pareto_table`).

A trial whose estimated peak memory or seconds (``trial_budget.py``) exceed the study's
:class:`TrialLimits` is pruned untrained. :func:`promote_best` writes the best trial's config to the
data lake (``core/registry.py``), a partition of the chain's ``trained_model`` like any registry config.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import time
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor
from torch_geometric.data import HeteroData

from ..config import ConfigError, ModelConfig, config_class, read_yaml, update_config, validation_problems
from ..dataset import Dataset
from ..evaluation.metrics import catalog_coverage
from ..registry import PromotionSource
from ..storage.artifacts import atomic_write_bytes
from ..storage.databases import connection_cause, retrying_cannot_fix
from ..storage.paths import UnsafeNameError, data_lake_root, safe_name
from ..training.trainer import Logger, NonFiniteLossError
from . import trial_budget

# multi-objective mode: directions of the three objectives (all on validation; see multi_objectives)
MULTI_DIRECTIONS = ("maximize", "minimize", "maximize")
# fields a study may sample; identity fields, the seed and the final-fit switches are never tuned
NOT_SEARCHABLE = frozenset(
    {"name", "model", "description", "split", "seed", "user_sample", "train_on_validation", "trainer"}
)


def objective_name(dataset: Dataset) -> str:
    """The single objective of a chain's studies: its validation metric."""
    return f"valid_{dataset.protocol.monitor}"


def multi_objectives(dataset: Dataset) -> tuple[str, str, str]:
    """Names of the three multi-objective values: primary metric, seconds, coverage (validation)."""
    return (f"valid_{dataset.protocol.primary}", "train_seconds", "valid_coverage@10")


class HpoError(ValueError):
    """A study cannot start: bad storage URL, unreachable database, missing family."""


class ParamSpec(BaseModel):
    """How one config field is sampled, and (``when``) under which values of other parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = Field(None, ge=1, description="Integer step (int only, not with log).")
    choices: list[Any] | None = None
    when: dict[str, Any] | None = Field(
        None,
        description="Sample this field only when each named (categorical) parameter of the same space took "
        "the given value, or one of a list of values ({loss: softmax}, {loss: [bpr, softmax]}); otherwise the "
        "field takes its config class's default (a setting without effect is an error).",
    )

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.when is not None and not self.when:
            raise ValueError("'when' needs at least one condition (a parameter and its value)")
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical takes only 'choices'")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"duplicate choices {self.choices}")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"inverted range: low {self.low} > high {self.high}")
        if self.low == self.high:
            raise ValueError(f"empty range: low == high == {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int range needs integer bounds, got {self.low}..{self.high}")
        if self.type == "float" and self.step is not None:
            raise ValueError("'step' is for int parameters")
        if self.log and self.low <= 0:
            raise ValueError(f"log range needs low > 0, got {self.low}")
        if self.log and self.step not in (None, 1):
            raise ValueError("'step' cannot be combined with log")
        return self

    @property
    def conditions(self) -> dict[str, tuple]:
        """``when`` as parameter -> the values it may take (a single value is a one-value list)."""
        return {key: tuple(value) if isinstance(value, list) else (value,) for key, value in (self.when or {}).items()}

    def holds(self, values: dict[str, Any]) -> bool:
        """Whether the condition holds for ``values`` (parameter -> value; a missing one fails it).
        Values compare by ``repr`` like the choices (``1`` is not ``True``)."""
        return all(
            key in values and repr(values[key]) in map(repr, allowed) for key, allowed in self.conditions.items()
        )

    def values_to_check(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this spec can draw (a choice, or inside the range)."""
        if self.type == "categorical":
            return repr(value) in map(repr, self.choices or [])
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (self.type != "int" or value == int(value))

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: the family, its base config and the sampled fields, each
    conditional field after the parameters its condition names (the order they are suggested in)."""

    family: str
    base: ModelConfig
    params: dict[str, ParamSpec]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Define-by-run: each parameter in order, a conditional one only when its condition holds
        on the values drawn before it (so a trial's ``params`` hold only the active fields)."""
        values: dict[str, Any] = {}
        for name, spec in self.params.items():
            if spec.when is None or spec.holds(values):
                values[name] = spec.suggest(trial, name)
        return values

    def base_params(self) -> dict[str, Any]:
        """The base config's own values of the active parameters the space can draw: a study's
        first trial, so it never ends below the registry config it starts from."""
        values: dict[str, Any] = {}
        for name, spec in self.params.items():
            value = getattr(self.base, name)
            if (spec.when is None or spec.holds(values)) and spec.contains(value):
                values[name] = value
        return values

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` and, for each conditional field they leave out whose condition fails, the
        field's config-class default: a trial's (or a best trial's) parameters make a config whose
        inactive fields have no effect. A left-out field whose condition holds keeps the base value;
        one whose condition names an inactive parameter is inactive too."""
        values, inactive = dict(params), set()
        fields = config_class(self.base.model).model_fields
        for name, spec in self.params.items():
            if name in params or spec.when is None:
                continue
            effective = {key: values.get(key, getattr(self.base, key)) for key in spec.conditions}
            if inactive & set(spec.conditions) or not spec.holds(effective):
                inactive.add(name)
                values[name] = fields[name].get_default(call_default_factory=True)
        return values

    def config_for(self, params: dict[str, Any], name: str) -> ModelConfig:
        """The base config with ``params`` applied (inactive conditional fields reset by
        :meth:`resolve`), validated by its config class."""
        return update_config(self.base, **self.resolve(params), name=name)

    def trial_config(self, params: dict[str, Any], name: str) -> ModelConfig:
        """What a trial fits: :meth:`config_for`, never training on validation (a trainable config
        early-stops on it with the advanced trainer)."""
        config = self.config_for(params, name)
        changes = {"train_on_validation": False, **({"trainer": "advanced"} if config.trainable else {})}
        return update_config(config, **changes)

    def context(self, field: str) -> dict[str, Any]:
        """Values of the parameters that make ``field`` active (each condition's first value,
        and those of the conditions above it): where its values are checked."""
        values: dict[str, Any] = {}
        pending = [field]
        while pending:
            for key, allowed in self.params[pending.pop()].conditions.items():
                if key not in values:
                    values[key] = allowed[0]
                    pending.append(key)
        return values

    def combinations(self) -> list[dict[str, Any]]:
        """Every combination of the categorical choices that define-by-run sampling can draw (a
        conditional parameter only where its condition holds), with every numeric range at its low
        bound, then at its high bound; an even sample of :data:`MAX_COMBINATIONS` when there are more."""
        items = list(self.params.items())

        def walk(index: int, values: dict[str, Any], bound: int):
            if index == len(items):
                yield dict(values)
                return
            name, spec = items[index]
            if spec.when is not None and not spec.holds(values):
                yield from walk(index + 1, values, bound)
                return
            for value in spec.values_to_check() if spec.type == "categorical" else [spec.values_to_check()[bound]]:
                values[name] = value
                yield from walk(index + 1, values, bound)
            del values[name]

        found = list(itertools.islice(itertools.chain(walk(0, {}, 0), walk(0, {}, 1)), 100 * MAX_COMBINATIONS))
        return found[:: max(1, len(found) // MAX_COMBINATIONS)]


# at most this many combinations of a space are validated (an even sample of them when there are more)
MAX_COMBINATIONS = 2048


def _field_kind(cls: type[ModelConfig], field: str) -> type:
    annotation = cls.model_fields[field].annotation
    if typing.get_origin(annotation) is Literal:
        return str
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # int | None
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation  # int, float, bool, str


def _fail(where: str, family: str, field: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{where}: family {family!r}: parameter {field!r}: {message}")


def _validate_param(family: str, field: str, spec: ParamSpec, base: ModelConfig, where: str) -> None:
    """The field exists, may be searched and has the spec's type (before conditions are known)."""
    cls = config_class(base.model)
    if field not in cls.model_fields:
        searchable = sorted(set(cls.model_fields) - NOT_SEARCHABLE)
        _fail(
            where,
            family,
            field,
            f"unknown parameter (not a field of {base.model} configs); searchable fields: {', '.join(searchable)}",
        )
    if field in NOT_SEARCHABLE:
        _fail(where, family, field, "this field cannot be searched")
    kind = _field_kind(cls, field)
    if spec.type == "int" and kind is not int:
        _fail(where, family, field, f"type int does not fit a {kind.__name__} field")
    if spec.type == "float" and kind is not float:
        _fail(where, family, field, f"type float does not fit a {kind.__name__} field (use int or categorical)")


def _order_by_conditions(family: str, params: dict[str, ParamSpec], where: str) -> dict[str, ParamSpec]:
    """``params`` with each conditional one after those its condition names (file order otherwise);
    a condition must name another categorical parameter of the space and values among its choices."""
    for field, spec in params.items():
        for key, allowed in spec.conditions.items():
            if key == field:
                _fail(where, family, field, f"when: {key!r} is the parameter itself")
            if key not in params:
                others = ", ".join(p for p in params if p != field) or "it has no other"
                _fail(
                    where,
                    family,
                    field,
                    f"when: {key!r} is not a parameter of this space; a condition names a "
                    f"sampled parameter of the same space ({others})",
                )
            if params[key].type != "categorical":
                _fail(
                    where,
                    family,
                    field,
                    f"when: {key!r} is a {params[key].type} parameter; a condition names a "
                    "categorical one (and values among its choices)",
                )
            choices = {repr(choice) for choice in params[key].choices}
            unknown = [value for value in allowed if repr(value) not in choices]
            if unknown:
                _fail(
                    where,
                    family,
                    field,
                    f"when: {key}: {', '.join(map(repr, unknown))} not among its choices {params[key].choices}",
                )
    ordered: dict[str, ParamSpec] = {}
    while len(ordered) < len(params):
        ready = [f for f, s in params.items() if f not in ordered and all(k in ordered for k in s.conditions)]
        if not ready:
            cycle = sorted(set(params) - set(ordered))
            _fail(where, family, cycle[0], f"when: the conditions of {', '.join(cycle)} form a cycle")
        ordered[ready[0]] = params[ready[0]]
    return ordered


def _check_values(space: SearchSpace, where: str) -> None:
    """Each parameter's values (categorical choices, range bounds), under the conditions that make
    it active, are allowed by the config class: a failure names the family and the field."""
    for field, spec in space.params.items():
        context = space.context(field)
        for value in spec.values_to_check():
            try:
                update_config(space.base, **space.resolve({**context, field: value}))
                own = []
            except ValidationError as error:
                own = [e["msg"] for e in error.errors() if field in map(str, e["loc"])]
            if own:
                _fail(where, space.family, field, f"value {value!r} is not allowed: {'; '.join(own)}")


def _check_combinations(space: SearchSpace, where: str) -> None:
    """Every combination sampling can draw (:meth:`SearchSpace.combinations`) makes a valid config:
    a space must make an invalid one impossible (choices that always fit together, a ``when``
    condition) rather than waste trials on it."""
    for combination in space.combinations():
        try:
            space.config_for(combination, space.family)
        except ValidationError as error:
            fields = ", ".join(f"{k} {v!r}" for k, v in combination.items())
            raise ConfigError(
                f"{where}: family {space.family!r}: the combination ({fields}) is rejected by {space.base.model} "
                f"configs: {validation_problems(error)}; make it impossible (choices that always fit together, "
                "such as embedding_dim multiples of every heads choice, or a `when:` condition)"
            ) from None


def spaces_path(dataset: Dataset) -> Path:
    """A chain's search spaces: ``search_spaces.yaml`` beside its registry file."""
    return dataset.registry.path.with_name("search_spaces.yaml")


def load_search_spaces(
    dataset: Dataset, path: Path | None = None, registry: dict[str, ModelConfig] | None = None
) -> dict[str, SearchSpace]:
    """Every family's search space of a chain (``path`` default ``configs/<chain>/search_spaces.yaml``),
    validated against its registry (``registry`` default the chain's registry file)."""
    path = path or spaces_path(dataset)
    where = str(path)
    registry = registry if registry is not None else dataset.registry.base
    spaces = {}
    for family, entry in read_yaml(path).items():
        family = str(family)
        try:  # a family is a partition key of hpo_study and names files (<family>_tuned.yaml)
            safe_name(family, "family")
        except UnsafeNameError as error:
            raise ConfigError(f"{path}: {error}") from None
        if not isinstance(entry, dict) or set(entry) - {"base", "params"} or "params" not in entry:
            raise ConfigError(f"{path}: family {family!r}: expected a mapping with 'params' and optional 'base'")
        base_name = str(entry.get("base", family))
        if base_name not in registry:
            raise ConfigError(
                f"{path}: family {family!r}: unknown base config {base_name!r}; known: {', '.join(sorted(registry))}"
            )
        base = registry[base_name]
        if base.model == "most_popular":
            raise ConfigError(f"{path}: family {family!r}: base config {base_name!r} has nothing to tune")
        raw_params = entry["params"]
        if not isinstance(raw_params, dict) or not raw_params:
            raise ConfigError(f"{path}: family {family!r}: 'params' must be a non-empty mapping")
        params = {}
        for field, raw in raw_params.items():
            field = str(field)
            if not isinstance(raw, dict):
                _fail(where, family, field, "expected a mapping")
            try:
                spec, problems = ParamSpec(**raw), None
            except ValidationError as error:
                spec, problems = None, validation_problems(error)
            if problems:
                _fail(where, family, field, problems)
            _validate_param(family, field, spec, base, where)
            params[field] = spec
        space = SearchSpace(family=family, base=base, params=_order_by_conditions(family, params, where))
        _check_values(space, where)
        _check_combinations(space, where)
        spaces[family] = space
    return spaces


def get_space(dataset: Dataset, family: str, spaces: dict[str, SearchSpace] | None = None) -> SearchSpace:
    spaces = spaces if spaces is not None else load_search_spaces(dataset)
    if family not in spaces:
        raise HpoError(f"no search space for family {family!r}; known: {', '.join(sorted(spaces))}")
    return spaces[family]


# --- storage -----------------------------------------------------------------------------------


def redact(url: str) -> str:
    """The URL with any password hidden (for logs and metadata)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        credentials, host = rest.split("@", 1)
        if ":" in credentials:
            return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def _open_rdb(
    url: str,
    engine_kwargs: dict,
    attempts: int = 5,
    heartbeat_interval: int = 60,
    grace_period: int = 180,
) -> optuna.storages.RDBStorage:
    """An RDB storage, tested with a round trip. Workers that open a *new* database at the same
    moment race to create its schema (one gets an IntegrityError on ``alembic_version``); the
    loser retries. Heartbeats: every running trial records one each ``heartbeat_interval``
    seconds, and a RUNNING trial silent for ``grace_period`` seconds (its worker was killed) is
    failed at the next trial start of any worker of the study (and by :func:`run_study`)."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental"; they fail trials of killed workers
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
                )
            storage.get_all_studies()  # a round trip: the database answers
            return storage
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as error:
            if attempt == attempts - 1 or (
                not isinstance(error, sqlalchemy.exc.IntegrityError) and retrying_cannot_fix(str(error))
            ):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


# environment variables a PostgreSQL storage URL without a password takes it from (in this order;
# libpq itself reads PGPASSWORD): the password never has to be in a URL, a file or a log
PASSWORD_ENV = ("SPOTIFY_ENGINE_PG_PASSWORD", "PGPASSWORD")


def open_storage(
    url: str | None = None, heartbeat_interval: int = 60, grace_period: int = 180
) -> optuna.storages.BaseStorage:
    """Open (and test) the storage at ``url``; a clear ``HpoError`` when it cannot be used.

    A PostgreSQL URL may leave the password out (``postgresql+psycopg2://user@host:port/db``):
    it is then taken from ``$SPOTIFY_ENGINE_PG_PASSWORD`` or ``$PGPASSWORD`` when the connection
    opens. ``heartbeat_interval`` / ``grace_period`` (seconds) apply to database storages: how
    soon the RUNNING trial of a killed worker is failed (see :func:`_open_rdb`)."""
    url = url or f"sqlite:///{data_lake_root() / 'optuna' / 'studies.db'}"
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise HpoError(
            f"storage URL {url!r} has no scheme; use sqlite:///path.db, journal:///path.log or a database URL"
        )
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise HpoError(
            f"need heartbeat_interval >= 1 and grace_period > heartbeat_interval, got "
            f"{heartbeat_interval} and {grace_period}"
        )
    password = ""
    try:
        if scheme == "journal":
            path = Path(rest)  # journal:///abs/file.log or journal://relative/file.log
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(path)))
        if scheme == "sqlite":
            database = rest[1:] if rest.startswith("/") else rest
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
            if scheme.startswith("postgresql"):
                import sqlalchemy

                parsed = sqlalchemy.engine.make_url(url)
                password = parsed.password or next((os.environ[v] for v in PASSWORD_ENV if os.environ.get(v)), "")
                # the password goes to the driver, never into the URL; a 10 s connect timeout
                engine_kwargs["connect_args"] = {
                    "connect_timeout": 10,
                    **({"password": password} if password and parsed.password is None else {}),
                }
        return _open_rdb(url, engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    except Exception as error:  # noqa: BLE001 - any failure to open is reported the same way
        reason = f"{type(error).__name__}: {error}"
        if password:
            reason = reason.replace(password, "***")
        where = redact(url)
        if scheme not in ("sqlite", "journal"):
            import sqlalchemy

            try:
                parsed = sqlalchemy.engine.make_url(url)
                source = (
                    "URL"
                    if parsed.password is not None
                    else next(
                        (f"${v}" for v in PASSWORD_ENV if os.environ.get(v)), "none: set $SPOTIFY_ENGINE_PG_PASSWORD"
                    )
                )
                where += (
                    f" (host={parsed.host} port={parsed.port} db={parsed.database} user={parsed.username} "
                    f"password=*** from {source}): {connection_cause(reason)}"
                )
            except Exception:  # noqa: BLE001 - an unparsable URL: the driver's reason says why
                pass
        raise HpoError(f"cannot open Optuna storage {where}: {reason}") from None


# --- running a study ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyData:
    """What a study trains on: a chain, its graph and one split strategy's parts (trials fit on the
    training part and are scored on the validation part; the test part is held out of the view)."""

    dataset: Dataset
    graph: HeteroData
    split: dict[str, Tensor]

    @property
    def valid_pairs(self) -> Tensor:
        return self.dataset.pairs(self.graph, self.split["valid"])

    def view(self, config: ModelConfig) -> HeteroData:
        return self.dataset.view_for(self.graph, self.split, config)


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def objective_names(study: optuna.Study) -> list[str]:
    """The objective name(s) a study was opened with (:func:`open_study` records them)."""
    names = study.user_attrs.get("objective", "objective")
    return list(names) if isinstance(names, (list, tuple)) else [names]


def validation_metrics(model, data: StudyData, config: ModelConfig) -> dict[str, float]:
    """The protocol's validation metrics of a fitted model (training pairs masked), coverage@10 among them."""
    dataset, view = data.dataset, data.view(config)
    known = view[dataset.schema.interaction].edge_index
    protocol = dataset.protocol.for_graph(data.graph)
    users = dataset.sample(data.graph, config)
    metrics = protocol.validate(model.score, known, data.valid_pairs, model.num_items, users)
    if "coverage@10" not in metrics:
        evaluated = torch.unique(data.valid_pairs[0])
        evaluated = evaluated if users is None else evaluated[torch.isin(evaluated, users)]
        top = protocol.topk(model.score, evaluated, known, model.num_items, min(10, model.num_items))
        metrics["coverage@10"] = catalog_coverage(top, model.num_items, 10)
    return metrics


def validation_scores(model, data: StudyData, config: ModelConfig) -> dict[str, float]:
    """The chain's primary metric and coverage@10 of a fitted model on the validation pairs."""
    metrics = validation_metrics(model, data, config)
    primary, _, coverage = multi_objectives(data.dataset)
    return {primary: float(metrics[data.dataset.protocol.primary]), coverage: float(metrics["coverage@10"])}


@dataclass(frozen=True)
class TrialLimits:
    """Per-trial resource limits, checked on estimates before a trial trains (None: no limit)."""

    max_memory_mb: float | None = None
    max_seconds: float | None = None
    seconds_per_unit: float | None = None  # the probe's calibration (needed for max_seconds)

    def __post_init__(self) -> None:
        for name in ("max_memory_mb", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise HpoError(f"{name} must be > 0, got {value}")
        if self.max_seconds is not None and self.seconds_per_unit is None:
            raise HpoError("max_seconds needs seconds_per_unit (run the probe: trial_budget.calibrate_seconds)")

    def violation(self, estimate: trial_budget.Estimate) -> str | None:
        """Why a trial with ``estimate`` must not run, or None when it fits."""
        if self.max_memory_mb is not None and estimate.memory_mb > self.max_memory_mb:
            return f"memory estimate {estimate.memory_mb:.0f} MB > limit max_trial_memory_mb {self.max_memory_mb:g} MB"
        if self.max_seconds is not None and estimate.seconds is not None and estimate.seconds > self.max_seconds:
            return (
                f"time estimate {estimate.seconds:.0f} s ({estimate.epochs} epochs) > limit "
                f"max_trial_seconds {self.max_seconds:g} s"
            )
        return None


def make_objective(
    space: SearchSpace,
    data: StudyData,
    max_epochs: int | None = None,
    multi_objective: bool = False,
    limits: TrialLimits | None = None,
):
    """The objective: fit the sampled config, report the chain's validation metric per validation
    epoch, prune. With ``multi_objective``: no reports (no pruning); returns the
    :func:`multi_objectives` values. Every trainable trial's memory (and, with a probe, time)
    estimate is recorded; with ``limits``, a trial over one is pruned before it trains."""
    limits = limits or TrialLimits()
    dataset = data.dataset
    objective_key = objective_name(dataset)

    def objective(trial: optuna.Trial) -> float | tuple[float, float, float]:
        params = space.suggest(trial)
        try:
            config = space.trial_config(params, f"{space.family}_trial{trial.number}")
        except ValidationError as error:  # a numeric clash the load-time combination check cannot see
            message = validation_problems(error)
            trial.set_user_attr("invalid", message)
            trial.set_user_attr("pruned_by", f"invalid config: {message}")
            trial.set_user_attr("epochs_run", 0)
            raise optuna.TrialPruned(f"invalid combination {params}: {message}") from None
        model = dataset.build(config, data.graph)
        epochs = None
        if config.trainable:
            epochs = min(max_epochs, config.max_epochs) if max_epochs else None
            size = trial_budget.GraphSize.of(data.view(config), dataset.schema)
            estimate = trial_budget.estimate(config, size, model, epochs or config.max_epochs, limits.seconds_per_unit)
            trial.set_user_attr("estimate_memory_mb", round(estimate.memory_mb, 1))
            if estimate.seconds is not None:
                trial.set_user_attr("estimate_seconds", round(estimate.seconds, 1))
            reason = limits.violation(estimate)
            if reason is not None:
                trial.set_user_attr("pruned_by", reason)
                trial.set_user_attr("epochs_run", 0)
                raise optuna.TrialPruned(f"not trained: {reason}")
        started = time.perf_counter()

        def on_epoch(row: dict) -> None:
            if multi_objective or objective_key not in row:
                return
            trial.report(row[objective_key], row["epoch"])
            if trial.should_prune():
                trial.set_user_attr("train_seconds", time.perf_counter() - started)
                trial.set_user_attr("epochs_run", row["epoch"])
                raise optuna.TrialPruned(f"pruned at epoch {row['epoch']} ({objective_key} {row[objective_key]:.4f})")

        training = {"max_epochs": epochs, "on_epoch": on_epoch} if config.trainable else {}
        try:
            model, result, _ = dataset.fit(config, data.graph, data.split, model=model, **training)
        except NonFiniteLossError as error:  # a diverging draw (a too large lr) ends its trial, not the study
            trial.set_user_attr("train_seconds", time.perf_counter() - started)
            trial.set_user_attr("epochs_run", error.epoch)
            trial.set_user_attr("pruned_by", f"diverged: {error}")
            raise optuna.TrialPruned(str(error)) from None
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        if multi_objective:
            scores = validation_scores(model, data, config)  # graph models hold their best epoch's weights
            primary, _, coverage = multi_objectives(dataset)
            return scores[primary], float(result.seconds), scores[coverage]
        if config.trainable:
            return float(result.best_valid)
        return float(validation_metrics(model, data, config)[dataset.protocol.monitor])

    return objective


def sampler_seed(seed: int, worker: int, existing_trials: int) -> int:
    """The TPE seed of one worker session: deterministic, but distinct per worker and per resume
    (a resumed or parallel session with the seed of the first would re-draw its startup points)."""
    return int(hashlib.sha256(f"{seed}:{worker}:{existing_trials}".encode()).hexdigest()[:8], 16)


def check_study_name(name: str) -> str:
    """A study name is '/'-separated safe names (``paths.safe_name``): its slug names a promoted
    config file (:func:`promoted_name`), and a name like ``a/../b`` or ``x\n`` names nothing one can trust."""
    try:
        for part in name.split("/"):
            safe_name(part, f"study name {name!r}: part")
    except UnsafeNameError as error:
        raise ConfigError(str(error)) from None
    return name


def open_study(
    dataset: Dataset,
    family: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    seed: int = 0,
    worker: int = 0,
    study_name: str | None = None,
    pruner_startup_trials: int = 3,
    pruner_warmup_epochs: int = 2,
    multi_objective: bool = False,
) -> optuna.Study:
    """Create or resume the study of a chain's ``family`` (maximizing its validation metric), or
    with ``multi_objective`` an NSGA-II study of :func:`multi_objectives` (default name
    ``spotify-engine/<chain>/<family>/pareto``, never shared with the single-objective study)."""
    storage = open_storage(storage) if storage is None or isinstance(storage, str) else storage
    default = f"spotify-engine/{dataset.name}/{family}"
    name = check_study_name(study_name or (f"{default}/pareto" if multi_objective else default))
    wanted = list(MULTI_DIRECTIONS) if multi_objective else ["maximize"]
    existing = 0
    try:
        found = optuna.load_study(study_name=name, storage=storage)
        existing = len(found.get_trials(deepcopy=False))
        have = [d.name.lower() for d in found.directions]
        if have != wanted:
            raise HpoError(
                f"study {name!r} exists with directions {have}, not {wanted}: "
                f"{'a single' if len(have) == 1 else 'a multi'}-objective study; use another study name"
            )
    except KeyError:
        pass
    if multi_objective:
        sampler = optuna.samplers.NSGAIISampler(seed=sampler_seed(seed, worker, existing))
        pruner = optuna.pruners.NopPruner()
    else:
        sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, worker, existing), n_startup_trials=5)
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=pruner_startup_trials, n_warmup_steps=pruner_warmup_epochs
        )
    study = optuna.create_study(
        storage=storage, sampler=sampler, pruner=pruner, study_name=name, directions=wanted, load_if_exists=True
    )
    study.set_user_attr("family", family)
    study.set_user_attr("objective", list(multi_objectives(dataset)) if multi_objective else objective_name(dataset))
    return study


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the study's RUNNING trials whose heartbeat is older than the storage's grace period
    (their worker was killed); returns their numbers. A no-op for storages without heartbeats
    (SQLite files opened elsewhere, journal files): there a killed worker's trial stays RUNNING."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if not is_heartbeat_enabled(study._storage):
        return []
    running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
    return sorted(running & failed)


def run_study(
    study: optuna.Study,
    space: SearchSpace,
    data: StudyData,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    max_epochs: int | None = None,
    log: Logger | None = None,
    limits: TrialLimits | None = None,
    worker: int = 0,
) -> optuna.Study:
    """Run ``n_trials`` more trials (or until ``timeout_s``), logging each finished trial; a
    trial whose estimate exceeds ``limits`` is pruned before it trains. A fresh study's first
    trial is the base registry config's own values (:meth:`SearchSpace.base_params`), enqueued by
    worker 0 only (several workers starting one study at once would each enqueue it)."""
    log = log or (lambda message: None)
    if n_trials is not None and n_trials < 1:
        raise HpoError(f"n_trials must be >= 1, got {n_trials}")
    if timeout_s is not None and timeout_s <= 0:
        raise HpoError(f"timeout_s must be > 0, got {timeout_s}")
    if n_trials is None and timeout_s is None:
        raise HpoError("give n_trials or timeout_s (or both): a study needs a stopping rule")

    multi_objective = is_multi_objective(study)

    def report_multi(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        names = objective_names(study)
        values = "-" if trial.values is None else ", ".join(f"{n} {v:.4f}" for n, v in zip(names, trial.values))
        front = len(study.best_trials)
        log(
            f"trial {trial.number} {trial.state.name.lower()}: {values} after {trial.user_attrs.get('epochs_run', '-')} "
            f"epochs; params {trial.params}; Pareto front {front} trial{'s' if front != 1 else ''}"
        )

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if "pruned_by" in trial.user_attrs:
            when = "" if trial.user_attrs.get("epochs_run") else " before training"
            log(f"trial {trial.number} pruned{when}: {trial.user_attrs['pruned_by']}; params {trial.params}")
            return
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        try:
            best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "-"
        epochs = trial.user_attrs.get("epochs_run", "-")
        seconds = trial.user_attrs.get("train_seconds")
        log(
            f"trial {trial.number} {trial.state.name.lower()}: {objective_names(study)[0]} {value} after {epochs} epochs"
            f"{f' in {seconds:.1f} s' if seconds is not None else ''}; params {trial.params}; best so far {best}"
        )

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        # the registry config is one of the study's trials (worker 0 enqueues it once)
        if worker == 0 and not any("enqueued" in t.user_attrs for t in study.get_trials(deepcopy=False)):
            study.enqueue_trial(space.base_params(), user_attrs={"enqueued": f"registry config {space.base.name}"})
        # a resumed worker first fails the RUNNING trials of killed workers whose heartbeat is older
        # than the storage's grace period (database storages; Optuna repeats this at each trial start)
        stale = fail_stale_trials(study)
        if stale:
            log(f"failed {len(stale)} stale RUNNING trial(s) of a killed worker: {', '.join(map(str, stale))}")
        fitted = make_objective(space, data, max_epochs, multi_objective=multi_objective, limits=limits)
        session = os.getpid()

        def objective(trial: optuna.Trial):
            trial.set_user_attr("worker", worker)  # who ran it, and in which process (a restart is another)
            trial.set_user_attr("worker_pid", session)
            return fitted(trial)

        callback = report_multi if multi_objective else report
        study.optimize(objective, n_trials=n_trials, timeout=timeout_s, callbacks=[callback], catch=())
    finally:
        optuna.logging.set_verbosity(previous)
    return study


# --- outcome -----------------------------------------------------------------------------------


def trials_table(study: optuna.Study) -> list[dict]:
    """One row per trial: its value(s), epochs, seconds, resource estimates (and the limit that
    pruned it, if one did) and parameters."""
    rows = []
    names, multi = objective_names(study), is_multi_objective(study)
    for trial in study.get_trials(deepcopy=False):
        duration = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        values = dict(zip(names, trial.values or [None] * len(names))) if multi else {"value": trial.value}
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                **values,
                "epochs_run": trial.user_attrs.get("epochs_run"),
                "seconds": duration,
                "est_memory_mb": trial.user_attrs.get("estimate_memory_mb"),
                "est_seconds": trial.user_attrs.get("estimate_seconds"),
                "pruned_by": trial.user_attrs.get("pruned_by", ""),
                **{f"param_{k}": v for k, v in trial.params.items()},
            }
        )
    return rows


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's default importances (PED-ANOVA in Optuna 5) over the completed trials ({} while fewer
    than two completed); a conditional parameter counts where the trials drew it."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):
        return {}


def best_config(study: optuna.Study, space: SearchSpace, name: str | None = None) -> ModelConfig:
    """The base config with the best trial's parameters, named ``<family>_tuned``; a base config
    that makes a final fit (the simple trainer) trains for the best trial's best epoch count."""
    config = space.config_for(study.best_trial.params, name or f"{space.family}_tuned")
    best_epoch = study.best_trial.user_attrs.get("best_epoch")
    if config.trainable and config.trainer == "simple" and best_epoch:
        config = update_config(config, max_epochs=int(best_epoch))
    return config


def registry_entry(config: ModelConfig, study: optuna.Study) -> dict:
    """A registry entry for ``config`` (the key is the name), describing its origin."""
    description = (
        f"{config.model} tuned by Optuna study {study.study_name!r}: trial {study.best_trial.number}, "
        f"{objective_names(study)[0]} {study.best_value:.4f} (validation)"
    )
    return {**config.model_dump(exclude={"name"}), "description": description}


def write_best_yaml(path: Path, config: ModelConfig, study: optuna.Study) -> Path:
    """Write the best config as a one-entry registry file (the schema of ``configs/<chain>/models.yaml``)."""
    text = (
        "# Written by an hpo_study asset; promote with promote: true, or copy the entry into the chain's models.yaml.\n"
    )
    entry = yaml.safe_dump({config.name: registry_entry(config, study)}, sort_keys=False)
    atomic_write_bytes(path, (text + entry).encode())
    return path


def promoted_name(dataset: Dataset, family: str, study_name: str) -> str:
    """``hpo_<family>`` for the default study name, else ``hpo_<family>_<study>`` (the study name
    reduced to lowercase letters, digits and '_')."""
    slug = re.sub(r"[^a-z0-9]+", "_", study_name.lower().removeprefix(f"spotify-engine/{dataset.name}/")).strip("_")
    return (f"hpo_{family}" if slug == family else f"hpo_{family}_{slug}")[:100].rstrip("_")


def promote_best(
    dataset: Dataset,
    study: optuna.Study,
    space: SearchSpace,
    storage_url: str,
    lake_root: Path | None = None,
    name: str | None = None,
) -> tuple[ModelConfig, Path]:
    """Write the best trial's config as a promoted config of the chain in the data lake
    (``core/registry.py``), with its source (study, trial, objective value, redacted storage).
    Returns it and its file."""
    if is_multi_objective(study):
        raise HpoError(f"study {study.study_name!r} is multi-objective: it has no single best trial to promote")
    name = name or promoted_name(dataset, space.family, study.study_name)
    dataset.registry.check_promotable(name, study.study_name, space.family, lake_root)
    config = best_config(study, space, name)
    config = config.model_copy(update={"description": registry_entry(config, study)["description"]})
    source = PromotionSource(
        family=space.family,
        study_name=study.study_name,
        trial=study.best_trial.number,
        objective=objective_names(study)[0],
        value=float(study.best_value),
        storage=redact(storage_url),
        promoted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return config, dataset.registry.write_promoted(config, source, lake_root)


def history_points(study: optuna.Study) -> tuple[list[int], list[float], list[float]]:
    """Completed trial numbers, their values and the best value so far."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    values = [float(trial.value) for trial in completed]
    return [trial.number for trial in completed], values, list(itertools.accumulate(values, max))


def pareto_table(study: optuna.Study) -> list[dict]:
    """The Pareto front of a multi-objective study (``study.best_trials``): one row per trial with
    its parameters and the three objective values, by descending primary metric."""
    if not is_multi_objective(study):
        raise HpoError(f"study {study.study_name!r} is single-objective: it has no Pareto front")
    names = objective_names(study)
    rows = [
        {
            "number": trial.number,
            **{name: float(value) for name, value in zip(names, trial.values)},
            **{f"param_{k}": v for k, v in trial.params.items()},
        }
        for trial in study.best_trials
    ]
    return sorted(rows, key=lambda row: (-row[names[0]], row["number"]))
