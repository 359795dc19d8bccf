"""The full config registry (models.yaml + configs promoted into the data lake): validation,
name collisions, the listening_configs dynamic partitions and the listening/model_registry asset."""

from __future__ import annotations

import dagster as dg
import pytest

from spotify_engine_assets.core.config import ConfigError, update_config
from spotify_engine_assets.core.registry import PromotionSource
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.defs.chain import register_configs
from spotify_engine_assets.defs.listening import CHAIN
from spotify_engine_assets.defs.listening import defs as listening_defs
from spotify_engine_assets.defs.resources import DataLake

REGISTRY = DATASET.registry
MODEL_CONFIGS = CHAIN.partitions  # "listening_configs"
model_registry = listening_defs.get_assets_def(dg.AssetKey(["listening", "model_registry"]))


def _source(study: str = "spotify-engine/lightgcn", trial: int = 3) -> PromotionSource:
    return PromotionSource(
        family="lightgcn",
        study_name=study,
        trial=trial,
        objective="valid_recall@10",
        value=0.25,
        storage="sqlite:///x.db",
        promoted_at="2026-01-01T00:00:00+0000",
    )


def _tuned(name: str = "hpo_lightgcn", **changes):
    base = REGISTRY.base["lightgcn"]
    return update_config(base, name=name, **changes)


def test_promoted_config_joins_the_registry(tmp_path, data_lake):
    path = REGISTRY.write_promoted(_tuned(lr=0.02), _source(), tmp_path)
    assert path == REGISTRY.promoted_dir(tmp_path) / "hpo_lightgcn.yaml"
    assert not list(path.parent.glob(".*"))  # the atomic write left no temporary file
    registry = REGISTRY.full(tmp_path)
    assert set(registry) == set(REGISTRY.base) | {"hpo_lightgcn"}
    assert registry["hpo_lightgcn"].lr == 0.02 and REGISTRY.promoted(tmp_path)["hpo_lightgcn"].source.trial == 3
    rows = {row["config"]: row for row in REGISTRY.rows(tmp_path)}
    assert rows["hpo_lightgcn"]["origin"] == "study" and rows["hpo_lightgcn"]["study"] == "spotify-engine/lightgcn"
    assert rows["lightgcn"]["origin"] == "models.yaml"
    # the same study promoting again replaces its config; REGISTRY.get finds it in the lake
    REGISTRY.write_promoted(_tuned(lr=0.03), _source(trial=5), tmp_path)
    assert REGISTRY.get("hpo_lightgcn").lr == 0.03
    with pytest.raises(ConfigError, match="unknown listening model config 'nope'; known configs: .*hpo_lightgcn"):
        REGISTRY.get("nope")


def test_promotion_name_collisions(tmp_path):
    with pytest.raises(ConfigError, match="'lightgcn' collides with a models.yaml config"):
        REGISTRY.write_promoted(_tuned("lightgcn"), _source(), tmp_path)
    REGISTRY.write_promoted(_tuned(), _source(), tmp_path)
    with pytest.raises(
        ConfigError, match=r"hpo_lightgcn.yaml: .*already promoted from study 'spotify-engine/lightgcn'"
    ):
        REGISTRY.write_promoted(_tuned(), _source(study="other"), tmp_path)
    with pytest.raises(ValueError, match="config name 'bad name/x' is not a safe name"):
        _tuned("bad name/x")  # no config carries such a name, so none can be promoted under it
    with pytest.raises(
        ConfigError, match="promoting study 'spotify-engine/lightgcn': config name 'bad name/x' is not a safe name"
    ):
        REGISTRY.check_promotable("bad name/x", "spotify-engine/lightgcn", "lightgcn", tmp_path)
    assert sorted(p.name for p in REGISTRY.promoted_dir(tmp_path).iterdir()) == ["hpo_lightgcn.yaml"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source: [", "not valid YAML"),
        ("config: {hpo_x: {model: lightgcn}}\n", "expected exactly the keys 'source' and 'config'"),
        (
            "source: {}\nconfig: {other_name: {model: lightgcn}}\n",
            "config name 'other_name' must equal the file name 'hpo_x'",
        ),
        (
            "source: {}\nconfig: {hpo_x: {model: lightgcn, embedding_dim: -4}}\n",
            r"config 'hpo_x': embedding_dim: Input should be greater than 0",
        ),
        (
            "source: {}\nconfig: {hpo_x: {model: lightgcn, color: red}}\n",
            "config 'hpo_x': color: Extra inputs are not permitted",
        ),
        ("source: {family: lightgcn}\nconfig: {hpo_x: {model: lightgcn}}\n", "source: study_name: Field required"),
        (
            "source: {}\nconfig: {hpo_x: {model: lightgcn, split: position}}\n",
            r"config 'hpo_x': split: 'position' is not a split strategy of the listening chain \(random, temporal\)",
        ),
    ],
)
def test_invalid_promoted_file_names_the_file(tmp_path, text, message):
    folder = REGISTRY.promoted_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "hpo_x.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        REGISTRY.full(tmp_path)
    assert str(folder / "hpo_x.yaml") in str(error.value)


def test_promoted_file_may_not_shadow_models_yaml(tmp_path):
    folder = REGISTRY.promoted_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "lightgcn.yaml").write_text("source: {}\nconfig: {lightgcn: {model: lightgcn}}\n")
    with pytest.raises(ConfigError, match=r"lightgcn.yaml: config name 'lightgcn' collides with a models.yaml config"):
        REGISTRY.full(tmp_path)
    (folder / "lightgcn.yaml").unlink()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"notes.txt: unexpected file"):
        REGISTRY.full(tmp_path)


def test_model_registry_asset_adds_partitions_and_never_deletes(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(MODEL_CONFIGS, ["retired"])
    REGISTRY.write_promoted(_tuned(), _source(), tmp_path)
    result = dg.materialize([model_registry], instance=instance, resources={"lake": DataLake(root=str(tmp_path))})
    assert result.success
    expected = sorted(REGISTRY.base) + ["hpo_lightgcn"]
    assert sorted(instance.get_dynamic_partitions(MODEL_CONFIGS)) == sorted(expected + ["retired"])
    metadata = result.asset_materializations_for_node("listening__model_registry")[0].metadata
    assert sorted(metadata["added_partitions"].value) == sorted(expected)
    assert metadata["partitions_without_config"].value == ["retired"]
    assert metadata["origins"].value == {"models.yaml": len(REGISTRY.base), "study": 1}
    assert "| hpo_lightgcn | lightgcn | random | study | spotify-engine/lightgcn | 3 |" in metadata["registry"].value
    assert register_configs(CHAIN, instance, tmp_path)[1] == []  # idempotent


def test_model_registry_asset_fails_on_a_broken_promoted_file(tmp_path):
    folder = REGISTRY.promoted_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "hpo_x.yaml").write_text("source: {}\nconfig: {hpo_x: {model: gat_huge}}\n")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [model_registry], instance=instance, resources={"lake": DataLake(root=str(tmp_path))}, raise_on_error=False
    )
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "model_registry: " in str(failure.event_specific_data.error) and "hpo_x.yaml" in str(
        failure.event_specific_data.error
    )
    assert instance.get_dynamic_partitions(MODEL_CONFIGS) == []
