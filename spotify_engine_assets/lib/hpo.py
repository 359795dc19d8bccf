"""Hyperparameter optimization with Optuna, Dagster-free.

A *search space* per model family (``configs/search_spaces.yaml``) names a base config of the
registry and the ``ModelConfig`` fields to sample. Spaces are validated before any trial runs:
unknown fields, empty or inverted ranges, log ranges that reach 0, and values ``ModelConfig``
rejects fail with a ``ConfigError`` naming the family and the field.

A study is an Optuna study (seeded TPE sampler, median pruner) in a storage given by URL:
``sqlite:///path.db`` or any SQLAlchemy database URL (PostgreSQL, MySQL: one study shared by
workers on several machines), or ``journal:///path.log`` (Optuna's journal file, safe for several
processes on one file system). The default is ``sqlite:///<data lake>/optuna/studies.db``. The
storage is opened (and the connection tested) before any trial runs. ``load_if_exists`` makes a
study resume: a killed study keeps its finished trials, and the next run adds to them.

Each trial trains the base config updated with the sampled values through the library harness,
reports validation Recall@10 after every epoch (the pruner may stop it) and returns the best
validation Recall@10. Test data never enters a study.

Multi-objective mode (``multi_objective=True``): a seeded NSGA-II sampler over three objectives,
all on the validation split: NDCG@10 (maximize), training seconds (minimize) and catalog
coverage@10 (maximize). Optuna does not prune multi-objective studies, so no intermediate values
are reported; the outcome is the Pareto front (``study.best_trials``, see ``pareto_table``). Its
default study name (``spotify-engine/<family>/pareto``) differs from the single-objective one.

Resource limits (``TrialLimits``): before a trial trains, its peak memory and seconds are
estimated from its config and the study's graph (``lib/trial_budget.py``; seconds need a one-epoch
probe of the base config at the start of the run). A trial over a limit is pruned without
training, its user attribute ``pruned_by`` naming the estimate and the limit.

Promotion (``promote_best``): the best trial's config becomes a promoted config in the data lake
(``lib/registry.py``), named ``hpo_<family>`` for the default study name, else
``hpo_<family>_<study>``: a partition of ``trained_model`` like any ``models.yaml`` config.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor
from torch_geometric.data import HeteroData

from . import registry as registry_lib
from . import trial_budget
from .configs import ConfigError, ModelConfig, default_registry
from .graph import LISTENS
from .metrics import ranking_metrics
from .paths import configs_dir, data_lake_root
from .models import parameter_count
from .training import build_model, embed, train, training_inputs

Logger = Callable[[str], None]
OBJECTIVE = "valid_recall@10"
# multi-objective mode: names and directions of the three objectives (all on validation)
MULTI_OBJECTIVES = ("valid_ndcg@10", "train_seconds", "valid_coverage@10")
MULTI_DIRECTIONS = ("maximize", "minimize", "maximize")
# fields a study may sample; identity fields and the seed are never tuned
NOT_SEARCHABLE = frozenset({"name", "model", "description", "split", "seed"})


class HpoError(ValueError):
    """A study cannot start: bad storage URL, unreachable database, missing family."""


class ParamSpec(BaseModel):
    """How one ``ModelConfig`` field is sampled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = Field(None, ge=1, description="Integer step (int only, not with log).")
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
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

    def values_to_check(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: the family, its base config and the sampled fields."""

    family: str
    base: ModelConfig
    params: dict[str, ParamSpec]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {name: spec.suggest(trial, name) for name, spec in self.params.items()}

    def config_for(self, params: dict[str, Any], name: str) -> ModelConfig:
        """The base config with ``params`` applied (validated by ``ModelConfig``)."""
        return ModelConfig(**{**self.base.model_dump(), **params, "name": name})


def _field_kind(field: str) -> type:
    annotation = ModelConfig.model_fields[field].annotation
    if typing.get_origin(annotation) is Literal:
        return str
    return annotation  # int, float, bool, str


def _validate_param(family: str, field: str, spec: ParamSpec, base: ModelConfig, where: str) -> None:
    def fail(message: str) -> typing.NoReturn:
        raise ConfigError(f"{where}: family {family!r}: parameter {field!r}: {message}")

    if field not in ModelConfig.model_fields:
        searchable = sorted(set(ModelConfig.model_fields) - NOT_SEARCHABLE)
        fail(f"unknown parameter (not a ModelConfig field); searchable fields: {', '.join(searchable)}")
    if field in NOT_SEARCHABLE:
        fail("this field cannot be searched")
    kind = _field_kind(field)
    if spec.type == "int" and kind is not int:
        fail(f"type int does not fit a {kind.__name__} field")
    if spec.type == "float" and kind is not float:
        fail(f"type float does not fit a {kind.__name__} field (use int or categorical)")
    for value in spec.values_to_check():
        try:
            ModelConfig(**{**base.model_dump(), field: value})
        except ValidationError as error:
            own = [e["msg"] for e in error.errors() if field in map(str, e["loc"])]
            if own:
                fail(f"value {value!r} is not allowed: {'; '.join(own)}")


def load_search_spaces(path: Path | None = None, registry: dict[str, ModelConfig] | None = None) -> dict[str, SearchSpace]:
    """Every family's search space from ``search_spaces.yaml`` (or ``path``), validated."""
    path = path or configs_dir() / "search_spaces.yaml"
    registry = registry if registry is not None else default_registry()
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: file not found") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"{path}: expected a non-empty mapping of model families to search spaces")
    spaces = {}
    for family, entry in loaded.items():
        family = str(family)
        if not isinstance(entry, dict) or set(entry) - {"base", "params"} or "params" not in entry:
            raise ConfigError(f"{path}: family {family!r}: expected a mapping with 'params' and optional 'base'")
        base_name = str(entry.get("base", family))
        if base_name not in registry:
            raise ConfigError(f"{path}: family {family!r}: unknown base config {base_name!r}; known: {', '.join(sorted(registry))}")
        base = registry[base_name]
        if not base.trainable:
            raise ConfigError(f"{path}: family {family!r}: base config {base_name!r} has nothing to tune")
        raw_params = entry["params"]
        if not isinstance(raw_params, dict) or not raw_params:
            raise ConfigError(f"{path}: family {family!r}: 'params' must be a non-empty mapping")
        params = {}
        for field, raw in raw_params.items():
            field = str(field)
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: family {family!r}: parameter {field!r}: expected a mapping")
            try:
                spec = ParamSpec(**raw)
            except ValidationError as error:
                problems = "; ".join(
                    (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                    for e in error.errors()
                )
                raise ConfigError(f"{path}: family {family!r}: parameter {field!r}: {problems}") from None
            _validate_param(family, field, spec, base, str(path))
            params[field] = spec
        spaces[family] = SearchSpace(family=family, base=base, params=params)
    return spaces


def get_space(family: str, spaces: dict[str, SearchSpace] | None = None) -> SearchSpace:
    spaces = spaces if spaces is not None else load_search_spaces()
    if family not in spaces:
        raise HpoError(f"no search space for family {family!r}; known: {', '.join(sorted(spaces))}")
    return spaces[family]


# --- storage -----------------------------------------------------------------------------------


def default_storage_url() -> str:
    return f"sqlite:///{data_lake_root() / 'optuna' / 'studies.db'}"


def redact(url: str) -> str:
    """The URL with any password hidden (for logs and metadata)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        credentials, host = rest.split("@", 1)
        if ":" in credentials:
            return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def _open_rdb(url: str, engine_kwargs: dict, attempts: int = 5) -> optuna.storages.RDBStorage:
    """An RDB storage, tested with a round trip. Workers that open a *new* database at the same
    moment race to create its schema (one gets an IntegrityError on ``alembic_version``); the
    loser retries and finds the schema there."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental"; they fail trials of killed workers
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=180
                )
            storage.get_all_studies()  # a round trip: the database answers
            return storage
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str | None = None) -> optuna.storages.BaseStorage:
    """Open (and test) the storage at ``url``; a clear ``HpoError`` when it cannot be used."""
    url = url or default_storage_url()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise HpoError(f"storage URL {url!r} has no scheme; use sqlite:///path.db, journal:///path.log or a database URL")
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
        return _open_rdb(url, engine_kwargs)
    except Exception as error:  # noqa: BLE001 - any failure to open is reported the same way
        raise HpoError(f"cannot open Optuna storage {redact(url)!r}: {type(error).__name__}: {error}") from error


