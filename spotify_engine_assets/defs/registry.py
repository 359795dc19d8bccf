"""The model-config registry as Dagster state: the ``model_configs`` dynamic partitions of
``trained_model`` and ``metric_report``, and the ``model_registry`` asset that keeps them in step
with ``configs/models.yaml`` and the configs promoted from hyperparameter studies
(``<data lake>/configs/promoted/``, see ``lib/registry.py``).

Materializing ``model_registry`` validates the whole registry and adds every missing config as a
partition (it never deletes one: a partition whose config was removed fails its runs with the
list of known configs). The runner's data stage and ``make smoke`` materialize it before any
model runs; ``hpo_study`` with ``promote: true`` registers its promoted config itself.
"""


from pathlib import Path

import dagster as dg
import polars as pl

from ..lib import registry as registry_lib
from ..lib.configs import ConfigError
from ..lib.paths import source_version
from ..lib.plots import frame_markdown
from .resources import DataLake

MODEL_CONFIGS = "model_configs"
model_configs = dg.DynamicPartitionsDefinition(name=MODEL_CONFIGS)


def register_model_configs(instance: dg.DagsterInstance, lake_root: Path | None = None) -> tuple[list[str], list[str]]:
    """Validate the full registry and add its missing names as ``model_configs`` partitions.
    Returns (every config name, the names added now)."""
    names = sorted(registry_lib.full_registry(lake_root))
    known = set(instance.get_dynamic_partitions(MODEL_CONFIGS))
    added = [name for name in names if name not in known]
    if added:
        instance.add_dynamic_partitions(MODEL_CONFIGS, added)
    return names, added


def promotion_metadata(lake_root: Path, name: str) -> dict:
    """For a promoted config: its source study (name, trial, objective, redacted storage) and a
    link to the ``hpo_study`` partition that produced it; {} for a models.yaml config."""
    entry = registry_lib.load_promoted(lake_root).get(name)
    if entry is None:
        return {"config_origin": registry_lib.ORIGIN_REGISTRY}
    source = entry.source
    return {
        "config_origin": registry_lib.ORIGIN_STUDY,
        "source_study": source.study_name,
        "source_trial": source.trial,
        "source_objective": f"{source.objective} {source.value:.4f} (validation)",
        "source_storage": source.storage,
        "source_asset": dg.MetadataValue.asset(dg.AssetKey("hpo_study")),
        "source_partition": source.family,
        "promoted_config": dg.MetadataValue.path(str(entry.path)),
    }


@dg.asset(
    key="model_registry",
    group_name="training",
    kinds={"yaml"},
    code_version=source_version(registry_lib),
)
def model_registry(context: dg.AssetExecutionContext, lake: DataLake) -> dg.Output[dict]:
    """Every model config (``models.yaml`` and configs promoted from studies), validated, each a
    partition of ``trained_model`` and ``metric_report``; adds missing partitions, never deletes."""
    try:
        rows = registry_lib.registry_rows(lake.path)
        names, added = register_model_configs(context.instance, lake.path)
    except ConfigError as error:
        raise dg.Failure(f"model_registry: {error}") from error
    stale = sorted(set(context.instance.get_dynamic_partitions(MODEL_CONFIGS)) - set(names))
    if stale:
        context.log.warning(f"partitions without a config (kept; their runs fail): {', '.join(stale)}")
    context.log.info(f"{len(names)} model configs; added as partitions: {', '.join(added) or 'none'}")
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
