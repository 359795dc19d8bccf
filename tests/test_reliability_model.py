"""A model that must not serve (issue 19): names that are paths, duplicate YAML keys, non-finite
configs and diverged training, flipped bytes in stored artifacts. Each case ends in a clear error
naming the thing, and nothing already current is replaced."""

from __future__ import annotations

import logging
import math
import re
import sys

import optuna
import polars as pl
import pytest
import torch
from test_sqlmodels import raises_naming

from spotify_engine_assets.core.config import (
    ConfigError,
    Thresholds,
    read_yaml,
    update_config,
)
from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.experiments import hpo
from spotify_engine_assets.core.experiments.records import update_champion
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.registry import Registry
from spotify_engine_assets.core.storage.artifacts import (
    MANIFEST,
    POINTER,
    ArtifactCorruptError,
    ArtifactStore,
    first_non_finite,
    load_torch,
    save_torch,
)
from spotify_engine_assets.core.storage.paths import (
    REPO_ROOT,
    UnsafeNameError,
    safe_name,
)
from spotify_engine_assets.core.strict_yaml import DuplicateKeyError, load_yaml
from spotify_engine_assets.core.training.trainer import NonFiniteLossError, train
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import SCHEMA
from spotify_engine_assets.defs.playlists.ingestion import archive_path
from spotify_engine_assets.defs.resources import DataLake, LakeIOManager

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from reliability_model_cases import (  # the catalogue's cases, run as tests too
    CASES,
    model_cases,
)
from test_training import config as toy_config
from test_training import toy_problem

torch.set_num_threads(1)
STRATEGIES = DATASET.registry.strategies
MODEL_KEY = ["listening", "trained_model"]


def _registry_file(tmp_path, text: str) -> Registry:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return Registry("listening", path, STRATEGIES)


# --- config, partition, batch and study names are paths ---------------------------------------


def test_config_name_with_a_path_is_refused_naming_the_file(tmp_path):
    registry = _registry_file(tmp_path, "lightgcn:\n  model: lightgcn\nevil/../lightgcn:\n  model: most_popular\n")
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"{registry.path}: config 'evil/../lightgcn': name: config name 'evil/../lightgcn' is not a safe name"
        ),
    ):
        registry.load()
    for bad in ("../x", "a/b", ".hidden", "_", "x\n", "a b", "x" * 101, ""):
        with pytest.raises(UnsafeNameError, match="is not a safe name"):
            safe_name(bad, "config name")
    assert safe_name("hpo_lightgcn-2", "config name") == "hpo_lightgcn-2"


def test_unsafe_partition_never_writes_into_another_partition(tmp_path):
    """The issue's case: partition ``evil/../lightgcn`` resolved to lightgcn's folder and swapped its CURRENT."""
    store = ArtifactStore(tmp_path)
    good = store.write(MODEL_KEY, "lightgcn", lambda folder: save_torch({"x": torch.ones(2)}, folder / "data.pt"))
    with pytest.raises(
        UnsafeNameError, match=r"partition key of listening/trained_model 'evil/\.\./lightgcn' is not a safe name"
    ):
        store.write(MODEL_KEY, "evil/../lightgcn", lambda folder: save_torch({"x": torch.zeros(2)}, folder / "data.pt"))
    assert store.current(MODEL_KEY, "lightgcn") == good and store.versions(MODEL_KEY, "lightgcn") == [good]
    assert not (tmp_path / "listening" / "trained_model" / "evil").exists()
    # a CURRENT pointer that names a path outside its slot is refused, not followed
    (store.slot(MODEL_KEY, "lightgcn") / POINTER).write_text("../../../elsewhere")
    with pytest.raises(
        UnsafeNameError, match=r"version named by .*CURRENT '\.\./\.\./\.\./elsewhere' is not a safe name"
    ):
        store.current(MODEL_KEY, "lightgcn")


