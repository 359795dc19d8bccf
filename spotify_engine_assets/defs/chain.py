"""The chain factory: one set of assets for every chain, built from its :class:`Dataset`.

Given a dataset (its schema, protocol, registry and view builder) and the keys of its graph and
split assets (``<chain>/graph``, ``<chain>/split``, defined with the chain's loader), the factory
emits, with one naming scheme, the same metadata, provenance, plots, atomic report writing and
checks for every chain:

* ``<chain>/model_registry`` - every config of ``configs/<chain>/models.yaml`` and of the configs
  promoted from studies, validated, each a partition of the dynamic partitions ``<chain>_configs``;
* ``<chain>/trained_model`` (partition = config) - the config's model fitted on the training part
  (graph models: the one trainer, resumable checkpoints), its weights, history and provenance;
* ``<chain>/metric_report`` (partition = config) - the chain's test metrics per user and overall,
  beyond-accuracy, fairness, efficiency, most-popular and a random ranking on the same split;
  checks ``quality_gate`` (blocking) and ``fairness_gap`` (warning);
* ``<chain>/model_comparison`` - every report in one table (``reports/<chain>/model_comparison``);
* ``<chain>/experiments``, ``<chain>/ab_tests``, ``<chain>/champion`` (check ``champion_gate``);
* ``<chain>/hpo_study`` (partition = family of ``configs/<chain>/search_spaces.yaml``);
* the blocking check ``leakage_free`` on ``<chain>/split`` (the dataset's split violations);
* the job ``<chain>_train_and_evaluate`` (one config: trained model, report, recommendations) and the
  automation sensor ``<chain>_evaluate_trained_models`` (a newly trained config gets its report).

Every input is a Dagster dependency: no asset reads another asset's file behind Dagster's back.
"""

import functools
import hashlib
import importlib
import inspect
import io
import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import optuna
import polars as pl
import torch
import yaml
from pydantic import Field
from torch_geometric.data import HeteroData

from .. import core
from ..core.config import (
    MAX_WORLD_SIZE,
    ConfigError,
    ModelConfig,
    Thresholds,
    load_thresholds,
    parse_config,
    update_config,
)
from ..core.data.graph import from_payload, graph_summary, to_payload
from ..core.dataset import Dataset
from ..core.evaluation.report import (
    PeakMemory,
    comparison_summary,
    evaluate,
    fairness_tables,
    latency_per_user,
    memory_estimate_bytes,
)
from ..core.evaluation.stats import BETTER, NO_DIFFERENCE, WORSE, compare_models
from ..core.experiments import hpo as hpo_lib
from ..core.experiments import records, trial_budget
from ..core.models.base import FitResult
from ..core.models.baselines import MostPopular
from ..core.plots import (
    count_bars,
    difference_distributions,
    difference_plot,
    frame_markdown,
    history_plot,
    metric_bars,
    pareto_front,
    training_curve,
)
from ..core.presentation import config_hash, config_summary, group_name, metric_value, rounded, tidy
from ..core.registry import ORIGIN_REGISTRY, ORIGIN_STUDY
from ..core.serving.diversity import DEFAULT_MAX_PER_ARTIST, DEFAULT_MMR_LAMBDA, RERANKERS, Diversify
from ..core.serving.recommend import bundle_from, recommendation_frame, serving_payload
from ..core.storage.artifacts import atomic_write_bytes, first_non_finite
from ..core.storage.paths import source_version
from ..core.strict_yaml import load_yaml
from ..core.training.inputs import task_labels
from ..core.training.losses import task_metrics
from .ddp_pipes import PipesLauncher
from .resources import DUCKDB_POOL, DataLake, TorchRuntime, Warehouse

BEYOND_ACCURACY = ("coverage@10", "gini@10", "novelty@10", "ild_embedding@10", "personalization@10")
EXTRA_METRICS = ("mrr@10", "gini@10", "novelty@10", "personalization@10")


class TrainRunConfig(dg.Config):
    max_epochs: int | None = Field(
        default=None, ge=1, description="Cap on epochs for this run (None: the config's max_epochs)."
    )
    user_sample: int | None = Field(
        default=None, ge=1, description="Train and evaluate on a seeded sample of this many users (None: the config's)."
    )
    checkpoint_every: int = Field(default=1, ge=1, description="Write a resumable checkpoint every this many epochs.")
    world_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_WORLD_SIZE,
        description="Train a graph model in this many torchrun processes "
        "(TrainableConfig.world_size; None: the config's own, 1 unless it sets one). No effect on closed-form models.",
    )


class ABTestConfig(dg.Config):
    plan: str | None = Field(
        default=None, description="Path of an A/B plan YAML (default configs/<chain>/ab_tests.yaml)."
    )


@dataclass(frozen=True)
class Chain:
    """A dataset and where its Dagster assets live."""

    dataset: Dataset
    segments: str | None = None  # asset key path of a (user_id, user_type) frame for fairness by type

    @property
    def name(self) -> str:
        return self.dataset.name

    def key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([self.name, asset])

    def group(self, domain: str) -> str:
        return group_name(self.name, domain)

    @property
    def partitions(self) -> str:
        return f"{self.name}_configs"

    @property
    def code_version(self) -> str:
        """Hash of the core and of the dataset's package (its view builder, protocol, graph code)."""
        return _code_version(self.dataset.view.__module__.rsplit(".", 1)[0])

    def ins(self, *names: str) -> dict[str, dg.AssetIn]:
        """The chain's assets ``names`` as inputs of the same names."""
        return {name: dg.AssetIn(self.key(name)) for name in names}

    def asset(self, name: str, domain: str, checks: dict[str, tuple[bool, str]] | None = None, **asset_args):
        """``dg.asset`` ``<chain>/<name>`` in group ``group_name(<chain>, <domain>)`` at the chain's code version (unless
        ``asset_args`` give one), with ``checks`` (check name -> (blocking, description)) on the asset itself."""
        key = self.key(name)
        specs = [
            check_spec(check, key, blocking, description, asset_args.get("partitions_def"))
            for check, (blocking, description) in (checks or {}).items()
        ]
        asset_args.setdefault("code_version", self.code_version)

        def decorate(fn):  # the docstring is the UI's description: ``<chain>`` in it becomes this chain's name
            description = asset_args.pop("description", None) or inspect.cleandoc(fn.__doc__ or "").replace(
                "<chain>", self.name
            )
            return dg.asset(
                key=key,
                group_name=self.group(domain),
                check_specs=specs or None,
                description=description or None,
                **asset_args,
            )(fn)

        return decorate


def check_spec(
    name: str,
    asset: dg.AssetKey,
    blocking: bool,
    description: str,
    partitions_def: dg.PartitionsDefinition | None = None,
) -> dg.AssetCheckSpec:
    """A check on ``asset``; on a partitioned asset the check has the asset's partitions, so every result
    (and the UI's check history) names the partition (the config) it was evaluated for."""
    with warnings.catch_warnings():  # partitioned asset checks are a preview feature of Dagster 1.13
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=asset, blocking=blocking, description=description, partitions_def=partitions_def
        )


@functools.cache
def _code_version(package: str) -> str:
    return source_version(core, importlib.import_module(package))


def publish(
    lake: DataLake, chain: str, name: str, frame: pl.DataFrame, max_rows: int = 200, shown: pl.DataFrame | None = None
) -> str:
    """``reports/<chain>/<name>.{md,csv}`` written atomically: the CSV holds ``frame``, the markdown
    ``shown`` (default ``frame``); returns the markdown."""
    markdown = frame_markdown(frame if shown is None else shown, max_rows=max_rows)
    folder = lake.reports_dir / chain
    atomic_write_bytes(folder / f"{name}.md", (markdown + "\n").encode())
    atomic_write_bytes(folder / f"{name}.csv", frame.write_csv().encode())
    return markdown