# --- running a study ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyData:
    """What a study trains on: the message-passing view and validation pairs (never test).

    ``graph`` and ``train_index`` (the full listening graph and the split's training edges) let a
    trial weight BPR or train task heads from the training edges' attributes; without them a
    sampled config that needs either fails naming the field.
    """

    view: HeteroData
    valid_pairs: Tensor
    graph: HeteroData | None = None
    train_index: Tensor | None = None

    def training_inputs(self, config: ModelConfig) -> dict[str, Tensor | None]:
        """``weights`` and ``task_labels`` of ``config`` for :func:`train` (None: not used)."""
        if not (config.weighted or config.tasks):
            return {"weights": None, "task_labels": None}
        if self.graph is None or self.train_index is None:
            fields = [f for f in ("weight_completion", "weight_play_count", "weight_recency", "task_complete_weight",
                                  "task_repeat_weight") if getattr(config, f)]
            raise HpoError(f"{', '.join(fields)} need the study's full graph and training edges (StudyData.graph, train_index)")
        return training_inputs(config, self.graph, self.train_index)

    @property
    def num_nodes(self) -> dict[str, int]:
        return {t: int(self.view[t].num_nodes) for t in self.view.node_types}


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def validation_scores(model, data: StudyData) -> dict[str, float]:
    """NDCG@10 and coverage@10 of ``model`` on the validation pairs (training pairs masked)."""
    user_emb, song_emb = embed(model, data.view)
    values = ranking_metrics(user_emb, song_emb, data.valid_pairs, data.view[LISTENS].edge_index, ks=(10,))
    return {"valid_ndcg@10": float(values["ndcg@10"]), "valid_coverage@10": float(values["coverage@10"])}


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
            return (f"time estimate {estimate.seconds:.0f} s ({estimate.epochs} epochs) > limit "
                    f"max_trial_seconds {self.max_seconds:g} s")
        return None


