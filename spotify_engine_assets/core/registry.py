"""A chain's model-config registry: its file ``configs/<chain>/models.yaml`` plus the configs
promoted into the data lake from hyperparameter studies.

A promoted config (the best trial of a study, written by the chain's ``hpo_study`` with
``promote: true``) is one file ``<data lake>/configs/promoted/<chain>/<name>.yaml``, written
atomically::

    source:                      # where the config comes from
      family: lightgcn
      study_name: spotify-engine/listening/lightgcn
      trial: 7
      objective: valid_recall@10
      value: 0.1234              # the trial's validation objective
      storage: sqlite:///...     # password redacted
      promoted_at: '2026-01-01T00:00:00+00:00'
    config:                      # exactly one entry, the models.yaml schema
      hpo_lightgcn:              # the key is the config (and partition) name = the file's stem
        model: lightgcn
        ...

Every file is validated like the registry file (unknown fields, wrong types and out-of-range
values fail naming the file, the config and the field); a promoted name must be a valid partition
key, match its file's stem and differ from every name of the registry file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ConfigError, ModelConfig, configs_from_mapping, read_yaml, update_config, validation_problems
from .storage.artifacts import atomic_write_bytes
from .storage.paths import UnsafeNameError, data_lake_root, safe_name

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


class Registry:
    """The named configs of one chain (``name`` prefixes its partitions and promoted folder).

    Args:
        chain: The chain's name.
        path: Its registry file.
        strategies: The chain's split strategies; a config's ``split`` must be one (default: the first).
    """

    def __init__(self, chain: str, path: Path, strategies: tuple[str, ...]) -> None:
        self.chain, self.path, self.strategies = chain, Path(path), tuple(strategies)

    def load(self, path: Path | None = None) -> dict[str, ModelConfig]:
        """Every config of ``path`` (default the registry file), validated, its split filled in."""
        path = Path(path or self.path)
        return self._configs(read_yaml(path), path)

    def _configs(self, mapping: dict, path: Path) -> dict[str, ModelConfig]:
        """The configs of ``mapping`` (read from ``path``), validated, an unset split filled in, every split checked."""
        registry = configs_from_mapping(mapping, path)
        registry = {
            name: config if config.split else update_config(config, split=self.strategies[0])
            for name, config in registry.items()
        }
        for name, config in registry.items():
            if config.split not in self.strategies:
                raise ConfigError(
                    f"{path}: config {name!r}: split: {config.split!r} is not a split strategy of the {self.chain} "
                    f"chain ({', '.join(self.strategies)})"
                )
        return registry

    @functools.cached_property
    def base(self) -> dict[str, ModelConfig]:
        """The registry file's configs (read once)."""
        return self.load()

    def full(self, lake_root: Path | None = None) -> dict[str, ModelConfig]:
        """The registry file and the data lake's promoted configs: every partition of the chain's models."""
        return {**self.base, **{name: entry.config for name, entry in self.promoted(lake_root).items()}}

    def get(self, name: str, registry: dict[str, ModelConfig] | None = None) -> ModelConfig:
        """The config named ``name``; an unknown name lists the known ones. Without ``registry``:
        the registry file, then the configs promoted into the data lake."""
        if registry is None:
            registry = self.base if name in self.base else self.full()
        if name not in registry:
            raise ConfigError(
                f"unknown {self.chain} model config {name!r}; known configs: {', '.join(sorted(registry))}"
            )
        return registry[name]

    # ------------------------------------------------------------------------------ promotion
    def promoted_dir(self, lake_root: Path | None = None) -> Path:
        return Path(lake_root or data_lake_root()) / "configs" / "promoted" / self.chain

    def check_name(self, name: str, where: str) -> None:
        """A promoted name must be a plain partition key and no name of the registry file."""
        try:
            safe_name(name, "config name")
        except UnsafeNameError as error:
            raise ConfigError(f"{where}: {error}") from None
        if name in self.base:
            raise ConfigError(
                f"{where}: config name {name!r} collides with a {self.path.name} config; choose another name"
            )

    def load_promoted_file(self, path: Path) -> PromotedConfig:
        """One promoted config file, validated (errors name the file)."""
        loaded = read_yaml(path)
        if set(loaded) != {"source", "config"}:
            raise ConfigError(
                f"{path}: expected exactly the keys 'source' and 'config', got {sorted(map(str, loaded))}"
            )
        entries = loaded["config"]
        if not isinstance(entries, dict) or len(entries) != 1:
            raise ConfigError(f"{path}: 'config' must map exactly one config name to its settings")
        name = str(next(iter(entries)))
        if name != path.stem:
            raise ConfigError(f"{path}: config name {name!r} must equal the file name {path.stem!r}")
        self.check_name(name, str(path))
        config = self._configs(entries, path)[name]
        if not isinstance(loaded["source"], dict):
            raise ConfigError(f"{path}: 'source' must be a mapping")
        try:
            source = PromotionSource(**loaded["source"])
        except ValidationError as error:
            raise ConfigError(f"{path}: source: {validation_problems(error)}") from None
        return PromotedConfig(config=config, source=source, path=path)

    def promoted(self, lake_root: Path | None = None) -> dict[str, PromotedConfig]:
        """Every promoted config of the data lake (none when the folder does not exist)."""
        folder = self.promoted_dir(lake_root)
        if not folder.is_dir():
            return {}
        promoted = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue  # a temporary file of an atomic write in progress
            if path.suffix != ".yaml":
                raise ConfigError(f"{path}: unexpected file in {folder} (promoted configs are <name>.yaml files)")
            entry = self.load_promoted_file(path)
            promoted[entry.config.name] = entry
        return promoted

    def rows(self, lake_root: Path | None = None) -> list[dict]:
        """One row per config: name, model, split, origin and source."""
        rows = [
            (name, config, ORIGIN_REGISTRY, None, None, ORIGIN_REGISTRY) for name, config in sorted(self.base.items())
        ]
        rows += [
            (name, entry.config, ORIGIN_STUDY, entry.source.study_name, entry.source.trial, str(entry.path))
            for name, entry in self.promoted(lake_root).items()
        ]
        return [
            {
                "config": name,
                "model": config.model,
                "split": config.split,
                "origin": origin,
                "study": study,
                "trial": trial,
                "source": source,
            }
            for name, config, origin, study, trial, source in rows
        ]

    def check_promotable(self, name: str, study_name: str, family: str, lake_root: Path | None = None) -> Path:
        """The file a promotion of ``study_name`` under ``name`` would write; a ``ConfigError`` when
        the name is invalid, a registry-file name or already promoted from another study."""
        path = self.promoted_dir(lake_root) / f"{name}.yaml"
        self.check_name(name, f"promoting study {study_name!r}")
        if path.exists():
            existing = self.load_promoted_file(path)
            if (existing.source.study_name, existing.source.family) != (study_name, family):
                raise ConfigError(
                    f"{path}: config name {name!r} is already promoted from study {existing.source.study_name!r} "
                    f"(family {existing.source.family}); choose another name"
                )
        return path

    def write_promoted(self, config: ModelConfig, source: PromotionSource, lake_root: Path | None = None) -> Path:
        """Write ``config`` as a promoted config (atomically). Re-promoting the same study's best
        under its name replaces the file; a name taken by the registry file or another study fails."""
        path = self.check_promotable(config.name, source.study_name, source.family, lake_root)
        text = f"# Promoted by {self.chain}/hpo_study: a partition of {self.chain}/trained_model (core/registry.py).\n"
        entry = {"source": source.model_dump(), "config": {config.name: config.model_dump(exclude={"name"})}}
        text += yaml.safe_dump(entry, sort_keys=False)
        atomic_write_bytes(path, text.encode())
        self.load_promoted_file(path)  # what was written reads back as a valid config
        return path
