"""Hyperparameter optimization: one Optuna study per model family, run or resumed on demand.

``hpo_study`` (partition = model family of ``configs/search_spaces.yaml``) trains trials on the
training graph of the family's split, scored on validation Recall@10 only. The study lives in
an Optuna storage (default ``sqlite:///<data lake>/optuna/studies.db``; any database URL, or
``journal:///file``), so a killed run resumes with its finished trials and several workers can
share one study. The best parameters are written as a one-entry registry file
``<data lake>/optuna/<family>_tuned.yaml`` (the ``models.yaml`` schema) to promote by hand.

With ``promote: true`` the best trial's config also becomes a promoted config
``<data lake>/configs/promoted/hpo_<family>[_<study>].yaml`` and a new ``model_configs`` partition,
so ``trained_model``/``metric_report`` train, evaluate, gate and compare it like any config (its
``trained_model`` metadata links back to this study). ``max_trial_memory_mb`` and
``max_trial_seconds`` prune a trial whose estimate (``lib/trial_budget.py``) exceeds them before it
trains; the seconds estimate is calibrated by a one-epoch probe of the base config.

With ``multi_objective: true`` the run is an NSGA-II study (study ``spotify-engine/<family>/pareto``)
of validation NDCG@10 (max), training seconds (min) and validation coverage@10 (max), without
pruning; the output is the Pareto front (table and plot), and no tuned registry file is written.
"""

import dagster as dg
import matplotlib.pyplot as plt
import optuna
import polars as pl
import yaml
from pydantic import Field

from ..lib import hpo as hpo_lib
from ..lib import registry as registry_lib
from ..lib import trial_budget
from ..lib import training as training_lib
from ..lib.configs import ConfigError
from ..lib.graph import LISTENS, from_payload, message_passing_graph
from ..lib.paths import configs_dir, source_version
from ..lib.plots import count_bars, figure_markdown, frame_markdown, pareto_front
from .registry import MODEL_CONFIGS, register_model_configs
from .resources import DataLake, TorchRuntime


def _families() -> list[str]:
    """Partition keys: the families named in search_spaces.yaml (validated when a run starts, so a
    broken file fails that run with a clear message instead of the whole code location)."""
    try:
        loaded = yaml.safe_load((configs_dir() / "search_spaces.yaml").read_text())
        return sorted(str(key) for key in loaded) if isinstance(loaded, dict) and loaded else ["gat_basic", "gat_enhanced", "lightgcn"]
    except (OSError, yaml.YAMLError):
        return ["gat_basic", "gat_enhanced", "lightgcn"]


model_families = dg.StaticPartitionsDefinition(_families())
HPO_VERSION = source_version(hpo_lib, training_lib, trial_budget)


class HpoRunConfig(dg.Config):
    n_trials: int | None = Field(default=10, description="Trials to add in this run (None: until timeout_s).")
    timeout_s: float | None = Field(default=None, description="Stop starting trials after this many seconds.")
    storage_url: str | None = Field(
        default=None,
        description="Optuna storage: sqlite:///path.db, journal:///path.log or a database URL (e.g. "
        "postgresql://user:password@host/db) shared by workers; default sqlite under <data lake>/optuna/.",
    )
    max_epochs: int | None = Field(default=20, description="Epoch cap per trial (None: the config's max_epochs).")
    seed: int = Field(default=0, description="Sampler seed.")
    worker: int = Field(default=0, description="Worker id: give each parallel worker of one study its own.")
    study_name: str | None = Field(default=None, description="Default spotify-engine/<family>.")
    pruner_startup_trials: int = Field(default=3, ge=0, description="MedianPruner: completed trials before pruning.")
    pruner_warmup_epochs: int = Field(default=2, ge=0, description="MedianPruner: epochs before a trial can be pruned.")
    multi_objective: bool = Field(
        default=False,
        description="NSGA-II over validation NDCG@10 (max), training seconds (min) and validation coverage@10 (max), "
        "no pruning; outputs the Pareto front. Default study name spotify-engine/<family>/pareto.",
    )
    promote: bool = Field(
        default=False,
        description="Write the best trial's config as a promoted config (data_lake/configs/promoted/) and register "
        "it as a new model_configs partition of trained_model and metric_report.",
    )
    promote_name: str | None = Field(
        default=None, description="Name of the promoted config (default hpo_<family>, or hpo_<family>_<study>)."
    )
    max_trial_memory_mb: float | None = Field(
        default=None, description="Prune, before it trains, a trial whose peak-memory estimate exceeds this (MiB)."
    )
    max_trial_seconds: float | None = Field(
        default=None,
        description="Prune, before it trains, a trial whose time estimate exceeds this; calibrated by a one-epoch "
        "probe of the base config at the start of the run.",
    )