def evaluate_when_trained(chain: Chain) -> dg.AutomationCondition:
    """Declarative automation of ``<chain>/metric_report``: Dagster's ``eager`` condition on the
    partition's ``trained_model`` alone - a config whose model was trained (from the UI, the CLI, a
    sensor) is evaluated by the automation sensor, unless the same run already evaluates it; a new
    graph or split alone evaluates nothing (the trained models would be stale)."""
    return dg.AutomationCondition.eager().allow(dg.AssetSelection.assets(chain.key("trained_model")))


def register_configs(
    chain: Chain, instance: dg.DagsterInstance, lake_root: Path | None = None
) -> tuple[list[str], list[str]]:
    """Validate the chain's full registry and add its missing names as partitions. Returns (every
    config name, the names added now)."""
    names = sorted(chain.dataset.registry.full(lake_root))
    known = set(instance.get_dynamic_partitions(chain.partitions))
    added = [name for name in names if name not in known]
    if added:
        instance.add_dynamic_partitions(chain.partitions, added)
    return names, added


def promotion_metadata(chain: Chain, lake_root: Path, name: str) -> dict:
    """For a promoted config: its source study (name, trial, objective, redacted storage) and a
    link to the ``hpo_study`` partition that produced it; the origin otherwise."""
    entry = chain.dataset.registry.promoted(lake_root).get(name)
    if entry is None:
        return {"config_origin": ORIGIN_REGISTRY}
    source = entry.source
    return {
        "config_origin": ORIGIN_STUDY,
        "source_study": source.study_name,
        "source_trial": source.trial,
        "source_objective": f"{source.objective} {source.value:.4f} (validation)",
        "source_storage": source.storage,
        "source_asset": dg.MetadataValue.asset(chain.key("hpo_study")),
        "source_partition": source.family,
        "promoted_config": dg.MetadataValue.path(str(entry.path)),
    }


PROVENANCE_DIGITS = 8  # floats of a config in provenance metadata: readable, still the tuned values


def trained_model_headline(result: FitResult, num_parameters: int) -> dict:
    """The numbers a trained model's page leads with (numeric metadata, charted across runs by the
    UI): best validation metric, training seconds, seconds per epoch, epochs, parameters."""
    headline: dict = {}
    if result.best_valid is not None:
        headline[f"best_valid_{result.monitor}"] = dg.MetadataValue.float(metric_value(result.best_valid))
    headline["train_seconds"] = dg.MetadataValue.float(rounded(result.seconds))
    if result.history:
        pace = sum(row.get("seconds", 0.0) for row in result.history) / len(result.history)  # resumed epochs too
        headline["seconds_per_epoch"] = dg.MetadataValue.float(rounded(pace))
        headline["epochs_run"] = dg.MetadataValue.int(int(result.epochs_run))
        headline["best_epoch"] = dg.MetadataValue.int(int(result.best_epoch))
    headline["num_parameters"] = dg.MetadataValue.int(int(num_parameters))
    return headline


def config_metadata(config: ModelConfig) -> dict:
    """A config in three short entries instead of its ~40-line JSON: its split, a one-line summary
    (headline settings and those off their defaults) and a hash of the whole config."""
    dump = config.model_dump()
    defaults = {
        key: field.get_default(call_default_factory=True)
        for key, field in type(config).model_fields.items()
        if not field.is_required()
    }
    return {"split": config.split, "config": config_summary(dump, defaults), "config_hash": config_hash(dump)}


def efficiency_metadata(efficiency: dict) -> dict:
    """A report's cost as numeric entries (seconds, milliseconds, MiB; charted across runs by the UI)."""
    shown = {
        "train_seconds": efficiency["train_seconds"],
        "forward_ms": efficiency["forward_seconds"] * 1000,
        "latency_p50_ms": efficiency["latency_p50_ms"],
        "latency_p95_ms": efficiency["latency_p95_ms"],
        "throughput_users_per_s": efficiency["throughput_users_per_s"],
        "memory_estimate_mb": efficiency["memory_estimate_mb"],
        "memory_peak_mb": efficiency["memory_peak_mb"],
    }
    return {
        f"efficiency/{key}": dg.MetadataValue.float(rounded(value)) for key, value in shown.items() if value is not None
    }


def checkpoint_dir_for(
    lake: DataLake, chain: Chain, config: ModelConfig, data_fingerprint: str, max_epochs: int | None
) -> Path:
    """The checkpoint folder of one training run: data lake, chain, partition, and a hash of config,
    data, epoch cap and code, so a checkpoint of another config or data is never resumed."""
    key = json.dumps(
        {"config": config.model_dump(), "data": data_fingerprint, "max_epochs": max_epochs, "code": chain.code_version},
        sort_keys=True,
    )
    return lake.path / "checkpoints" / chain.name / config.name / hashlib.sha256(key.encode()).hexdigest()[:16]


def upstream_versions(context: dg.AssetExecutionContext, keys: list[dg.AssetKey]) -> dict[str, dict]:
    """Dagster's recorded data and code version of each upstream asset's latest materialization."""
    versions = {}
    for key in keys:
        entry = None
        try:
            entry = context.instance.get_latest_materialization_event(key)
        except Exception as error:  # noqa: BLE001 - provenance is best effort, never fails a run
            context.log.warning(f"cannot read the latest materialization of {key.to_user_string()}: {error}")
        tags = (entry.asset_materialization.tags or {}) if entry and entry.asset_materialization else {}
        versions[key.to_user_string()] = {
            "data_version": tags.get("dagster/data_version", "unknown"),
            "code_version": tags.get("dagster/code_version", "unknown"),
            "run_id": entry.run_id if entry else "unknown",
        }
    return versions