def test_batch_family_and_study_names_are_safe_names(tmp_path):
    lake = DataLake(root=str(tmp_path))
    with pytest.raises(UnsafeNameError, match=r"landing batch '\.\./\.\./artifacts' is not a safe name"):
        archive_path(lake, "../../artifacts", "x.csv")
    assert archive_path(lake, "playlists_a-0123456789ab", "x.csv").parent.name == "playlists_a-0123456789ab"
    with pytest.raises(ConfigError, match=r"study name 'spotify-engine/\.\./lightgcn': part '\.\.' is not a safe name"):
        hpo.check_study_name("spotify-engine/../lightgcn")
    assert (
        hpo.check_study_name("spotify-engine/listening/lightgcn/pareto") == "spotify-engine/listening/lightgcn/pareto"
    )
    spaces = tmp_path / "search_spaces.yaml"
    spaces.write_text("../lightgcn:\n  base: lightgcn\n  params:\n    lr: {low: 0.001, high: 0.1, log: true}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{spaces}: family '../lightgcn' is not a safe name")):
        hpo.load_search_spaces(DATASET, spaces)


# --- duplicate keys --------------------------------------------------------------------------


def test_duplicate_config_in_models_yaml_names_file_and_lines(tmp_path):
    registry = _registry_file(
        tmp_path, "lightgcn:\n  model: lightgcn\n  lr: 0.01\n\nlightgcn:\n  model: lightgcn\n  lr: 0.5\n"
    )
    with pytest.raises(
        ConfigError, match=re.escape(f"{registry.path}: line 5: duplicate key 'lightgcn' (first at line 1)")
    ):
        registry.load()
    nested = _registry_file(tmp_path, "lightgcn:\n  model: lightgcn\n  lr: 0.01\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=re.escape(f"{nested.path}: line 4: duplicate key 'lr' (first at line 3)")):
        nested.load()


def test_duplicate_model_in_schema_yml_names_file_and_line(tmp_path):
    """A second ``songs:`` would silently drop the first entry's tests."""
    yml = "models:\n  m:\n    a: [not_null, unique]\n  m:\n    a: [not_null]\n"
    raises_naming(
        {"staging/m.sql": "SELECT 1 AS a", "staging/schema.yml": yml},
        tmp_path,
        "staging/schema.yml",
        "line 4: duplicate key 'm' (first at line 2)",
    )


def test_strict_loader_is_safe_load_otherwise(tmp_path):
    text = "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\nitems: [{a: 1}, {a: 2}]\n"
    assert load_yaml(text, "x.yaml") == {
        "base": {"x": 1, "y": 2},
        "other": {"x": 1, "y": 3},
        "items": [{"a": 1}, {"a": 2}],
    }
    with pytest.raises(DuplicateKeyError, match=r"x.yaml: line 1: duplicate key 'a'"):
        load_yaml("- {a: 1, a: 2}\n", "x.yaml")
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text("min_ratio_vs_most_popular: 1.1\nmin_ratio_vs_random: 2\nmin_ratio_vs_most_popular: 0.1\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"{thresholds}: line 3: duplicate key 'min_ratio_vs_most_popular'")
    ):
        read_yaml(thresholds)
    with pytest.raises(Exception, match="could not determine a constructor"):  # still safe: no Python objects
        load_yaml("!!python/object/apply:os.system ['true']\n")


# --- non-finite values: config, training, promotion -------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("lr", ".inf"), ("l2", ".nan"), ("temperature", "-.inf")])
def test_non_finite_config_value_is_refused_naming_the_field(tmp_path, field, value):
    extra = "\n  loss: softmax" if field == "temperature" else ""
    registry = _registry_file(tmp_path, f"lightgcn:\n  model: lightgcn\n  {field}: {value}{extra}\n")
    with pytest.raises(ConfigError, match=re.escape(f"config 'lightgcn': {field}: Input should be a finite number")):
        registry.load()
    with pytest.raises(ValueError, match="finite number"):
        update_config(DATASET.registry.base["lightgcn"], lr=math.inf)
    with pytest.raises(ValueError, match="finite number"):
        Thresholds(min_ratio_vs_most_popular=math.nan, min_ratio_vs_random=2.0)
    with pytest.raises(ValueError, match="finite number"):
        hpo.ParamSpec(low=0.001, high=math.inf)


def test_diverging_training_stops_with_a_clear_error():
    view, valid = toy_problem()
    cfg = toy_config("lightgcn", lr=1e30, max_epochs=5)
    model = build_model(cfg, SCHEMA, num_nodes_of(view))
    with pytest.raises(
        NonFiniteLossError, match=r"config 'toy_lightgcn': training diverged, epoch 1 loss is (nan|inf)"
    ):
        train(model, view, valid, cfg)
    simple = update_config(cfg, trainer="simple")
    with pytest.raises(NonFiniteLossError, match="training diverged"):
        train(build_model(simple, SCHEMA, num_nodes_of(view)), view, None, simple)


def test_first_non_finite_names_the_parameter():
    state = {
        "user_emb.weight": torch.ones(3, 2),
        "item_emb.weight": torch.tensor([[1.0, math.nan]]),
        "steps": torch.arange(3),
    }
    assert first_non_finite({"state": state, "best_valid": 0.2}) == "state.item_emb.weight"
    assert first_non_finite({"history": [{"loss": 1.0}, {"loss": math.inf}]}) == "history.1.loss"
    assert first_non_finite({"state": {"w": torch.ones(2)}, "best_valid": None, "name": "x"}) is None
    sparse = torch.sparse_coo_tensor(
        torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, math.inf]), (2, 2), check_invariants=True
    )
    assert first_non_finite({"adjacency": sparse}) == "adjacency"
    assert first_non_finite({"adjacency": torch.eye(2).to_sparse()}) is None