def history_plot(study: optuna.Study, title: str) -> str:
    """Validation objective of every completed trial and the best so far (optimization history)."""
    numbers, values, best = hpo_lib.history_points(study)
    pruned = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))]
    fig, axis = plt.subplots(figsize=(6, 3.2))
    axis.scatter(numbers, values, s=14, color="tab:blue", label="completed trial")
    axis.step(numbers, best, where="post", color="tab:red", label="best so far")
    for number in pruned:
        axis.axvline(number, color="0.85", lw=0.8, zorder=0)
    axis.set_xlabel("trial (grey lines: pruned)")
    axis.set_ylabel(hpo_lib.OBJECTIVE)
    axis.set_title(title)
    axis.legend(fontsize=7)
    return figure_markdown(fig, title)


def pareto_plot(study: optuna.Study, title: str) -> str:
    """NDCG@10 against training seconds of every completed trial, colored by coverage@10, the
    Pareto front highlighted."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = {trial.number for trial in study.best_trials}
    ndcg, seconds, coverage = hpo_lib.MULTI_OBJECTIVES
    return pareto_front(
        x=[t.values[1] for t in completed],
        y=[t.values[0] for t in completed],
        color=[t.values[2] for t in completed],
        on_front=[t.number in front for t in completed],
        title=title,
        xlabel=f"{seconds} (minimize)",
        ylabel=f"{ndcg} (maximize)",
        color_label=f"{coverage} (maximize)",
    )


def _pareto_output(context, family: str, study: optuna.Study, space, url: str, before: int) -> dg.Output[dict]:
    trials = hpo_lib.trials_table(study)
    states = pl.DataFrame(trials)["state"].value_counts().to_dicts() if trials else []
    counts = {row["state"]: int(row["count"]) for row in states}
    front = hpo_lib.pareto_table(study)
    if not front:
        raise dg.Failure(f"hpo_study[{family}]: no trial completed yet ({counts}); run more trials")
    context.log.info(f"Pareto front: {len(front)} trial(s) {[row['number'] for row in front]} of {len(trials)}")
    output = {
        "family": family,
        "study_name": study.study_name,
        "storage": hpo_lib.redact(url),
        "multi_objective": True,
        "objectives": dict(zip(hpo_lib.MULTI_OBJECTIVES, hpo_lib.MULTI_DIRECTIONS)),
        "pareto_front": front,
        "base_config": space.base.model_dump(),
        "trials": trials,
        "trial_counts": counts,
        "trials_this_run": len(trials) - before,
    }
    metadata = {
        "storage": hpo_lib.redact(url),
        "study_name": study.study_name,
        "objectives": dg.MetadataValue.json(output["objectives"]),
        "pareto_size": len(front),
        "pareto_trials": dg.MetadataValue.json([row["number"] for row in front]),
        "trials_total": len(trials),
        "trials_this_run": len(trials) - before,
        "trial_counts": dg.MetadataValue.json(counts),
        "pareto_front": dg.MetadataValue.md(frame_markdown(pl.DataFrame(front), max_rows=50)),
        "pareto_plot": dg.MetadataValue.md(pareto_plot(study, f"{family}: Pareto front (validation)")),
        "trials": dg.MetadataValue.md(frame_markdown(pl.DataFrame(trials), max_rows=50)),
    }
    return dg.Output(output, metadata=metadata)


@dg.asset(
    key="hpo_study",
    partitions_def=model_families,
    group_name="optimization",
    kinds={"optuna", "pytorch"},
    code_version=HPO_VERSION,
)
def hpo_study(
    context: dg.AssetExecutionContext,
    config: HpoRunConfig,
    torch_runtime: TorchRuntime,
    lake: DataLake,
    listening_graph: dict,
    interaction_splits: dict,
) -> dg.Output[dict]:
    """An Optuna study of one model family (seeded TPE, median pruning on per-epoch validation
    Recall@10), run or resumed in a shared storage; best parameters and config, every trial,
    optimization history and parameter importances. Tuned on validation only. With
    ``multi_objective``: NSGA-II over validation NDCG@10, training seconds and validation
    coverage@10 (no pruning); the Pareto front as a table and a plot."""
    family = context.partition_key
    try:
        space = hpo_lib.get_space(family)
        if config.max_epochs is not None and config.max_epochs < 1:
            raise hpo_lib.HpoError(f"max_epochs must be >= 1, got {config.max_epochs}")
        if config.n_trials is None and config.timeout_s is None:
            raise hpo_lib.HpoError("give n_trials or timeout_s (or both)")
        if config.n_trials is not None and config.n_trials < 1:
            raise hpo_lib.HpoError(f"n_trials must be >= 1, got {config.n_trials}")
        if config.timeout_s is not None and config.timeout_s <= 0:
            raise hpo_lib.HpoError(f"timeout_s must be > 0, got {config.timeout_s}")
        for name in ("max_trial_memory_mb", "max_trial_seconds"):
            if getattr(config, name) is not None and getattr(config, name) <= 0:
                raise hpo_lib.HpoError(f"{name} must be > 0, got {getattr(config, name)}")
        if config.promote and config.multi_objective:
            raise hpo_lib.HpoError("promote needs a single-objective study (a Pareto front has no single best trial)")
        url = config.storage_url or f"sqlite:///{lake.path / 'optuna' / 'studies.db'}"
        study = hpo_lib.open_study(
            family, url, seed=config.seed, worker=config.worker, study_name=config.study_name,
            pruner_startup_trials=config.pruner_startup_trials, pruner_warmup_epochs=config.pruner_warmup_epochs,
            multi_objective=config.multi_objective,
        )
        if config.promote:  # a bad or taken name fails before any trial
            promote_name = config.promote_name or hpo_lib.promoted_name(family, study.study_name)
            registry_lib.check_promotable(promote_name, study.study_name, family, lake.path)
    except (ConfigError, hpo_lib.HpoError) as error:
        raise dg.Failure(f"hpo_study[{family}]: {error}") from error

    torch_runtime.apply()
    data = from_payload(listening_graph)
    split = interaction_splits[space.base.split]
    view = message_passing_graph(data, split["train"])
    study_data = hpo_lib.StudyData(
        view=view, valid_pairs=data[LISTENS].edge_index[:, split["valid"]], graph=data, train_index=split["train"]
    )
    before = len(study.get_trials(deepcopy=False))
    context.log.info(
        f"study {study.study_name!r} in {hpo_lib.redact(url)}: {before} trials so far; adding "
        f"{config.n_trials or 'as many as fit'} trials{f' within {config.timeout_s:.0f} s' if config.timeout_s else ''}, "
        f"<= {config.max_epochs or 'config'} epochs each; search space {sorted(space.params)} on base config {space.base.name!r}"
    )
    seconds_per_unit = None
    if config.max_trial_seconds is not None:
        seconds_per_unit = trial_budget.calibrate_seconds(space.base, view, study_data.valid_pairs)
        context.log.info(f"time probe: one epoch of {space.base.name!r}: {seconds_per_unit:.3g} s per work unit")
    limits = hpo_lib.TrialLimits(config.max_trial_memory_mb, config.max_trial_seconds, seconds_per_unit)
    hpo_lib.run_study(
        study, space, study_data, config.n_trials, config.timeout_s, config.max_epochs, log=context.log.info, limits=limits
    )
    if config.multi_objective:
        return _pareto_output(context, family, study, space, url, before)

    trials = hpo_lib.trials_table(study)
    states = pl.DataFrame(trials)["state"].value_counts().to_dicts() if trials else []
    counts = {row["state"]: int(row["count"]) for row in states}
    try:
        best = study.best_trial
    except ValueError as error:
        raise dg.Failure(f"hpo_study[{family}]: no trial completed yet ({counts}); run more trials") from error
    tuned = hpo_lib.best_config(study, space)
    best_yaml = hpo_lib.write_best_yaml(lake.path / "optuna" / f"{tuned.name}.yaml", tuned, study)
    importances = hpo_lib.param_importances(study)
    context.log.info(f"best trial {best.number}: {hpo_lib.OBJECTIVE} {best.value:.4f} with {best.params}; written to {best_yaml}")
    promoted = None
    if config.promote:
        try:
            promoted, promoted_path = hpo_lib.promote_best(study, space, url, lake.path, promote_name)
            _, added = register_model_configs(context.instance, lake.path)
        except ConfigError as error:
            raise dg.Failure(f"hpo_study[{family}]: {error}") from error
        context.log.info(
            f"promoted trial {best.number} as config {promoted.name!r} ({promoted_path}); "
            f"{'new' if promoted.name in added else 'existing'} {MODEL_CONFIGS} partition: materialize "
            f"trained_model and metric_report with --partition {promoted.name}"
        )

    output = {
        "family": family,
        "study_name": study.study_name,
        "storage": hpo_lib.redact(url),
        "objective": hpo_lib.OBJECTIVE,
        "best_trial": best.number,
        "best_value": float(best.value),
        "best_params": dict(best.params),
        "best_config": tuned.model_dump(),
        "best_config_yaml": str(best_yaml),
        "base_config": space.base.model_dump(),
        "trials": trials,
        "trial_counts": counts,
        "trials_this_run": len(trials) - before,
        "importances": importances,
        "promoted_config": promoted.name if promoted else None,
    }
    table = pl.DataFrame(trials).sort("value", descending=True, nulls_last=True)
    metadata = {
        "best_value": float(best.value),
        "best_trial": best.number,
        "best_params": dg.MetadataValue.json(dict(best.params)),
        "best_config_yaml": dg.MetadataValue.path(str(best_yaml)),
        "storage": hpo_lib.redact(url),
        "study_name": study.study_name,
        "trials_total": len(trials),
        "trials_this_run": len(trials) - before,
        "trial_counts": dg.MetadataValue.json(counts),
        "trials": dg.MetadataValue.md(frame_markdown(table, max_rows=50)),
        "optimization_history": dg.MetadataValue.md(history_plot(study, f"{family}: optimization history")),
    }
    if promoted is not None:
        metadata.update(
            promoted_config=promoted.name,
            promoted_partition=f"trained_model[{promoted.name}] and metric_report[{promoted.name}]",
            promoted_asset=dg.MetadataValue.asset(dg.AssetKey("trained_model")),
            promoted_config_yaml=dg.MetadataValue.path(str(promoted_path)),
        )
    if config.max_trial_memory_mb is not None or config.max_trial_seconds is not None:
        metadata["trial_limits"] = dg.MetadataValue.json(
            {"max_trial_memory_mb": config.max_trial_memory_mb, "max_trial_seconds": config.max_trial_seconds,
             "pruned_before_training": sum(bool(t["pruned_by"]) for t in trials)}
        )
    if importances:
        metadata["param_importances"] = dg.MetadataValue.md(
            count_bars({k: round(v, 3) for k, v in importances.items()}, f"{family}: parameter importances (fANOVA)", "importance")
        )
    return dg.Output(output, metadata=metadata)


defs = dg.Definitions(assets=[hpo_study])