def data_assets(
    chain: Chain,
    tables: tuple[str, ...],
    build_graph: Callable[[dict[str, pl.DataFrame]], HeteroData],
    build_split: Callable[[HeteroData], dict],
) -> list[dg.AssetsDefinition]:
    """``<chain>/graph`` and ``<chain>/split`` of a chain whose graph needs no run config: the graph
    from the warehouse ``tables`` (``schema.table``, each a dependency), the split from the graph."""

    @chain.asset(
        "graph",
        "graph",
        deps=[dg.AssetKey(t.split(".")) for t in tables],
        kinds={"pytorch", "pyg"},
        pool=DUCKDB_POOL,
        description=build_graph.__doc__,
    )
    def graph(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.Output[dict]:
        try:
            data = build_graph({table: warehouse.read_table(table) for table in tables})
        except ValueError as error:
            raise dg.Failure(f"cannot build the {chain.name} graph: {error}") from error
        return dg.Output(to_payload(data), metadata=graph_summary(data))

    @chain.asset("split", "graph", ins=chain.ins("graph"), kinds={"pytorch"}, description=build_split.__doc__)
    def split(context: dg.AssetExecutionContext, graph: dict) -> dg.Output[dict]:
        splits = build_split(from_payload(graph))
        return dg.Output(
            splits,
            metadata={
                f"{strategy}/{part}": int(index.numel())
                for strategy, parts in splits.items()
                if strategy != "settings"
                for part, index in parts.items()
            },
        )

    return [graph, split]


def chain_definitions(chain: Chain) -> dg.Definitions:
    """Every asset and check of one chain after its graph and split (module docstring)."""
    dataset, name = chain.dataset, chain.name
    configs = dg.DynamicPartitionsDefinition(name=chain.partitions)

    # ------------------------------------------------------------------------- registry
    @chain.asset("model_registry", "training", kinds={"yaml"})
    def model_registry(context: dg.AssetExecutionContext, lake: DataLake) -> dg.Output[dict]:
        """Every model config of the chain (its registry file and the configs promoted from studies),
        validated, each a partition of its trained model and metric report; adds missing partitions,
        never deletes."""
        try:
            rows = dataset.registry.rows(lake.path)
            names, added = register_configs(chain, context.instance, lake.path)
        except ConfigError as error:
            raise dg.Failure(f"{name}/model_registry: {error}") from error
        stale = sorted(set(context.instance.get_dynamic_partitions(chain.partitions)) - set(names))
        if stale:
            context.log.warning(f"partitions without a config (kept; their runs fail): {', '.join(stale)}")
        context.log.info(f"{len(names)} {name} model configs; added as partitions: {', '.join(added) or 'none'}")
        origins = pl.DataFrame(rows)["origin"].value_counts().sort("origin").to_dicts()
        return dg.Output(
            {"configs": rows, "added": added, "stale": stale},
            metadata={
                "configs": len(names),
                "added_partitions": dg.MetadataValue.json(added),
                "partitions_without_config": dg.MetadataValue.json(stale),
                "origins": dg.MetadataValue.json({row["origin"]: int(row["count"]) for row in origins}),
                "registry": dg.MetadataValue.md(frame_markdown(pl.DataFrame(rows), max_rows=200)),
            },
        )

    # ------------------------------------------------------------------------- training
    @chain.asset(
        "trained_model", "training", partitions_def=configs, ins=chain.ins("graph", "split"), kinds={"pytorch", "pyg"}
    )
    def trained_model(
        context: dg.AssetExecutionContext,
        config: TrainRunConfig,
        torch_runtime: TorchRuntime,
        lake: DataLake,
        graph: dict,
        split: dict,
    ) -> dg.Output[dict]:
        """The partition's config fitted on its split's training part: closed-form models solve,
        graph models train with the one trainer (advanced: early stopping on the chain's validation
        metric with ReduceLROnPlateau, resumable checkpoints when a killed run is re-materialized;
        simple: fixed epochs). Best and final weights, config, history and provenance. To train and
        evaluate a config in one run: job ``<chain>_train_and_evaluate`` (pick the config as its
        partition); a model trained alone is evaluated by the sensor ``<chain>_evaluate_trained_models``."""
        try:
            model_config = dataset.registry.get(context.partition_key, dataset.registry.full(lake.path))
        except ConfigError as error:
            raise dg.Failure(str(error)) from error
        if config.user_sample is not None:
            model_config = update_config(model_config, user_sample=config.user_sample)
        if config.world_size is not None and model_config.trainable:
            try:
                model_config = update_config(model_config, world_size=config.world_size)
            except ValueError as error:
                raise dg.Failure(
                    f"{name}/trained_model[{model_config.name}]: world_size {config.world_size}: {error}"
                ) from error
        torch_runtime.apply()
        data, parts = from_payload(graph), split[model_config.split]
        fingerprint = records.data_fingerprint(data, parts)
        provenance = {
            "config": model_config.model_dump(),
            "seed": model_config.seed,
            "max_epochs_override": config.max_epochs,
            "data": fingerprint,
            "upstream": upstream_versions(context, [chain.key("graph"), chain.key("split")]),
            "code_versions": {"trained_model": chain.code_version},
            "git": records.git_state(),
            "dependencies": records.dependency_versions(),
            "torch_threads": torch.get_num_threads(),
            "device": str(torch_runtime.torch_device()),
            "run_id": context.run.run_id,
            "recorded_at": records.now_iso(),
        }
        training: dict = {}
        checkpoints = pipes = None
        if model_config.trainable:
            training = {"max_epochs": config.max_epochs, "log": context.log.info}
            if model_config.world_size > 1:  # the ranks log and report to this run through Dagster Pipes
                training["launcher"] = pipes = PipesLauncher(context)
            if model_config.trainer == "advanced":
                checkpoints = checkpoint_dir_for(lake, chain, model_config, fingerprint["combined"], config.max_epochs)
                for stale in checkpoints.parent.glob("*") if checkpoints.parent.exists() else ():
                    if stale != checkpoints:
                        shutil.rmtree(stale, ignore_errors=True)  # another config/data: never resumable
                training.update(checkpoint_dir=checkpoints, checkpoint_every=config.checkpoint_every)
        try:
            model, result, view = dataset.fit(
                model_config, data, parts, device=torch_runtime.torch_device(), **training
            )
        except ValueError as error:
            raise dg.Failure(f"{name}/trained_model[{model_config.name}]: {error}") from error
        # what serving reads instead of the graph and the model; n0 is chosen here, once, on validation
        serving = serving_payload(dataset, model_config, model, data, parts, view)
        artifact = {
            "config": model_config.model_dump(),
            "split_settings": split.get("settings", {}),
            "provenance": provenance,
            "state": model.state_dict(),
            "final_state": result.final_state,
            "history": result.history,
            "monitor": result.monitor,
            "best_epoch": result.best_epoch,
            "best_valid": result.best_valid,
            "epochs_run": result.epochs_run,
            "train_seconds": result.seconds,
            "num_parameters": model.parameter_count(),
            "fusion": {str(weight): value for weight, value in result.fusion.items()},
            "serving": serving,
        }
        # the UI lists entries in this order: the headline numbers, the config in one line, then the rest
        metadata: dict = trained_model_headline(result, model.parameter_count())
        metadata.update(model=model_config.model, **config_metadata(model_config))
        if model_config.trainable:
            metadata.update(
                training_curve=dg.MetadataValue.md(training_curve(result.history, model_config.name, result.monitor)),
                trainer=model_config.trainer,
                world_size=model_config.world_size,
                resumed_from_epoch=result.resumed_from_epoch,
                torch_threads=torch.get_num_threads(),
            )
            if result.fusion:
                metadata["fusion_model"] = model_config.fusion.model
                metadata["fusion_weight"] = rounded(model.fusion_weight)
                metadata["fusion_valid"] = dg.MetadataValue.json(tidy(artifact["fusion"]))
        if pipes is not None:
            metadata.update(pipes.metadata)
        metadata.update(
            {
                "genre_prior_n0": serving["genre_prior"],
                "genre_prior_source": serving["genre_prior_source"],
                "data_fingerprint": fingerprint["combined"],
                "git_commit": str(provenance["git"]["commit"])[:12],
                **promotion_metadata(chain, lake.path, model_config.name),
                # collapsed in the UI (over its inline limit): the whole config is in it
                "provenance": dg.MetadataValue.json(tidy(provenance, PROVENANCE_DIGITS)),
            }
        )
        if checkpoints is not None:
            shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the next materialization trains afresh
        non_finite = first_non_finite({"state": artifact["state"], "best_valid": result.best_valid})
        if non_finite is not None:  # a diverged model never becomes current: the previous version stays
            raise dg.Failure(
                f"{name}/trained_model[{model_config.name}]: {non_finite} is not finite (NaN or inf); "
                "the model is not stored and the current version stays"
            )
        return dg.Output(artifact, metadata=metadata)

    # ------------------------------------------------------------------------- evaluation
    report_ins = chain.ins("trained_model", "graph", "split")
    if chain.segments:
        report_ins["segments"] = dg.AssetIn(dg.AssetKey(chain.segments.split("/")))

    @chain.asset(
        "metric_report",
        "evaluation",
        partitions_def=configs,
        ins=report_ins,
        kinds={"pytorch"},
        automation_condition=evaluate_when_trained(chain),
        checks={
            "quality_gate": (
                True,
                f"The test {dataset.protocol.primary} beats most-popular on the same split by the "
                "configured ratio (most-popular itself must beat a random ranking).",
            ),
            "fairness_gap": (
                False,
                "Largest relative gap of the fairness metric between user groups (types, activity "
                "terciles) stays within the threshold (warning).",
            ),
        },
    )
    def metric_report(
        context: dg.AssetExecutionContext,
        torch_runtime: TorchRuntime,
        lake: DataLake,
        trained_model: dict,
        graph: dict,
        split: dict,
        **segments: pl.DataFrame,
    ):
        """Test evaluation of one config, ranking the whole catalogue with each user's training and
        validation items masked: the chain protocol's per-user accuracy metrics, coverage, Gini of
        recommendation counts, novelty, intra-list diversity (embeddings and item categories),
        personalization; every metric per user group with the largest gap; parameters, training
        time, per-user latency, throughput, memory estimate vs measured peak. Per-user metric
        vectors are kept (and written as Parquet); most-popular and a random ranking on the same
        split are scored alongside; the provenance of the experiment is recorded."""
        # ``segments`` holds the chain's user segments frame where it has one (an input only then)
        torch_runtime.apply()
        data = from_payload(graph)
        model_config = parse_config(trained_model["config"])
        parts = split[model_config.split]
        protocol = dataset.protocol.for_graph(data)
        primary = protocol.primary
        try:
            eval_data = dataset.evaluation_data(data, parts, model_config, segments.get("segments"))
            model, view = dataset.load(model_config, data, parts, trained_model["state"])
        except (ValueError, RuntimeError, KeyError) as error:
            raise dg.Failure(
                f"{name}/metric_report[{model_config.name}]: {error}; re-materialize trained_model"
            ) from error
        with PeakMemory() as memory:
            started = time.perf_counter()
            factors = model.factors()
            forward_seconds = time.perf_counter() - started
            evaluation = evaluate(model.score, factors, eval_data, protocol)
        latency = latency_per_user(model.score, evaluation.users, eval_data.test_exclude)
        dim = int(factors[1].size(1)) if factors is not None else 0
        layers = model_config.layers if model_config.trainable else 0
        estimate = memory_estimate_bytes(
            trained_model["num_parameters"],
            sum(int(view[t].num_nodes) for t in view.node_types),
            dim,
            sum(int(view[t].edge_index.size(1)) for t in view.edge_types),
            layers,
            evaluation.users.numel(),
            eval_data.num_items,
            evaluation.topk.size(1),
        )
        efficiency = {
            "num_parameters": int(trained_model["num_parameters"]),
            "train_seconds": float(trained_model["train_seconds"]),
            "forward_seconds": forward_seconds,
            "latency_p50_ms": latency["p50_ms"],
            "latency_p95_ms": latency["p95_ms"],
            "throughput_users_per_s": evaluation.users.numel() / max(evaluation.topk_seconds, 1e-9),
            "memory_estimate_mb": estimate["total"] / 2**20,
            "memory_peak_mb": memory.peak_bytes / 2**20 if memory.peak_bytes else None,
        }
        metrics = evaluation.summary
        tasks = {}
        if model_config.trainable and model_config.tasks:
            try:  # the task heads' ROC AUC on the held-out test edges, labels from their own attributes
                labels = task_labels(model_config, data, dataset.schema, parts["test"])
                tasks = task_metrics(model, model_config, labels, dataset.pairs(data, parts["test"]))
            except ValueError as error:
                raise dg.Failure(f"{name}/metric_report[{model_config.name}]: {error}") from error
        popular = MostPopular(
            model_config, dataset.schema, {t: int(data[t].num_nodes) for t in data.node_types}
        ).prepare(view)
        reference = evaluate(popular.score, popular.factors(), eval_data, protocol).summary
        generator = torch.Generator().manual_seed(0)
        random_users = torch.randn(eval_data.num_users, 16, generator=generator)
        random_items = torch.randn(eval_data.num_items, 16, generator=generator)
        random_reference = protocol.validate(
            lambda users: random_users[users] @ random_items.T,
            eval_data.test_exclude,
            eval_data.test,
            eval_data.num_items,
            eval_data.users,
        )
        thresholds = load_thresholds()
        if model_config.model == "most_popular":
            baseline_name, baseline, ratio = "random", random_reference[primary], thresholds.min_ratio_vs_random
        else:
            baseline_name, baseline, ratio = "most_popular", reference[primary], thresholds.min_ratio_vs_most_popular
        threshold = baseline * ratio

        provenance = dict(trained_model.get("provenance") or {"config": model_config.model_dump()})
        provenance["training_data"] = provenance.get("data")
        provenance["data"] = records.data_fingerprint(data, parts)
        provenance["code_versions"] = {**provenance.get("code_versions", {}), "metric_report": chain.code_version}
        provenance["evaluated_in_run"] = context.run.run_id
        if provenance["training_data"] and provenance["training_data"] != provenance["data"]:
            context.log.warning(
                f"{model_config.name}: trained on other data than it is evaluated on; re-materialize trained_model"
            )

        parquet = lake.reports_dir / name / "per_user" / model_config.name / f"{context.run.run_id}.parquet"
        buffer = io.BytesIO()
        evaluation.per_user.write_parquet(buffer)
        atomic_write_bytes(parquet, buffer.getvalue())
        report = {
            "chain": name,
            "config": model_config.name,
            "model": model_config.model,
            "split": model_config.split,
            "primary": primary,
            "metrics": metrics,
            "most_popular": reference,
            "random": random_reference,
            "num_parameters": trained_model["num_parameters"],
            "train_seconds": trained_model["train_seconds"],
            "epochs_run": trained_model["epochs_run"],
            "tasks": tasks,
            "gate": {
                "passed": metrics[primary] >= threshold,
                "threshold": threshold,
                "baseline": baseline_name,
                "metric": primary,
            },
            "efficiency": efficiency,
            "fairness": {"groups": evaluation.fairness.to_dicts(), "gaps": evaluation.gaps.to_dicts()},
            "per_user": records.per_user_payload(evaluation.per_user),
            "per_user_parquet": str(parquet),
            "provenance": provenance,
        }
        report["experiment_key"] = records.experiment_key(provenance)
        shown = [m for m in (*protocol.table, *BEYOND_ACCURACY) if m in metrics]
        table = pl.DataFrame(
            {
                "metric": shown,
                model_config.name: [metrics[m] for m in shown],
                "most_popular": [reference.get(m) for m in shown],
            }
        )
        gate = report["gate"]
        yield dg.Output(
            report,
            metadata={  # the primary metric first, then the gate, then the rest
                **{
                    m: dg.MetadataValue.float(metric_value(metrics[m]))
                    for m in sorted(protocol.table, key=lambda m: m != primary)
                    if m in metrics
                },
                f"most_popular/{primary}": dg.MetadataValue.float(metric_value(reference[primary])),
                f"{primary} / most_popular": dg.MetadataValue.float(
                    rounded(metrics[primary] / max(reference[primary], 1e-12))
                ),
                "gate": (
                    f"{'pass' if gate['passed'] else 'FAIL'}: {primary} {metrics[primary]:.4f} vs threshold "
                    f"{threshold:.4f} ({ratio} x {baseline_name})"
                ),
                **{
                    f"test_auc/{task}": dg.MetadataValue.float(metric_value(values["auc"]))
                    for task, values in tasks.items()
                    if values["auc"] is not None
                },
                "users_evaluated": metrics["users_evaluated"],
                **efficiency_metadata(efficiency),
                "report": dg.MetadataValue.md(frame_markdown(table, max_rows=50)),
                "fairness": dg.MetadataValue.md(frame_markdown(evaluation.fairness, max_rows=50)),
                "fairness_gaps": dg.MetadataValue.md(frame_markdown(evaluation.gaps, max_rows=50)),
                "per_user_metrics": dg.MetadataValue.path(str(parquet)),
                "experiment_key": report["experiment_key"],
                "data_fingerprint": provenance["data"]["combined"],
            },
        )
        yield dg.AssetCheckResult(
            check_name="quality_gate",
            passed=bool(report["gate"]["passed"]),
            # most-popular against a random ranking checks the data, not a model: it warns, never blocks
            severity=dg.AssetCheckSeverity.WARN if baseline_name == "random" else dg.AssetCheckSeverity.ERROR,
            description=f"{model_config.name}: {primary} {metrics[primary]:.4f} vs threshold {threshold:.4f} ({ratio} x {baseline_name})",
            metadata={
                "config": model_config.name,
                f"observed_{primary}": metric_value(metrics[primary]),
                "threshold": metric_value(threshold),
                "baseline": baseline_name,
                f"baseline_{primary}": metric_value(baseline),
                "required_ratio": ratio,
            },
        )
        metric = thresholds.metric(thresholds.fairness_metric, primary)
        gaps = evaluation.gaps.filter(pl.col("metric") == metric)  # computed by evaluate for the usual metrics
        if gaps.is_empty():
            if metric not in evaluation.per_user.columns:
                raise dg.Failure(
                    f"thresholds.yaml fairness_metric {metric!r} is not a per-user metric of the {name} chain; choose one "
                    f"of {', '.join(c for c in evaluation.per_user.columns if '@' in c or c.startswith('r_'))}"
                )
            gaps = fairness_tables(evaluation.per_user, [metric])[1]
        worst = gaps.sort("relative_gap").row(-1, named=True)
        yield dg.AssetCheckResult(
            check_name="fairness_gap",
            passed=worst["relative_gap"] <= thresholds.fairness_max_relative_gap,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{model_config.name}: largest relative {metric} gap {worst['relative_gap']:.3f} ({worst['dimension']})",
            metadata={
                "config": model_config.name,
                "metric": metric,
                "observed_relative_gap": metric_value(worst["relative_gap"]),
                "threshold": thresholds.fairness_max_relative_gap,
                "dimension": str(worst["dimension"]),
                "best_group": str(worst["best_group"]),
                "worst_group": str(worst["worst_group"]),
            },
        )

    @chain.asset("model_comparison", "evaluation", ins=chain.ins("metric_report"), kinds={"polars"})
    def model_comparison(
        context: dg.AssetExecutionContext, lake: DataLake, metric_report: dict[str, dict]
    ) -> dg.Output[pl.DataFrame]:
        """Every materialized metric report of the chain in one table (also ``reports/<chain>/model_comparison``)."""
        if not metric_report:
            raise dg.Failure(
                f"no {name}/metric_report partition is materialized yet: materialize some model configs first"
            )
        frame = comparison_frame(dataset, metric_report)
        markdown = publish(lake, name, "model_comparison", frame, shown=comparison_summary(frame, dataset.protocol))
        plot = metric_bars(
            {row["config"]: row for row in frame.iter_rows(named=True)},
            dataset.protocol.primary,
            f"{name}: test {dataset.protocol.primary} per config",
        )
        primary = dataset.protocol.primary
        best = frame.sort(primary, descending=True, nulls_last=True).row(0, named=True)
        return dg.Output(
            frame,
            metadata={
                # the numbers first (the plot is an image, behind "[Show Markdown]"); one entry per config is charted
                "best_config": best["config"],
                f"best/{primary}": dg.MetadataValue.float(metric_value(best[primary])),
                **{
                    f"{primary}/{row['config']}": dg.MetadataValue.float(metric_value(row[primary]))
                    for row in frame.iter_rows(named=True)
                    if row[primary] is not None
                },
                "configs": frame.height,
                "gates_failed": frame.filter(pl.col("gate") == "FAIL").height,
                "comparison": dg.MetadataValue.md(markdown),
                primary: dg.MetadataValue.md(plot),
            },
        )

    # ------------------------------------------------------------------------- experiments
    @chain.asset("experiments", "experiments", ins=chain.ins("metric_report"), kinds={"polars"})
    def experiments(
        context: dg.AssetExecutionContext, lake: DataLake, metric_report: dict[str, dict]
    ) -> dg.Output[pl.DataFrame]:
        """Every recorded metric report of the chain (each materialization of each config) as one table:
        config, seed, data fingerprint, git commit, key metrics, gate; ``current`` marks the live
        version (``spotify-engine experiments list``)."""
        if not metric_report:
            raise dg.Failure(
                f"no {name}/metric_report partition is materialized yet: materialize some model configs first"
            )
        frame = records.experiments_frame(lake.artifacts, name, include_history=True)
        publish(lake, name, "experiments", frame)
        current = frame.filter(pl.col("current"))
        shown = current.select([c for c in EXPERIMENT_COLUMNS if c in current.columns])
        return dg.Output(
            frame,
            metadata={
                "experiments": frame.height,
                "configs": current.height,
                "current": dg.MetadataValue.md(frame_markdown(shown, max_rows=100)),
            },
        )

    # ------------------------------------------------------------------------- studies
    families = hpo_families(dataset)
    assets = [
        model_registry,
        trained_model,
        metric_report,
        model_comparison,
        experiments,
        ab_asset(chain),
        champion_asset(chain),
        recommendations_asset(chain, configs),
    ]
    if families:
        assets.append(hpo_asset(chain, families))
    return dg.Definitions(
        assets=assets,
        asset_checks=[split_check(chain)],
        jobs=[train_and_evaluate_job(chain)],
        sensors=[evaluation_sensor(chain)],
    )


def train_and_evaluate_job(chain: Chain):
    """``<chain>_train_and_evaluate``: the UI's one-click path for a config - pick the partition (the
    config) and launch; one in-process run trains it, evaluates it (with its gates) and writes its
    recommendations, as ``spotify-engine materialize`` does per config."""
    from ..runner import model_stage

    return dg.define_asset_job(
        f"{chain.name}_train_and_evaluate",
        selection=model_stage(chain.name),
        executor_def=dg.in_process_executor,
        description=f"Train, evaluate and serve one {chain.name} model config (a partition of {chain.partitions}): "
        f"{chain.name}/trained_model, {chain.name}/metric_report with its checks (quality_gate, fairness_gap), "
        f"{chain.name}/recommendations, in one run.",
    )


def evaluation_sensor(chain: Chain) -> dg.AutomationConditionSensorDefinition:
    """Runs the declarative automation of the chain's metric reports (:func:`evaluate_when_trained`),
    on by default: training one config from the UI (or anywhere) is followed by its evaluation."""
    return dg.AutomationConditionSensorDefinition(
        f"{chain.name}_evaluate_trained_models",
        target=dg.AssetSelection.assets(chain.key("metric_report")),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Declarative automation (Dagster's eager condition, on trained_model only): every newly "
        f"materialized {chain.name}/trained_model partition gets its {chain.name}/metric_report (and its gates) "
        f"in a run of its own, unless the run that trained it already evaluated it. Needs the Dagster daemon "
        f"(make ui runs it); stop the sensor here to evaluate only by hand.",
    )


EXPERIMENT_COLUMNS = (
    "experiment",
    "config",
    "split",
    "seed",
    "recorded_at",
    "data",
    "git_commit",
    "recall@10",
    "ndcg@10",
    "mrr@10",
    "coverage@10",
    "gini@10",
    "personalization@10",
    "gate",
    "train_seconds",
)
AB_COLUMNS = (
    "pair",
    "metric",
    "n",
    "mean_control",
    "mean_treatment",
    "mean_diff",
    "ci_low",
    "ci_high",
    "cohens_d",
    "t_p_holm",
    "wilcoxon_p_holm",
    "verdict",
    "welch_p_holm",
    "welch_verdict",
)


def comparison_frame(dataset: Dataset, reports: dict[str, dict]) -> pl.DataFrame:
    """One row per config: the chain's table metrics, most-popular's primary metric, the gate and cost."""
    primary = dataset.protocol.primary
    rows = []
    for config in sorted(reports):
        report = reports[config]
        row = {"config": config, "model": report["model"], "split": report["split"]}
        row.update({m: report["metrics"].get(m) for m in dataset.protocol.table})
        row[f"most_popular {primary}"] = report["most_popular"][primary]
        row[f"{primary} / most_popular"] = report["metrics"][primary] / max(report["most_popular"][primary], 1e-12)
        row["gate"] = "pass" if report["gate"]["passed"] else "FAIL"
        row.update(
            train_seconds=float(report["train_seconds"]),
            epochs=int(report["epochs_run"]),
            parameters=int(report["num_parameters"]),
        )
        row.update({m: report["metrics"].get(m) for m in EXTRA_METRICS})
        row.update({f"auc_{task}": values.get("auc") for task, values in (report.get("tasks") or {}).items()})
        row["latency_p50_ms"] = (report.get("efficiency") or {}).get("latency_p50_ms")
        rows.append(row)
    return pl.DataFrame(rows)


def ab_asset(chain: Chain) -> dg.AssetsDefinition:
    @chain.asset("ab_tests", "experiments", ins=chain.ins("metric_report"), kinds={"scipy", "polars"})
    def ab_tests(
        context: dg.AssetExecutionContext, config: ABTestConfig, lake: DataLake, metric_report: dict[str, dict]
    ) -> dg.Output[pl.DataFrame]:
        """A/B comparisons of the configured (control, treatment) pairs of ``configs/<chain>/ab_tests.yaml``
        on the same split: paired t-test, Wilcoxon signed-rank, bootstrap 95% CI of the mean
        difference, paired Cohen's d, Holm across the metrics, and the random-halves variant (Welch);
        a verdict per pair and metric: better / worse / no detectable difference."""
        thresholds = load_thresholds()
        try:
            plan = records.load_ab_plan(chain.dataset.registry, Path(config.plan) if config.plan else None, lake.path)
        except ConfigError as error:
            raise dg.Failure(f"invalid A/B plan: {error}") from error
        empty = pl.DataFrame(schema={"pair": pl.String, "metric": pl.String, "verdict": pl.String})
        if plan is None:
            return dg.Output(empty, metadata={"pairs": 0, "skipped": f"the {chain.name} chain has no ab_tests.yaml"})
        tables, skipped = [], []
        distributions: dict[str, list[float]] = {}  # per-user treatment - control of the first metric
        for pair in plan.pairs:
            missing = [n for n in (pair.control, pair.treatment) if n not in metric_report]
            if missing:
                skipped.append(f"{pair.name}: metric_report {', '.join(missing)} not materialized")
                continue
            control, treatment = metric_report[pair.control], metric_report[pair.treatment]
            reason = records.not_comparable(control, treatment)
            if reason:
                skipped.append(f"{pair.name}: {reason}")
                continue
            try:
                frames = records.per_user_frame(control), records.per_user_frame(treatment)
                table = compare_models(
                    *frames,
                    plan.metrics,
                    alpha=thresholds.ab_alpha,
                    n_resamples=thresholds.ab_bootstrap_resamples,
                    primary=thresholds.ab_primary_test,
                )
            except ValueError as error:
                raise dg.Failure(f"A/B pair {pair.name}: {error}") from error
            joined = frames[0].join(frames[1], on="user_index", suffix="__t")
            metric = plan.metrics[0]
            distributions[f"{pair.name}: {metric}"] = (joined[f"{metric}__t"] - joined[metric]).to_list()
            tables.append(
                table.with_columns(
                    pl.lit(pair.name).alias("pair"),
                    pl.lit(pair.control).alias("control"),
                    pl.lit(pair.treatment).alias("treatment"),
                    pl.lit(control["split"]).alias("split"),
                )
            )
        for message in skipped:
            context.log.warning(f"A/B pair skipped: {message}")
        if not tables:  # nothing comparable materialized yet (e.g. one config run alone): not an error
            return dg.Output(empty, metadata={"pairs": 0, "skipped": dg.MetadataValue.json(skipped)})
        table = pl.concat(tables)
        markdown = publish(lake, chain.name, "ab_tests", table.select(AB_COLUMNS))
        summary = (
            table.group_by("pair", maintain_order=True)
            .agg(
                pl.col("metric").filter(pl.col("verdict") == BETTER).alias("better"),
                pl.col("metric").filter(pl.col("verdict") == WORSE).alias("worse"),
            )
            .with_columns(
                pl.when(pl.col("worse").list.len() > 0)
                .then(pl.lit(WORSE))
                .when(pl.col("better").list.len() > 0)
                .then(pl.lit(BETTER))
                .otherwise(pl.lit(NO_DIFFERENCE))
                .alias("verdict"),
                pl.col("better").list.join(", "),
                pl.col("worse").list.join(", "),
            )
        )
        return dg.Output(
            table,
            metadata={
                "pairs": summary.height,
                "alpha": thresholds.ab_alpha,
                "primary_test": thresholds.ab_primary_test,
                "verdicts": dg.MetadataValue.md(frame_markdown(summary, max_rows=100)),
                "table": dg.MetadataValue.md(markdown),
                "plot": dg.MetadataValue.md(difference_plot(table, f"{chain.name} A/B: treatment - control")),
                "per_user_differences": dg.MetadataValue.md(
                    difference_distributions(distributions, "A/B: per-user treatment - control")
                ),
                "skipped": dg.MetadataValue.json(skipped),
            },
        )

    return ab_tests


def champion_asset(chain: Chain) -> dg.AssetsDefinition:
    @chain.asset(
        "champion",
        "experiments",
        ins=chain.ins("metric_report"),
        kinds={"scipy"},
        checks={
            "champion_gate": (
                True,
                "No current report is significantly worse than its split's champion on the champion metric (paired "
                "test on per-user values, same split and data; thresholds.yaml); one row per config in the metadata.",
            )
        },
    )
    def champion(context: dg.AssetExecutionContext, lake: DataLake, metric_report: dict[str, dict]):
        """The serving model per split. Seeded with the best gate-passing report; afterwards a
        challenger replaces it only when significantly better on the champion metric (paired test,
        Holm across challengers). Keeps the promotion history and the experiment keys already judged."""
        if not metric_report:
            raise dg.Failure(
                f"no {chain.name}/metric_report partition is materialized yet: materialize some model configs first"
            )
        thresholds: Thresholds = load_thresholds()
        metric = thresholds.metric(thresholds.champion_metric, chain.dataset.protocol.primary)
        previous = records.load_champion(lake.artifacts, chain.name)
        decisions = []
        for config, report in sorted(metric_report.items()):
            current = previous.get("splits", {}).get(report.get("split"))
            champion_report = metric_report.get(current["config"]) if current else None
            try:
                decision = records.gate_decision(report, previous, champion_report, thresholds, metric)
            except ValueError as error:
                raise dg.Failure(f"champion_gate of {config}: {error}") from error
            decisions.append({"config": config, **{k: v for k, v in decision.items() if not isinstance(v, dict)}})
        try:
            state, events = records.update_champion(previous, metric_report, thresholds, metric)
        except ValueError as error:
            raise dg.Failure(f"cannot update the {chain.name} champion: {error}") from error
        for event in events:
            context.log.info(f"champion [{event['split']}]: {event['event']} {event['config']} ({event['reason']})")
        current = pl.DataFrame(
            [
                {"split": split, **{k: v for k, v in entry.items() if k != "experiment_key"}}
                for split, entry in sorted(state["splits"].items())
            ]
        )
        history = pl.DataFrame(state["history"]) if state["history"] else pl.DataFrame()
        yield dg.Output(
            state,
            metadata={
                **{f"champion/{split}": entry["config"] for split, entry in state["splits"].items()},
                "champions": dg.MetadataValue.md(frame_markdown(current) if current.height else "no champion"),
                "this_update": dg.MetadataValue.md(frame_markdown(pl.DataFrame(events)) if events else "no reports"),
                "history": dg.MetadataValue.md(frame_markdown(history, max_rows=50) if history.height else "none"),
                "promotions": sum(1 for e in events if e["event"] == "promoted"),
            },
        )
        failed = [d["config"] for d in decisions if not d["passed"]]
        passed = [d["config"] for d in decisions if d["passed"]]
        yield dg.AssetCheckResult(
            check_name="champion_gate",
            passed=not failed,
            description=(
                f"FAILED {', '.join(failed)}: significantly worse than the champion"
                if failed
                else "no config is significantly worse than the champion"
            )
            + f"; passed: {', '.join(passed) or 'none'}",
            metadata={
                "metric": metric,
                "threshold_alpha": thresholds.ab_alpha,
                "failed_configs": ", ".join(failed) or "none",
                "passed_configs": ", ".join(passed) or "none",
                "configs_checked": len(decisions),
                "decisions": dg.MetadataValue.md(frame_markdown(pl.DataFrame(decisions), max_rows=100)),
            },
        )

    return champion


class RecommendationsConfig(dg.Config):
    k: int = Field(default=50, ge=1, description="Items per user (fewer for a user with fewer unseen items).")
    diversify: str = Field(
        default="none",
        description=f"Re-ranker for artist/genre diversity: {', '.join(RERANKERS)} "
        "(core/serving/diversity.py; as spotify-engine recommend --diversify).",
    )
    max_per_artist: int = Field(
        default=DEFAULT_MAX_PER_ARTIST, ge=1, description="artist-cap: items of one artist per list."
    )
    mmr_lambda: float = Field(
        default=DEFAULT_MMR_LAMBDA, ge=0.0, le=1.0, description="mmr: weight of diversity (0: plain ranking)."
    )


def recommendations_asset(chain: Chain, configs: dg.DynamicPartitionsDefinition) -> dg.AssetsDefinition:
    @chain.asset(
        "recommendations",
        "serving",
        partitions_def=configs,
        ins=chain.ins("trained_model", "graph", "split"),
        kinds={"pytorch", "parquet"},
    )
    def recommendations(
        context: dg.AssetExecutionContext,
        config: RecommendationsConfig,
        torch_runtime: TorchRuntime,
        lake: DataLake,
        trained_model: dict,
        graph: dict,
        split: dict,
    ) -> dg.Output[pl.DataFrame]:
        """Batch inference: the config's top-k items for every user as one Parquet file (one row per
        user and rank: user id, rank, item id, the blended score it is ranked by, the model's score,
        and on chains with genres the genre score and weight), ranked as ``spotify-engine recommend``
        ranks (the genre prior n0 stored with the model), every known item of a user excluded. Read it
        without torch, e.g. DuckDB ``read_parquet``. ``diversify`` re-ranks every list for artist/genre
        diversity (default none; see ``core/serving/diversity.py``)."""
        torch_runtime.apply()
        try:
            diversify = Diversify(config.diversify, max_per_artist=config.max_per_artist, mmr_lambda=config.mmr_lambda)
            bundle = bundle_from(chain.dataset, trained_model, graph, split)
            frame = recommendation_frame(bundle, config.k, diversify=diversify)
        except (ConfigError, ValueError) as error:
            raise dg.Failure(f"{chain.name}/recommendations[{context.partition_key}]: {error}") from error
        users = frame.select(pl.first()).n_unique()
        return dg.Output(
            frame,
            metadata={
                "rows": frame.height,
                "users": users,
                "users_without_items": bundle.num_users - users,
                "k": config.k,
                "genre_prior_n0": bundle.n0,
                "genre_prior_source": bundle.n0_source,
                "columns": ", ".join(frame.columns),
                "diversify": dg.MetadataValue.json(diversify.describe(config.k)),
                "preview": dg.MetadataValue.md(frame_markdown(frame.head(10))),
                # the IO manager adds ``artifact``, this version's folder (data.parquet); CURRENT in the slot names the live one
                "slot": dg.MetadataValue.path(
                    str(lake.artifacts.slot([chain.name, "recommendations"], context.partition_key))
                ),
            },
        )

    return recommendations


def split_check(chain: Chain) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=chain.key("split"),
        name="leakage_free",
        additional_ins=chain.ins("graph"),
        blocking=True,
        description="Every split strategy's parts are disjoint (and cover the interactions where the chain requires it), "
        "and the message-passing view of the training part holds no held-out interaction.",
    )
    def leakage_free(split: dict, graph: dict) -> dg.AssetCheckResult:
        counts = chain.dataset.split_violations(from_payload(graph), split)
        return dg.AssetCheckResult(
            passed=sum(counts.values()) == 0, metadata={"violations": dg.MetadataValue.json(counts)}
        )

    return leakage_free


# ----------------------------------------------------------------------------- studies


class HpoRunConfig(dg.Config):
    n_trials: int | None = Field(default=10, ge=1, description="Trials to add in this run (None: until timeout_s).")
    timeout_s: float | None = Field(default=None, gt=0, description="Stop starting trials after this many seconds.")
    storage_url: str | None = Field(
        default=None,
        description="Optuna storage: sqlite:///path.db, journal:///path.log or a database URL shared by "
        "workers (e.g. postgresql+psycopg2://user@host:port/db: no password in run config, it is read from "
        "$SPOTIFY_ENGINE_PG_PASSWORD or $PGPASSWORD); default sqlite under optuna/ in the data lake folder ($SPOTIFY_ENGINE_DATA_LAKE).",
    )
    max_epochs: int | None = Field(default=20, ge=1, description="Epoch cap per trial (None: the config's max_epochs).")
    seed: int = Field(default=0, description="Sampler seed.")
    worker: int = Field(default=0, description="Worker id: give each parallel worker of one study its own.")
    study_name: str | None = Field(default=None, description="Default spotify-engine/<chain>/<family>.")
    pruner_startup_trials: int = Field(default=3, ge=0, description="MedianPruner: completed trials before pruning.")
    pruner_warmup_epochs: int = Field(default=2, ge=0, description="MedianPruner: epochs before a trial can be pruned.")
    multi_objective: bool = Field(
        default=False,
        description="NSGA-II over the validation primary metric (max), training seconds (min) and "
        "validation coverage@10 (max), no pruning; outputs the Pareto front. Default study name "
        "spotify-engine/<chain>/<family>/pareto.",
    )
    promote: bool = Field(
        default=False,
        description="Write the best trial's config as a promoted config (data_lake/configs/promoted/"
        "<chain>/) and register it as a new partition of the chain's trained_model and metric_report.",
    )
    promote_name: str | None = Field(
        default=None, description="Name of the promoted config (default hpo_<family>[_<study>])."
    )
    max_trial_memory_mb: float | None = Field(
        default=None,
        gt=0,
        description="Prune, before it trains, a trial whose peak-memory estimate exceeds this (MiB).",
    )
    max_trial_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Prune, before it trains, a trial whose time estimate exceeds this; calibrated "
        "by a one-epoch probe of the base config at the start of the run.",
    )