def test_nan_metric_is_never_seeded_or_promoted_champion():
    thresholds = Thresholds(min_ratio_vs_most_popular=1.0, min_ratio_vs_random=1.0)
    report = {"split": "random", "gate": {"passed": True}, "per_user": {"recall@10": [0.1, 0.2]}}
    reports = {
        "nan_model": {**report, "metrics": {"recall@10": math.nan}},
        "good": {**report, "metrics": {"recall@10": 0.15}},
    }
    state, events = update_champion({}, reports, thresholds, "recall@10")
    assert state["splits"]["random"]["config"] == "good" and events[0]["event"] == "seeded"
    state, events = update_champion({}, {"nan_model": reports["nan_model"]}, thresholds, "recall@10")
    assert state["splits"] == {} and events == []


# --- bit rot: content hashes of every stored artifact -----------------------------------------


def _flip(path, count: int) -> bytes:
    """Flip ``count`` bytes spread over the middle of ``path``; returns the original content."""
    original = path.read_bytes()
    data = bytearray(original)
    start, step = len(data) // 4, max(1, len(data) // (2 * count))
    for i in range(count):
        data[start + i * step] ^= 0x5A
    path.write_bytes(bytes(data))
    return original


def test_flipped_bytes_in_a_torch_artifact_fail_naming_the_file(tmp_path):
    store = ArtifactStore(tmp_path)
    version = store.write(
        MODEL_KEY, "lightgcn", lambda folder: save_torch({"w": torch.randn(4000)}, folder / "data.pt")
    )
    digest, name = (version / MANIFEST).read_text().split()
    assert name == "data.pt" and len(digest) == 64
    assert load_torch(version / "data.pt")["w"].shape == (4000,)
    _flip(version / "data.pt", 64)
    with pytest.raises(ArtifactCorruptError, match=re.escape(str(version / "data.pt")) + r": content hash mismatch"):
        load_torch(version / "data.pt")
    (version / MANIFEST).write_text("not a hash list\n")
    with pytest.raises(ArtifactCorruptError, match=re.escape(str(version / MANIFEST)) + ": line 1 is not"):
        load_torch(version / "data.pt")


def test_flipped_bytes_in_a_parquet_artifact_fail_naming_the_file(tmp_path):
    lake = DataLake(root=str(tmp_path))
    io_manager = LakeIOManager(lake=lake)
    frame = pl.DataFrame({"user": list(range(2000)), "score": [float(i) for i in range(2000)]})
    version = lake.artifacts.write(
        ["listening", "model_comparison"], None, lambda folder: frame.write_parquet(folder / "data.parquet")
    )
    assert io_manager._load(["listening", "model_comparison"], None).equals(frame)
    _flip(version / "data.parquet", 8)
    with pytest.raises(
        ArtifactCorruptError, match=re.escape(str(version / "data.parquet")) + ": content hash mismatch"
    ):
        io_manager._load(["listening", "model_comparison"], None)


