"""Tests of the model-config registry and the metric thresholds."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from spotify_engine_assets.core.config import (
    ConfigError,
    ModelConfig,
    Thresholds,
    load_thresholds,
)
from spotify_engine_assets.datasets.listening import DATASET

REGISTRY = DATASET.registry


def _yaml(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------- shipped files


def test_shipped_registry_has_the_four_configs():
    registry = REGISTRY.load()
    assert {"gat_basic", "gat_enhanced", "lightgcn", "most_popular"} <= set(registry)
    for name, config in registry.items():
        assert isinstance(config, ModelConfig)
        assert config.name == name
    assert registry["gat_basic"].model == "gat_basic"
    assert registry["gat_enhanced"].model == "gat_enhanced"
    assert registry["lightgcn"].model == "lightgcn"
    assert registry["most_popular"].model == "most_popular"
    assert not registry["most_popular"].trainable
    assert registry["gat_enhanced"].trainable
    # every GAT config keeps the hidden size divisible by the heads
    for config in registry.values():
        if config.model.startswith("gat"):
            assert config.embedding_dim % config.heads == 0


def test_default_registry_and_get_config():
    assert REGISTRY.base is REGISTRY.base  # cached
    assert REGISTRY.get("gat_enhanced") is REGISTRY.base["gat_enhanced"]
    assert REGISTRY.get("lightgcn").num_layers == REGISTRY.load()["lightgcn"].num_layers


def test_get_config_unknown_name_lists_known_names():
    with pytest.raises(ConfigError) as info:
        REGISTRY.get("gat_huge")
    message = str(info.value)
    assert "gat_huge" in message
    for known in ("gat_basic", "gat_enhanced", "lightgcn", "most_popular"):
        assert known in message


def test_get_config_with_explicit_registry(tmp_path):
    registry = REGISTRY.load(_yaml(tmp_path, "only:\n  model: lightgcn\n"))
    assert REGISTRY.get("only", registry).model == "lightgcn"
    with pytest.raises(ConfigError, match="known configs: only"):
        REGISTRY.get("gat_basic", registry)
    with pytest.raises(ConfigError, match="unknown listening model config 'x'"):
        REGISTRY.get("x", {})


def test_shipped_thresholds():
    thresholds = load_thresholds()
    assert isinstance(thresholds, Thresholds)
    assert thresholds.min_ratio_vs_most_popular == pytest.approx(1.05)
    assert thresholds.min_ratio_vs_random == pytest.approx(1.5)


# ---------------------------------------------------------------------------------- load_registry


def test_load_registry_valid_file_with_defaults(tmp_path):
    path = _yaml(
        tmp_path,
        "small_gat:\n  model: gat_enhanced\n  embedding_dim: 32\n  heads: 4\n  lr: 0.01\npop:\n  model: most_popular\n",
    )
    registry = REGISTRY.load(path)
    assert list(registry) == ["small_gat", "pop"]
    config = registry["small_gat"]
    assert (config.embedding_dim, config.heads, config.lr) == (32, 4, 0.01)
    assert config.split == "random" and config.max_epochs == 60 and config.patience == 8
    with pytest.raises(pydantic.ValidationError):
        config.lr = 1.0  # frozen


@pytest.mark.parametrize(
    "settings, field",
    [
        ("model: gat_basic\n  hidden: 12", "hidden"),  # unknown field
        ("model: gat_basic\n  lr: -0.01", "lr"),
        ("model: gat_basic\n  lr: 0", "lr"),
        ("model: gat_enhanced\n  embedding_dim: 30\n  heads: 4", "divisible"),
        ("model: gat_basic\n  embedding_dim: 10\n  heads: 3", "divisible"),
        ("model: transformer", "model"),
        ("description: no model given", "model"),
        ("model: lightgcn\n  split: by_genre", "split"),
        ("model: lightgcn\n  embedding_dim: lots", "embedding_dim"),
        ("model: lightgcn\n  dropout: 1.0", "dropout"),
        ("model: lightgcn\n  num_layers: 0", "num_layers"),
        ("model: lightgcn\n  patience: 0", "patience"),
        ("model: lightgcn\n  lr_factor: 1.5", "lr_factor"),
        # advanced training options
        ("model: lightgcn\n  weight_completion: -0.5", "weight_completion"),
        ("model: lightgcn\n  weight_play_count: -1", "weight_play_count"),
        ("model: lightgcn\n  weight_recency: -2", "weight_recency"),
        ("model: lightgcn\n  weight_recency: 1\n  half_life_days: 0", "half_life_days"),
        ("model: lightgcn\n  half_life_days: -7", "half_life_days"),
        ("model: lightgcn\n  negatives_per_positive: 0", "negatives_per_positive"),
        ("model: lightgcn\n  negatives_per_positive: 11", "negatives_per_positive"),
        ("model: lightgcn\n  grad_accumulation: 0", "grad_accumulation"),
        ("model: lightgcn\n  grad_accumulation: 1.5", "grad_accumulation"),
        ("model: most_popular\n  weight_recency: 1", "weight_recency"),
        ("model: most_popular\n  negatives_per_positive: 4", "negatives_per_positive"),
        ("model: lightgcn\n  attention_entropy_weight: 0.1", "attention_entropy_weight"),
        ("model: gat_basic\n  attention_entropy_weight: -0.1", "attention_entropy_weight"),
        ("model: gat_basic\n  orthogonality_weight: -1", "orthogonality_weight"),
    ],
)
def test_load_registry_invalid_entry_names_file_config_and_field(tmp_path, settings, field):
    path = _yaml(tmp_path, f"fine:\n  model: lightgcn\nbroken_cfg:\n  {settings}\n", name="bad_models.yaml")
    with pytest.raises(ConfigError) as info:
        REGISTRY.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "'broken_cfg'" in message
    assert field in message


def test_advanced_training_fields_defaults_and_values(tmp_path):
    registry = REGISTRY.load(
        _yaml(
            tmp_path,
            "plain:\n  model: lightgcn\n"
            "weighted:\n  model: gat_enhanced\n  weight_completion: 1\n  weight_play_count: 0.5\n"
            "  weight_recency: 2\n  half_life_days: 7\n  negatives_per_positive: 10\n  grad_accumulation: 3\n",
        )
    )
    plain, weighted = registry["plain"], registry["weighted"]
    assert (plain.weight_completion, plain.weight_play_count, plain.weight_recency) == (0.0, 0.0, 0.0)
    assert (plain.negatives_per_positive, plain.grad_accumulation, plain.half_life_days) == (1, 1, 30.0)
    assert not plain.weighted and weighted.weighted
    assert (weighted.half_life_days, weighted.negatives_per_positive, weighted.grad_accumulation) == (7.0, 10, 3)


def test_shipped_variant_registry_is_valid():
    """configs/listening/variants.yaml (benchmarks/bench_objectives.py) loads and only holds trainable variants."""
    from spotify_engine_assets.core.storage.paths import configs_dir

    variants = REGISTRY.load(configs_dir() / "listening" / "variants.yaml")
    assert len(variants) >= 4
    assert all(config.trainable for config in variants.values())
    assert any(config.weighted for config in variants.values())
    assert any(config.negatives_per_positive > 1 for config in variants.values())
    assert not set(variants) & set(REGISTRY.base)  # never shadows a partition


def test_heads_need_not_divide_for_non_gat_models(tmp_path):
    # Behaviour change (migration guide): a field a kind does not have is refused, so lightgcn
    # takes no ``heads`` at all; an embedding_dim that 3 heads would not divide is still fine.
    registry = REGISTRY.load(_yaml(tmp_path, "l:\n  model: lightgcn\n  embedding_dim: 10\n"))
    assert registry["l"].embedding_dim == 10
    with pytest.raises(ConfigError) as info:
        REGISTRY.load(_yaml(tmp_path, "l:\n  model: lightgcn\n  embedding_dim: 10\n  heads: 3\n"))
    message = str(info.value)
    assert "heads" in message and "Extra inputs are not permitted" in message
    assert "divisible" not in message


@pytest.mark.parametrize(
    "text",
    [
        "gat: [unclosed\n",  # invalid YAML
        "a:\n  b: 1\n c: 2\n",  # bad indentation
        "",  # empty file
        "# only a comment\n",  # empty document
        "- model: gat_basic\n",  # a list, not a mapping
        "just a string\n",
    ],
)
def test_load_registry_bad_file_names_the_file(tmp_path, text):
    path = _yaml(tmp_path, text, name="weird.yaml")
    with pytest.raises(ConfigError, match="weird.yaml"):
        REGISTRY.load(path)


def test_load_registry_entry_that_is_not_a_mapping(tmp_path):
    path = _yaml(tmp_path, "fine:\n  model: lightgcn\nnothing:\n")
    with pytest.raises(ConfigError, match=r"models\.yaml: config 'nothing' must be a mapping"):
        REGISTRY.load(path)


def test_load_registry_entry_repeating_its_name(tmp_path):
    """``name`` is a ModelConfig field: setting it in the YAML must fail as a ConfigError too."""
    path = _yaml(tmp_path, "cfg_a:\n  model: lightgcn\n  name: other\n", name="named.yaml")
    with pytest.raises(ConfigError, match=r"named\.yaml.*'cfg_a'"):
        REGISTRY.load(path)


def test_load_registry_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        REGISTRY.load(tmp_path / "absent.yaml")


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------- thresholds


def test_load_thresholds_from_file(tmp_path):
    path = _yaml(tmp_path, "min_ratio_vs_most_popular: 1.2\nmin_ratio_vs_random: 2\n", "t.yaml")
    thresholds = load_thresholds(path)
    assert thresholds.min_ratio_vs_most_popular == 1.2
    assert thresholds.min_ratio_vs_random == 2.0


@pytest.mark.parametrize(
    "text, field",
    [
        ("min_ratio_vs_most_popular: 1.2\n", "min_ratio_vs_random"),  # missing
        ("min_ratio_vs_most_popular: -1\nmin_ratio_vs_random: 2\n", "min_ratio_vs_most_popular"),
        ("min_ratio_vs_most_popular: 1\nmin_ratio_vs_random: 2\nextra: 3\n", "extra"),
    ],
)
def test_load_thresholds_invalid(tmp_path, text, field):
    path = _yaml(tmp_path, text, "thr.yaml")
    with pytest.raises(ConfigError) as info:
        load_thresholds(path)
    assert "thr.yaml" in str(info.value) and field in str(info.value)


def test_load_thresholds_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="thr.yaml"):
        load_thresholds(_yaml(tmp_path, "", "thr.yaml"))