def make_objective(
    space: SearchSpace,
    data: StudyData,
    max_epochs: int | None = None,
    log: Logger | None = None,
    multi_objective: bool = False,
    limits: TrialLimits | None = None,
):
    """The objective: train the sampled config, report validation Recall@10 per epoch, prune.
    With ``multi_objective``: no reports (no pruning); returns the ``MULTI_OBJECTIVES`` values.
    Every trial's memory (and, with a probe, time) estimate is recorded; with ``limits``, a trial
    over one is pruned before it trains."""
    log = log or (lambda message: None)
    limits = limits or TrialLimits()
    size = trial_budget.GraphSize.of(data.view)

    def multi(trial: optuna.Trial, model, config: ModelConfig, epochs: int | None) -> tuple[float, float, float]:
        result = train(model, data.view, data.valid_pairs, config, max_epochs=epochs, **data.training_inputs(config))
        scores = validation_scores(model, data)  # train() leaves the best epoch's weights loaded
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("valid_recall@10", float(result.best_valid_recall))
        return scores["valid_ndcg@10"], float(result.seconds), scores["valid_coverage@10"]

    def objective(trial: optuna.Trial) -> float | tuple[float, float, float]:
        params = space.suggest(trial)
        try:
            config = space.config_for(params, f"{space.family}_trial{trial.number}")
        except ValidationError as error:
            message = "; ".join(e["msg"] for e in error.errors())
            trial.set_user_attr("invalid", message)
            raise optuna.TrialPruned(f"invalid combination {params}: {message}") from None
        epochs = min(max_epochs, config.max_epochs) if max_epochs else None
        model = build_model(config, data.num_nodes)
        estimate = trial_budget.estimate(
            config, size, parameter_count(model), epochs or config.max_epochs, limits.seconds_per_unit
        )
        trial.set_user_attr("estimate_memory_mb", round(estimate.memory_mb, 1))
        if estimate.seconds is not None:
            trial.set_user_attr("estimate_seconds", round(estimate.seconds, 1))
        reason = limits.violation(estimate)
        if reason is not None:
            trial.set_user_attr("pruned_by", reason)
            trial.set_user_attr("epochs_run", 0)
            raise optuna.TrialPruned(f"not trained: {reason}")
        if multi_objective:
            return multi(trial, model, config, epochs)
        started = time.perf_counter()

        def on_epoch(row: dict) -> None:
            trial.report(row["valid_recall@10"], row["epoch"])
            if trial.should_prune():
                trial.set_user_attr("train_seconds", time.perf_counter() - started)
                trial.set_user_attr("epochs_run", row["epoch"])
                raise optuna.TrialPruned(f"pruned at epoch {row['epoch']} (valid recall@10 {row['valid_recall@10']:.4f})")

        result = train(
            model, data.view, data.valid_pairs, config, max_epochs=epochs, on_epoch=on_epoch, **data.training_inputs(config)
        )
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        return float(result.best_valid_recall)

    return objective