def hpo_families(dataset: Dataset) -> list[str]:
    """Partition keys: the families of the chain's search spaces (validated when a run starts, so a
    broken file fails that run with a clear message instead of the whole code location)."""
    path = hpo_lib.spaces_path(dataset)
    try:
        loaded = load_yaml(path.read_text(), path)
    except (OSError, yaml.YAMLError):
        return []
    return sorted(str(key) for key in loaded) if isinstance(loaded, dict) else []


def pareto_plot(study: optuna.Study, title: str) -> str:
    """The primary metric against training seconds of every completed trial, colored by coverage."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = {trial.number for trial in study.best_trials}
    primary, seconds, coverage = hpo_lib.objective_names(study)
    return pareto_front(
        x=[t.values[1] for t in completed],
        y=[t.values[0] for t in completed],
        color=[t.values[2] for t in completed],
        on_front=[t.number in front for t in completed],
        title=title,
        xlabel=f"{seconds} (minimize)",
        ylabel=f"{primary} (maximize)",
        color_label=f"{coverage} (maximize)",
    )


def hpo_asset(chain: Chain, families: list[str]) -> dg.AssetsDefinition:
    dataset, name = chain.dataset, chain.name

    @chain.asset(
        "hpo_study",
        "optimization",
        partitions_def=dg.StaticPartitionsDefinition(families),
        ins=chain.ins("graph", "split"),
        kinds={"optuna", "pytorch"},
    )
    def hpo_study(
        context: dg.AssetExecutionContext,
        config: HpoRunConfig,
        torch_runtime: TorchRuntime,
        lake: DataLake,
        graph: dict,
        split: dict,
    ) -> dg.Output[dict]:
        """An Optuna study of one model family of the chain (seeded TPE, median pruning on the chain's
        per-epoch validation metric), run or resumed in a shared storage: best parameters and config,
        every trial, optimization history and parameter importances; tuned on validation only. With
        ``multi_objective``: NSGA-II over the validation primary metric, training seconds and
        coverage@10 (no pruning), the Pareto front as a table and a plot. With ``promote``: the best
        trial becomes a config and partition of the chain."""
        family = context.partition_key
        try:
            space = hpo_lib.get_space(dataset, family)
            if config.n_trials is None and config.timeout_s is None:
                raise hpo_lib.HpoError("give n_trials or timeout_s (or both)")
            if config.promote and config.multi_objective:
                raise hpo_lib.HpoError(
                    "promote needs a single-objective study (a Pareto front has no single best trial)"
                )
            url = config.storage_url or f"sqlite:///{lake.path / 'optuna' / 'studies.db'}"
            study = hpo_lib.open_study(
                dataset,
                family,
                url,
                seed=config.seed,
                worker=config.worker,
                study_name=config.study_name,
                pruner_startup_trials=config.pruner_startup_trials,
                pruner_warmup_epochs=config.pruner_warmup_epochs,
                multi_objective=config.multi_objective,
            )
            promote_name = config.promote_name or hpo_lib.promoted_name(dataset, family, study.study_name)
            if config.promote:  # a bad or taken name fails before any trial
                dataset.registry.check_promotable(promote_name, study.study_name, family, lake.path)
        except (ConfigError, hpo_lib.HpoError) as error:
            raise dg.Failure(f"{name}/hpo_study[{family}]: {error}") from error
        torch_runtime.apply()
        data = hpo_lib.StudyData(dataset=dataset, graph=from_payload(graph), split=split[space.base.split])
        before = len(study.get_trials(deepcopy=False))
        context.log.info(
            f"study {study.study_name!r} in {hpo_lib.redact(url)}: {before} trials so far; adding "
            f"{config.n_trials or 'as many as fit'} trials, <= {config.max_epochs or 'config'} epochs each; search space "
            f"{sorted(space.params)} on base config {space.base.name!r}"
        )
        seconds_per_unit = None
        if config.max_trial_seconds is not None and space.base.trainable:
            probe = space.trial_config({}, f"{family}_probe")
            seconds_per_unit = trial_budget.calibrate_seconds(dataset, probe, data.graph, data.split)
            context.log.info(f"time probe: one epoch of {space.base.name!r}: {seconds_per_unit:.3g} s per work unit")
        limits = hpo_lib.TrialLimits(
            config.max_trial_memory_mb, config.max_trial_seconds if seconds_per_unit else None, seconds_per_unit
        )
        hpo_lib.run_study(
            study,
            space,
            data,
            config.n_trials,
            config.timeout_s,
            config.max_epochs,
            log=context.log.info,
            limits=limits,
            worker=config.worker,
        )
        trials = hpo_lib.trials_table(study)
        counts = dict(pl.DataFrame(trials)["state"].value_counts().iter_rows()) if trials else {}
        metadata = {
            "storage": hpo_lib.redact(url),
            "study_name": study.study_name,
            "trials_total": len(trials),
            "trials_this_run": len(trials) - before,
            "trial_counts": dg.MetadataValue.json(counts),
        }
        output = {
            "chain": name,
            "family": family,
            "study_name": study.study_name,
            "storage": hpo_lib.redact(url),
            "base_config": space.base.model_dump(),
            "trials": trials,
            "trial_counts": counts,
            "trials_this_run": len(trials) - before,
        }
        if config.multi_objective:
            front = hpo_lib.pareto_table(study)
            if not front:
                raise dg.Failure(f"{name}/hpo_study[{family}]: no trial completed yet ({counts}); run more trials")
            output.update(
                multi_objective=True,
                pareto_front=front,
                objectives=dict(zip(hpo_lib.objective_names(study), hpo_lib.MULTI_DIRECTIONS)),
            )
            metadata.update(
                objectives=dg.MetadataValue.json(output["objectives"]),
                pareto_size=len(front),
                pareto_trials=dg.MetadataValue.json([row["number"] for row in front]),
                pareto_front=dg.MetadataValue.md(frame_markdown(pl.DataFrame(front), max_rows=50)),
                pareto_plot=dg.MetadataValue.md(pareto_plot(study, f"{name} {family}: Pareto front (validation)")),
                trials=dg.MetadataValue.md(frame_markdown(pl.DataFrame(trials), max_rows=50)),
            )
            return dg.Output(output, metadata=metadata)
        try:
            best = study.best_trial
        except ValueError as error:
            raise dg.Failure(
                f"{name}/hpo_study[{family}]: no trial completed yet ({counts}); run more trials"
            ) from error
        tuned = hpo_lib.best_config(study, space)
        best_yaml = hpo_lib.write_best_yaml(lake.path / "optuna" / name / f"{tuned.name}.yaml", tuned, study)
        importances = hpo_lib.param_importances(study)
        objective = hpo_lib.objective_names(study)[0]
        context.log.info(
            f"best trial {best.number}: {objective} {best.value:.4f} with {best.params}; written to {best_yaml}"
        )
        promoted = None
        if config.promote:
            try:
                promoted, promoted_path = hpo_lib.promote_best(dataset, study, space, url, lake.path, promote_name)
                _, added = register_configs(chain, context.instance, lake.path)
            except ConfigError as error:
                raise dg.Failure(f"{name}/hpo_study[{family}]: {error}") from error
            context.log.info(
                f"promoted trial {best.number} as config {promoted.name!r} ({promoted_path}); "
                f"{'new' if promoted.name in added else 'existing'} {chain.partitions} partition: materialize "
                f"{name}/trained_model and {name}/metric_report with --partition {promoted.name}"
            )
            metadata.update(
                promoted_config=promoted.name,
                promoted_asset=dg.MetadataValue.asset(chain.key("trained_model")),
                promoted_config_yaml=dg.MetadataValue.path(str(promoted_path)),
            )
        output.update(
            objective=objective,
            best_trial=best.number,
            best_value=float(best.value),
            best_params=dict(best.params),
            best_config=tuned.model_dump(),
            best_config_yaml=str(best_yaml),
            importances=importances,
            promoted_config=promoted.name if promoted else None,
        )
        table = pl.DataFrame(trials).sort("value", descending=True, nulls_last=True)
        metadata.update(
            best_value=metric_value(best.value),
            best_trial=best.number,
            best_params=dg.MetadataValue.json(tidy(dict(best.params), PROVENANCE_DIGITS)),
            best_config_yaml=dg.MetadataValue.path(str(best_yaml)),
            trials=dg.MetadataValue.md(frame_markdown(table, max_rows=50)),
            optimization_history=dg.MetadataValue.md(
                history_plot(
                    *hpo_lib.history_points(study),
                    [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))],
                    f"{name} {family}: optimization history",
                    objective,
                )
            ),
        )
        if config.max_trial_memory_mb is not None or config.max_trial_seconds is not None:
            metadata["trial_limits"] = dg.MetadataValue.json(
                {
                    "max_trial_memory_mb": config.max_trial_memory_mb,
                    "max_trial_seconds": config.max_trial_seconds,
                    "pruned_before_training": sum(bool(t["pruned_by"]) for t in trials),
                }
            )
        if importances:
            metadata["param_importances"] = dg.MetadataValue.md(
                count_bars(
                    {k: round(v, 3) for k, v in importances.items()},
                    f"{family}: parameter importances (Optuna)",
                    "importance",
                )
            )
        return dg.Output(output, metadata=metadata)

    return hpo_study