def test_artifact_without_hashes_loads_with_one_warning(tmp_path, caplog):
    """A version written before hashes were stored still loads (decided: warn, do not refuse)."""
    store = ArtifactStore(tmp_path)
    version = store.write(MODEL_KEY, "old_model", lambda folder: save_torch({"w": torch.ones(3)}, folder / "data.pt"))
    (version / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        assert load_torch(version / "data.pt")["w"].sum() == 3
        assert load_torch(version / "data.pt")["w"].sum() == 3
    warnings = [r.getMessage() for r in caplog.records if MANIFEST in r.getMessage()]
    assert len(warnings) == 1 and str(version) in warnings[0] and "loaded unverified" in warnings[0]
    # a file the version was not written with is refused
    version2 = store.write(MODEL_KEY, "old_model", lambda folder: save_torch({"w": torch.ones(3)}, folder / "data.pt"))
    save_torch({"w": torch.zeros(3)}, version2 / "extra.pt")
    with pytest.raises(ArtifactCorruptError, match=re.escape(str(version2 / "extra.pt")) + ": not listed in"):
        load_torch(version2 / "extra.pt")


# --- end to end, and the catalogue (benchmarks/reliability_model_cases.py) ---------------------


def test_catalogue_cases_are_clear_or_handled(tmp_path):
    outcomes = {}
    for number, (name, case) in enumerate(CASES):
        (tmp_path / str(number)).mkdir()
        outcomes[name] = case(tmp_path / str(number))
    assert {name: outcome for name, (outcome, _) in outcomes.items()} == {
        name: "handled" if name == "artifact written before content hashes" else "clear" for name, _ in CASES
    }


def test_diverged_or_corrupt_model_never_serves(tmp_path):
    """The tiny world's data stage, a 2-epoch model and a diverging one (lr 1e30) through Dagster,
    then ``spotify-engine recommend`` on 64 and 2,000 flipped bytes and on NaN weights."""
    outcomes = model_cases(tmp_path)
    assert {name: outcome for name, (outcome, _) in outcomes.items()} == dict.fromkeys(outcomes, "clear")
    assert len(outcomes) == 4
    assert "config 'diverged_lgcn': training diverged, epoch 1 loss is" in outcomes["diverged training (lr 1e30)"][1]
    assert (
        "trained_model[small_lgcn] has non-finite weights (state."
        in outcomes["NaN model already current (stored before the guard), recommend"][1]
    )


def test_diverging_study_trial_is_pruned_and_the_study_goes_on():
    """A search space that can draw a diverging lr: that trial ends pruned with its reason, the next one trains."""
    from test_hpo import toy_data

    base = update_config(
        DATASET.registry.base["lightgcn"],
        name="toy_lgcn",
        embedding_dim=8,
        num_layers=1,
        max_epochs=3,
        eval_every=1,
        patience=3,
    )
    space = hpo.SearchSpace("lightgcn", base, {"lr": hpo.ParamSpec(type="float", low=0.001, high=1e30, log=True)})
    study = hpo.open_study(DATASET, "lightgcn", optuna.storages.InMemoryStorage(), study_name="diverging")
    study.enqueue_trial({"lr": 1e30})
    study.enqueue_trial({"lr": 0.01})
    messages: list[str] = []
    hpo.run_study(study, space, toy_data(), n_trials=2, worker=1, log=messages.append)
    diverged, healthy = study.trials
    assert diverged.state == optuna.trial.TrialState.PRUNED and diverged.user_attrs["epochs_run"] == 1
    assert diverged.user_attrs["pruned_by"].startswith("diverged: config 'lightgcn_trial0': training diverged, epoch 1")
    assert any(m.startswith("trial 0 pruned: diverged") for m in messages)
    assert healthy.state == optuna.trial.TrialState.COMPLETE and math.isfinite(healthy.value)