def sampler_seed(seed: int, worker: int, existing_trials: int) -> int:
    """The TPE seed of one worker session: deterministic, but distinct per worker and per resume
    (a resumed or parallel session with the seed of the first would re-draw its startup points)."""
    digest = hashlib.sha256(f"{seed}:{worker}:{existing_trials}".encode()).hexdigest()
    return int(digest[:8], 16)


def open_study(
    family: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    seed: int = 0,
    worker: int = 0,
    study_name: str | None = None,
    pruner_startup_trials: int = 3,
    pruner_warmup_epochs: int = 2,
    multi_objective: bool = False,
) -> optuna.Study:
    """Create or resume the study of ``family`` (maximizing validation Recall@10), or with
    ``multi_objective`` an NSGA-II study of ``MULTI_OBJECTIVES`` (default name
    ``spotify-engine/<family>/pareto``, never shared with the single-objective study)."""
    storage = open_storage(storage) if storage is None or isinstance(storage, str) else storage
    name = study_name or (f"spotify-engine/{family}/pareto" if multi_objective else f"spotify-engine/{family}")
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
        study = optuna.create_study(
            storage=storage,
            sampler=optuna.samplers.NSGAIISampler(seed=sampler_seed(seed, worker, existing)),
            pruner=optuna.pruners.NopPruner(),
            study_name=name,
            directions=wanted,
            load_if_exists=True,
        )
        study.set_user_attr("family", family)
        study.set_user_attr("objective", list(MULTI_OBJECTIVES))
        return study
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, worker, existing), n_startup_trials=5)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=pruner_startup_trials, n_warmup_steps=pruner_warmup_epochs)
    study = optuna.create_study(
        storage=storage, sampler=sampler, pruner=pruner, study_name=name, direction="maximize", load_if_exists=True
    )
    study.set_user_attr("family", family)
    study.set_user_attr("objective", OBJECTIVE)
    return study


def run_study(
    study: optuna.Study,
    space: SearchSpace,
    data: StudyData,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    max_epochs: int | None = None,
    log: Logger | None = None,
    limits: TrialLimits | None = None,
) -> optuna.Study:
    """Run ``n_trials`` more trials (or until ``timeout_s``), logging each finished trial; a
    trial whose estimate exceeds ``limits`` is pruned before it trains."""
    log = log or (lambda message: None)
    if n_trials is not None and n_trials < 1:
        raise HpoError(f"n_trials must be >= 1, got {n_trials}")
    if timeout_s is not None and timeout_s <= 0:
        raise HpoError(f"timeout_s must be > 0, got {timeout_s}")
    if n_trials is None and timeout_s is None:
        raise HpoError("give n_trials or timeout_s (or both): a study needs a stopping rule")

    multi_objective = is_multi_objective(study)

    def report_multi(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        values = (
            ", ".join(f"{name} {value:.4f}" for name, value in zip(MULTI_OBJECTIVES, trial.values))
            if trial.values is not None
            else "-"
        )
        front = len(study.best_trials)
        log(
            f"trial {trial.number} {trial.state.name.lower()}: {values} after {trial.user_attrs.get('epochs_run', '-')} "
            f"epochs; params {trial.params}; Pareto front {front} trial{'s' if front != 1 else ''}"
        )

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if "pruned_by" in trial.user_attrs:
            log(f"trial {trial.number} pruned before training: {trial.user_attrs['pruned_by']}; params {trial.params}")
            return
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        try:
            best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "-"
        epochs = trial.user_attrs.get("epochs_run", "-")
        seconds = trial.user_attrs.get("train_seconds")
        log(
            f"trial {trial.number} {trial.state.name.lower()}: {OBJECTIVE} {value} after {epochs} epochs"
            f"{f' in {seconds:.1f} s' if seconds is not None else ''}; params {trial.params}; best so far {best}"
        )

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        study.optimize(
            make_objective(space, data, max_epochs, log, multi_objective=multi_objective, limits=limits),
            n_trials=n_trials,
            timeout=timeout_s,
            callbacks=[report_multi if multi_objective else report],
            catch=(),
        )
    finally:
        optuna.logging.set_verbosity(previous)
    return study


# --- outcome -----------------------------------------------------------------------------------


def trials_table(study: optuna.Study) -> list[dict]:
    rows = []
    multi_objective = is_multi_objective(study)
    for trial in study.get_trials(deepcopy=False):
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete and trial.datetime_start else None
        if multi_objective:
            values = trial.values or [None] * len(MULTI_OBJECTIVES)
            rows.append(
                {
                    "number": trial.number,
                    "state": trial.state.name,
                    **dict(zip(MULTI_OBJECTIVES, values)),
                    "epochs_run": trial.user_attrs.get("epochs_run"),
                    "seconds": duration,
                    **_estimate_columns(trial),
                    **{f"param_{k}": v for k, v in trial.params.items()},
                }
            )
            continue
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "epochs_run": trial.user_attrs.get("epochs_run"),
                "seconds": duration,
                **_estimate_columns(trial),
                **{f"param_{k}": v for k, v in trial.params.items()},
            }
        )
    return rows


