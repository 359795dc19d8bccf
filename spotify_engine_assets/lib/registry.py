"""The full model-config registry: ``configs/models.yaml`` plus configs promoted into the data lake.

A promoted config (the best trial of a hyperparameter study, written by ``hpo_study`` with
``promote: true``) is one file ``<data lake>/configs/promoted/<name>.yaml``, written atomically::

    source:                      # where the config comes from
      family: lightgcn
      study_name: spotify-engine/lightgcn
      trial: 7
      objective: valid_recall@10
      value: 0.1234              # the trial's validation objective
      storage: sqlite:///...     # password redacted
      promoted_at: '2026-01-01T00:00:00+00:00'
    config:                      # exactly one entry, the models.yaml schema
      hpo_lightgcn:              # the key is the config (and partition) name = the file's stem
        model: lightgcn
        ...

Every file is validated like ``models.yaml`` (unknown fields, wrong types and out-of-range
values fail naming the file, the config and the field); a promoted name must be a valid
partition key, match its file's stem and differ from every ``models.yaml`` name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .artifacts import atomic_write_bytes
from .configs import ConfigError, ModelConfig, _read_yaml, default_registry, registry_from_mapping
from .paths import data_lake_root

PROMOTED_SUBDIR = ("configs", "promoted")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$")
ORIGIN_REGISTRY = "models.yaml"
ORIGIN_STUDY = "study"


class PromotionSource(BaseModel):
    """The study trial a promoted config comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    study_name: str
    trial: int = Field(ge=0)
    objective: str
    value: float
    storage: str
    promoted_at: str


@dataclass(frozen=True)
class PromotedConfig:
    config: ModelConfig
    source: PromotionSource
    path: Path


def promoted_dir(lake_root: Path | None = None) -> Path:
    return Path(lake_root or data_lake_root()).joinpath(*PROMOTED_SUBDIR)


def check_name(name: str, where: str) -> None:
    """A promoted name must be a plain partition key and no ``models.yaml`` name."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{where}: config name {name!r} is not a valid partition key (letters, digits, '_' and '-', "
            "starting with a letter or digit, at most 100 characters)"
        )
    if name in default_registry():
        raise ConfigError(f"{where}: config name {name!r} collides with a models.yaml config; choose another name")


def load_promoted_file(path: Path) -> PromotedConfig:
    """One promoted config file, validated (errors name the file)."""
    loaded = _read_yaml(path)
    if set(loaded) != {"source", "config"}:
        raise ConfigError(f"{path}: expected exactly the keys 'source' and 'config', got {sorted(map(str, loaded))}")
    entries = loaded["config"]
    if not isinstance(entries, dict) or len(entries) != 1:
        raise ConfigError(f"{path}: 'config' must map exactly one config name to its settings")
    name = str(next(iter(entries)))
    if name != path.stem:
        raise ConfigError(f"{path}: config name {name!r} must equal the file name {path.stem!r}")
    check_name(name, str(path))
    config = registry_from_mapping(entries, path)[name]
    if not isinstance(loaded["source"], dict):
        raise ConfigError(f"{path}: 'source' must be a mapping")
    try:
        source = PromotionSource(**loaded["source"])
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: source: {problems}") from None
    return PromotedConfig(config=config, source=source, path=path)


def load_promoted(lake_root: Path | None = None) -> dict[str, PromotedConfig]:
    """Every promoted config of the data lake (none when the folder does not exist)."""
    folder = promoted_dir(lake_root)
    if not folder.is_dir():
        return {}
    promoted = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue  # a temporary file of an atomic write in progress
        if path.suffix != ".yaml":
            raise ConfigError(f"{path}: unexpected file in {folder} (promoted configs are <name>.yaml files)")
        entry = load_promoted_file(path)
        promoted[entry.config.name] = entry
    return promoted


def full_registry(lake_root: Path | None = None) -> dict[str, ModelConfig]:
    """``models.yaml`` and the data lake's promoted configs: every partition of ``trained_model``."""
    return {**default_registry(), **{name: entry.config for name, entry in load_promoted(lake_root).items()}}


def registry_rows(lake_root: Path | None = None) -> list[dict]:
    """One row per config of the full registry: name, model, split, origin and source."""
    rows = [
        {"config": name, "model": config.model, "split": config.split, "origin": ORIGIN_REGISTRY,
         "study": None, "trial": None, "source": ORIGIN_REGISTRY}
        for name, config in sorted(default_registry().items())
    ]
    for name, entry in load_promoted(lake_root).items():
        rows.append(
            {"config": name, "model": entry.config.model, "split": entry.config.split, "origin": ORIGIN_STUDY,
             "study": entry.source.study_name, "trial": entry.source.trial, "source": str(entry.path)}
        )
    return rows


def check_promotable(name: str, study_name: str, family: str, lake_root: Path | None = None) -> Path:
    """The file a promotion of ``study_name`` under ``name`` would write; a ``ConfigError`` when
    the name is invalid, a ``models.yaml`` name or already promoted from another study."""
    path = promoted_dir(lake_root) / f"{name}.yaml"
    check_name(name, f"promoting study {study_name!r}")
    if path.exists():
        existing = load_promoted_file(path)
        if (existing.source.study_name, existing.source.family) != (study_name, family):
            raise ConfigError(
                f"{path}: config name {name!r} is already promoted from study {existing.source.study_name!r} "
                f"(family {existing.source.family}); choose another name"
            )
    return path


def write_promoted(config: ModelConfig, source: PromotionSource, lake_root: Path | None = None) -> Path:
    """Write ``config`` as a promoted config (atomically). Re-promoting the same study's best
    under its name replaces the file; a name taken by ``models.yaml`` or by another study fails."""
    path = check_promotable(config.name, source.study_name, source.family, lake_root)
    text = "# Promoted by the hpo_study asset: a partition of trained_model (see lib/registry.py).\n"
    text += yaml.safe_dump(
        {"source": source.model_dump(), "config": {config.name: config.model_dump(exclude={"name"})}}, sort_keys=False
    )
    atomic_write_bytes(path, text.encode())
    load_promoted_file(path)  # what was written reads back as a valid config
    return path