def _estimate_columns(trial: optuna.trial.FrozenTrial) -> dict:
    """A trial's resource estimates and, when pruned on one, the reason (estimate and limit)."""
    return {
        "est_memory_mb": trial.user_attrs.get("estimate_memory_mb"),
        "est_seconds": trial.user_attrs.get("estimate_seconds"),
        "pruned_by": trial.user_attrs.get("pruned_by", ""),
    }


def param_importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances over the completed trials ({} while fewer than two completed)."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):
        return {}


def best_config(study: optuna.Study, space: SearchSpace, name: str | None = None) -> ModelConfig:
    """The base config with the best trial's parameters, named ``<family>_tuned``."""
    return space.config_for(study.best_trial.params, name or f"{space.family}_tuned")


def registry_entry(config: ModelConfig, study: optuna.Study) -> dict:
    """A ``models.yaml`` entry for ``config`` (the key is the name), describing its origin."""
    entry = config.model_dump(exclude={"name"})
    entry["description"] = (
        f"{config.model} tuned by Optuna study {study.study_name!r}: trial {study.best_trial.number}, "
        f"{OBJECTIVE} {study.best_value:.4f} (validation)"
    )
    return entry


def write_best_yaml(path: Path, config: ModelConfig, study: optuna.Study) -> Path:
    """Write the best config as a one-entry registry file (same schema as ``models.yaml``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Written by the hpo_study asset; promote by copying the entry into configs/models.yaml.\n"
    text += yaml.safe_dump({config.name: registry_entry(config, study)}, sort_keys=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def promoted_name(family: str, study_name: str) -> str:
    """``hpo_<family>`` for the default study name, else ``hpo_<family>_<study>`` (the study name
    reduced to lowercase letters, digits and '_')."""
    slug = re.sub(r"[^a-z0-9]+", "_", study_name.lower().removeprefix("spotify-engine/")).strip("_")
    return (f"hpo_{family}" if slug == family else f"hpo_{family}_{slug}")[:100].rstrip("_")


def promote_best(
    study: optuna.Study, space: SearchSpace, storage_url: str, lake_root: Path | None = None, name: str | None = None
) -> tuple[ModelConfig, Path]:
    """Write the best trial's config as a promoted config of the data lake (``lib/registry.py``),
    with its source (study, trial, objective value, redacted storage). Returns it and its file."""
    if is_multi_objective(study):
        raise HpoError(f"study {study.study_name!r} is multi-objective: it has no single best trial to promote")
    name = name or promoted_name(space.family, study.study_name)
    registry_lib.check_promotable(name, study.study_name, space.family, lake_root)
    config = best_config(study, space, name)
    config = config.model_copy(update={"description": registry_entry(config, study)["description"]})
    source = registry_lib.PromotionSource(
        family=space.family,
        study_name=study.study_name,
        trial=study.best_trial.number,
        objective=OBJECTIVE,
        value=float(study.best_value),
        storage=redact(storage_url),
        promoted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return config, registry_lib.write_promoted(config, source, lake_root)


def history_points(study: optuna.Study) -> tuple[list[int], list[float], list[float]]:
    """Completed trial numbers, their values and the best value so far."""
    numbers, values, best = [], [], []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        numbers.append(trial.number)
        values.append(float(trial.value))
        best.append(max(values))
    return numbers, values, best


def pareto_table(study: optuna.Study) -> list[dict]:
    """The Pareto front of a multi-objective study (``study.best_trials``): one row per trial with
    its parameters and the three objective values, by descending validation NDCG@10."""
    if not is_multi_objective(study):
        raise HpoError(f"study {study.study_name!r} is single-objective: it has no Pareto front")
    rows = [
        {
            "number": trial.number,
            **{name: float(value) for name, value in zip(MULTI_OBJECTIVES, trial.values)},
            **{f"param_{k}": v for k, v in trial.params.items()},
        }
        for trial in study.best_trials
    ]
    return sorted(rows, key=lambda row: (-row[MULTI_OBJECTIVES[0]], row["number"]))
