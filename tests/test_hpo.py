"""Hyperparameter optimization (core/experiments/hpo.py): search-space validation, storage errors, a study that
resumes, two workers sharing one storage, and pruning."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.config import ConfigError, update_config
from spotify_engine_assets.core.experiments import hpo
from spotify_engine_assets.datasets.lastfm import DATASET as LASTFM
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.graph import BY, HAS, LISTENS, SCHEMA
from spotify_engine_assets.datasets.playlists import DATASET as PLAYLISTS

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def toy_data(
    num_users: int = 40, num_songs: int = 200, clusters: int = 4, per_user: int = 10, seed: int = 0
) -> hpo.StudyData:
    """Users of cluster c play songs of cluster c; two held-out validation songs per user (the
    graph holds every listen: the training ones first, then the validation ones; no test part)."""
    g = torch.Generator().manual_seed(seed)
    size = num_songs // clusters
    train_pairs, valid_pairs = [], []
    for u in range(num_users):
        base = (u % clusters) * size
        songs = (torch.randperm(size, generator=g)[: per_user + 2] + base).tolist()
        train_pairs += [(u, s) for s in songs[:-2]]
        valid_pairs += [(u, s) for s in songs[-2:]]
    data = HeteroData()
    for t, n in {"user": num_users, "song": num_songs, "artist": 8, "genre": clusters}.items():
        data[t].num_nodes = n
        data[t].node_id = torch.arange(n)
    data[LISTENS].edge_index = torch.tensor(train_pairs + valid_pairs).t().contiguous()
    data[LISTENS].edge_attr = torch.rand(len(train_pairs) + len(valid_pairs), 3, generator=g)
    songs = torch.arange(num_songs)
    data[BY].edge_index = torch.stack([songs, songs % 8])
    data[HAS].edge_index = torch.stack([songs, songs // size])
    split = {
        "train": torch.arange(len(train_pairs)),
        "valid": torch.arange(len(train_pairs), len(train_pairs) + len(valid_pairs)),
        "test": torch.empty(0, dtype=torch.long),
    }
    return hpo.StudyData(DATASET, data, split)


TOY_REGISTRY = """
toy_lightgcn:
  model: lightgcn
  embedding_dim: 16
  num_layers: 1
  batch_size: 64
  max_epochs: 6
  patience: 20
toy_gat:
  model: gat_basic
  embedding_dim: 16
  batch_size: 64
  max_epochs: 4
toy_itemknn:
  model: itemknn
  shrink: 10
"""

TOY_SPACES = """
lightgcn:
  base: toy_lightgcn
  params:
    lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
    embedding_dim: {type: categorical, choices: [8, 16]}
    l2: {type: float, low: 0.0, high: 1.0e-3}
"""


def toy_spaces(tmp: Path, spaces: str = TOY_SPACES) -> dict[str, hpo.SearchSpace]:
    (tmp / "models.yaml").write_text(TOY_REGISTRY)
    (tmp / "spaces.yaml").write_text(spaces)
    return hpo.load_search_spaces(DATASET, tmp / "spaces.yaml", DATASET.registry.load(tmp / "models.yaml"))


# --- search-space validation -----------------------------------------------------------------


CHAINS = {"listening": DATASET, "playlists": PLAYLISTS, "lastfm": LASTFM}
GNN_FIELDS = {"lr", "l2", "embedding_dim", "loss", "temperature", "negatives_per_positive"}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_packaged_search_spaces_cover_every_family_of_the_registry(chain):
    """Every model family of the chain's registry but most_popular has a space (every
    category_popularity config its own, on that config); a GNN space searches lr, l2, dims, layers
    (not gat_basic: one layer whatever it says), heads (attention models), loss, and temperature /
    negatives under the loss they belong to."""
    dataset = CHAINS[chain]
    spaces = hpo.load_search_spaces(dataset)
    registry = dataset.registry.base
    assert {c.model for c in registry.values()} - {"most_popular"} <= {s.base.model for s in spaces.values()}
    popularity = {name for name, c in registry.items() if c.model == "category_popularity"}
    assert popularity <= {s.base.name for s in spaces.values()}
    for space in spaces.values():
        params = space.params
        if not space.base.trainable:
            assert all(spec.when is None for spec in params.values())
            continue
        assert set(params) >= GNN_FIELDS, space.family
        assert ("num_layers" in params) == (space.base.model != "gat_basic"), space.family
        assert ("heads" in params) == space.base.has_attention, space.family
        assert set(params["loss"].choices) == {"bpr", "softmax"}
        assert params["temperature"].conditions == {"loss": ("softmax",)}
        assert params["negatives_per_positive"].conditions == {"loss": ("bpr",)}
        assert list(params).index("loss") < list(params).index("temperature")  # suggested first
        if "heads" in params:  # every (embedding_dim, heads) pair the space can draw divides
            assert all(d % h == 0 for d in params["embedding_dim"].choices for h in params["heads"].choices)


def test_listening_gnn_spaces_keep_their_ranges():
    spaces = hpo.load_search_spaces(DATASET)
    enhanced = spaces["gat_enhanced"].params
    assert enhanced["lr"].log and (enhanced["lr"].low, enhanced["lr"].high) == (1e-4, 1e-1)
    assert (enhanced["num_layers"].low, enhanced["num_layers"].high) == (1, 4)
    assert (enhanced["dropout"].low, enhanced["dropout"].high) == (0.0, 0.5)
    for family in ("gat_enhanced", "lightgcn"):  # training objectives are searched too
        negatives = spaces[family].params["negatives_per_positive"]
        assert (negatives.low, negatives.high) == (1, 10) and "weight_play_count" in spaces[family].params


def _sampled_configs(space: hpo.SearchSpace, n: int = 12, seed: int = 0) -> list[tuple[dict, object]]:
    """``n`` trials of a seeded TPE sampler (no training: each is told a made-up value), both losses
    forced once each in a space that searches the loss: their params and trial configs."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
    if "loss" in space.params:
        for loss in space.params["loss"].choices:
            study.enqueue_trial({"loss": loss})
    drawn = []
    for number in range(n):
        trial = study.ask()
        params = space.suggest(trial)
        drawn.append((params, space.trial_config(params, f"{space.family}_trial{number}")))
        study.tell(trial, float(number % 5))
    return drawn


@pytest.mark.parametrize(
    ("chain", "family"),
    # the files' keys (as the asset's partitions): a broken space fails its test, not the collection
    [
        (chain, family)
        for chain, dataset in sorted(CHAINS.items())
        for family in sorted(yaml.safe_load(hpo.spaces_path(dataset).read_text()))
    ],
)
def test_every_family_samples_valid_trial_configs(chain, family):
    """Seeded trials of every space of every chain make configs the config class accepts; a
    conditional field is drawn exactly when its condition holds and otherwise has its default."""
    space = hpo.get_space(CHAINS[chain], family)
    defaults = type(space.base).model_fields
    for params, config in _sampled_configs(space):
        assert config.model == space.base.model and not config.train_on_validation
        for field, spec in space.params.items():
            if spec.when is None:
                assert field in params
            else:
                assert (field in params) == spec.holds(params), (field, params)
            value = params[field] if field in params else defaults[field].default
            assert getattr(config, field) == value, (field, params)
        if config.trainable:
            assert config.trainer == "advanced"
            if config.loss == "bpr":
                assert config.temperature == defaults["temperature"].default and not config.normalize
            else:
                assert config.negatives_per_positive == 1
        promoted = space.config_for(params, "x")  # what a promotion writes: the base's final-fit settings kept
        assert promoted.train_on_validation == space.base.train_on_validation


# --- conditional parameters --------------------------------------------------------------------

SOFTMAX_REGISTRY = """
toy_softmax:
  model: gat_basic
  embedding_dim: 16
  loss: softmax
  temperature: 0.3
  max_epochs: 2
"""

CONDITIONAL = """
gat:
  base: toy_softmax
  params:
    temperature: {type: categorical, choices: [0.1, 0.2], when: {loss: softmax}}
    normalize: {type: categorical, choices: [true, false], when: {temperature: 0.2}}
    negatives_per_positive: {type: int, low: 1, high: 4, when: {loss: [bpr]}}
    loss: {type: categorical, choices: [bpr, softmax]}
    lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
"""


def conditional_space(tmp: Path, spaces: str = CONDITIONAL) -> hpo.SearchSpace:
    (tmp / "models.yaml").write_text(SOFTMAX_REGISTRY)
    (tmp / "spaces.yaml").write_text(spaces)
    return hpo.load_search_spaces(DATASET, tmp / "spaces.yaml", DATASET.registry.load(tmp / "models.yaml"))["gat"]


def test_conditional_parameters_are_drawn_only_when_their_condition_holds(tmp_path):
    space = conditional_space(tmp_path)
    # a condition is suggested before the fields it gates, whatever the file order
    assert list(space.params) == ["loss", "temperature", "normalize", "negatives_per_positive", "lr"]
    everything = {"loss": "bpr", "temperature": 0.2, "normalize": True, "negatives_per_positive": 3, "lr": 0.01}
    bpr = space.suggest(optuna.trial.FixedTrial(everything))
    assert bpr == {"loss": "bpr", "negatives_per_positive": 3, "lr": 0.01}
    config = space.trial_config(bpr, "t")
    # inactive fields take their defaults: the base's temperature 0.3 would be a setting without effect
    assert (config.loss, config.negatives_per_positive, config.temperature, config.normalize) == ("bpr", 3, 0.1, False)

    softmax = space.suggest(optuna.trial.FixedTrial({**everything, "loss": "softmax"}))
    assert softmax == {"loss": "softmax", "temperature": 0.2, "normalize": True, "lr": 0.01}  # nested: normalize too
    config = space.trial_config(softmax, "t")
    assert (config.temperature, config.normalize, config.negatives_per_positive) == (0.2, True, 1)

    cool = space.suggest(optuna.trial.FixedTrial({**everything, "loss": "softmax", "temperature": 0.1}))
    assert cool == {"loss": "softmax", "temperature": 0.1, "lr": 0.01}  # normalize's condition fails

    # a field left out whose condition holds on the base keeps the base value (the time probe's {}),
    # and one gated by an inactive parameter is inactive too
    assert space.config_for({}, "probe").temperature == 0.3
    assert space.config_for({"loss": "bpr"}, "b").temperature == 0.1


def test_a_study_with_conditional_parameters_records_only_the_drawn_ones(tmp_path):
    space = conditional_space(tmp_path)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=3))
    study.optimize(lambda trial: space.trial_config(space.suggest(trial), "t").lr, n_trials=16)
    losses = {t.params["loss"] for t in study.trials}
    assert losses == {"bpr", "softmax"} and all(t.state.is_finished() for t in study.trials)
    for trial in study.trials:
        assert ("temperature" in trial.params) == (trial.params["loss"] == "softmax")
        assert ("negatives_per_positive" in trial.params) == (trial.params["loss"] == "bpr")
        assert ("normalize" in trial.params) == (trial.params.get("temperature") == 0.2)
    best = hpo.best_config(study, space)  # a best trial's params make a valid config too
    assert best.lr == study.best_params["lr"] and best.loss == study.best_params["loss"]


def _conditional_error(tmp: Path, params: str) -> str:
    with pytest.raises(ConfigError) as error:
        conditional_space(tmp, "gat:\n  base: toy_softmax\n  params:\n" + textwrap.indent(params, "    "))
    return str(error.value)


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        (
            "temperature: {type: float, low: 0.05, high: 0.5, when: {los: softmax}}\n",
            "temperature",
            "when: 'los' is not a parameter of this space",
        ),
        (
            "lr: {type: float, low: 0.001, high: 0.1}\ntemperature: {type: float, low: 0.05, high: 0.5, when: {lr: 0.01}}\n",
            "temperature",
            "when: 'lr' is a float parameter; a condition names a categorical one",
        ),
        (
            "loss: {type: categorical, choices: [bpr, softmax]}\ntemperature: {type: float, low: 0.05, high: 0.5, when: {loss: softmx}}\n",
            "temperature",
            "when: loss: 'softmx' not among its choices ['bpr', 'softmax']",
        ),
        ("loss: {type: categorical, choices: [bpr, softmax], when: {loss: bpr}}\n", "loss", "is the parameter itself"),
        (
            "loss: {type: categorical, choices: [bpr, softmax], when: {normalize: true}}\n"
            "normalize: {type: categorical, choices: [true, false], when: {loss: softmax}}\n",
            "loss",
            "form a cycle",
        ),
        (
            "loss: {type: categorical, choices: [bpr, softmax], when: {}}\n",
            "loss",
            "'when' needs at least one condition",
        ),
        (
            "loss: {type: categorical, choices: [bpr, softmax]}\ntemperature: {type: float, low: 0.0, high: 0.5, when: {loss: softmax}}\n",
            "temperature",
            "value 0.0 is not allowed",
        ),  # checked under its condition (loss: softmax)
    ],
    ids=["unknown", "not-categorical", "not-a-choice", "itself", "cycle", "empty", "value-under-condition"],
)
def test_bad_condition_names_family_and_field(tmp_path, params, field, message):
    error = _conditional_error(tmp_path, params)
    assert f"family 'gat': parameter {field!r}" in error and message in error


@pytest.mark.parametrize(
    ("params", "message"),
    [
        # temperature searched without its condition: a BPR trial would set it without effect
        (
            "loss: {type: categorical, choices: [bpr, softmax]}\ntemperature: {type: float, low: 0.05, high: 0.5}\n",
            "(loss 'bpr', temperature 0.05) is rejected by gat_basic configs: settings without effect: temperature needs loss: softmax",
        ),
        # the wrong condition: negatives under the softmax loss
        (
            "loss: {type: categorical, choices: [bpr, softmax]}\ntemperature: {type: float, low: 0.05, high: 0.5, when: {loss: softmax}}\n"
            "negatives_per_positive: {type: int, low: 1, high: 4, when: {loss: softmax}}\n",
            "negatives_per_positive 4) is rejected by gat_basic configs: negatives_per_positive apply to BPR steps",
        ),
        # a heads choice that does not divide every embedding_dim choice
        (
            "embedding_dim: {type: categorical, choices: [16, 32]}\nheads: {type: categorical, choices: [1, 3]}\n",
            "(embedding_dim 16, heads 3) is rejected by gat_basic configs: embedding_dim 16 must be divisible by heads 3",
        ),
    ],
    ids=["unconditional-temperature", "wrong-condition", "heads-not-dividing"],
)
def test_space_that_can_draw_an_invalid_combination_is_refused(tmp_path, params, message):
    error = _conditional_error(tmp_path, params)
    assert "family 'gat': the combination " in error and message in error and "make it impossible" in error


def test_a_numeric_clash_is_pruned_untrained_with_its_reason(tmp_path):
    """A space built past the load-time checks (here by hand) that draws heads not dividing the
    dims: the trial is pruned before it trains, the reason in its user attributes."""
    spaces = toy_spaces(tmp_path)
    base = DATASET.registry.load(tmp_path / "models.yaml")["toy_gat"]
    space = hpo.SearchSpace("gat", base, {"heads": hpo.ParamSpec(type="int", low=1, high=3)})
    study = hpo.open_study(DATASET, "gat", optuna.storages.InMemoryStorage(), study_name="clash")
    study.enqueue_trial({"heads": 3})
    hpo.run_study(study, space, toy_data(), n_trials=1, worker=1)  # worker 1: no registry trial enqueued
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["epochs_run"] == 0
    assert "divisible by heads 3" in trial.user_attrs["invalid"]
    assert hpo.trials_table(study)[0]["pruned_by"].startswith("invalid config: ")
    assert spaces  # the toy registry was written


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("lr: {type: float, low: 0.1, high: 0.001}", "inverted range"),
        ("lr: {type: float, low: 0.01, high: 0.01}", "empty range"),
        ("lr: {type: float, low: 0.0, high: 0.1, log: true}", "log range needs low > 0"),
        ("embedding_dim: {type: categorical, choices: []}", "non-empty 'choices'"),
        ("embedding_dim: {type: float, low: 8, high: 64}", "type float does not fit a int field"),
        # lightgcn has no dropout now (a field a kind does not have is refused): the float range is
        # checked on lr_factor instead
        ("dropout: {type: float, low: 0.0, high: 1.5}", "unknown parameter (not a field of lightgcn configs)"),
        ("lr_factor: {type: float, low: 0.1, high: 1.5}", "value 1.5 is not allowed"),
        ("num_layers: {type: int, low: 1, high: 9}", "value 9 is not allowed"),
        ("negatives: {type: int, low: 1, high: 10}", "unknown parameter"),
        ("seed: {type: int, low: 0, high: 10}", "cannot be searched"),
    ],
)
def test_bad_search_space_names_family_and_field(tmp_path, param, message):
    field = param.split(":")[0]
    with pytest.raises(ConfigError) as error:
        toy_spaces(tmp_path, f"lightgcn:\n  base: toy_lightgcn\n  params:\n    {param}\n")
    assert "family 'lightgcn'" in str(error.value) and f"parameter {field!r}" in str(error.value)
    assert message in str(error.value)


def test_unknown_base_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown base config 'nope'"):
        toy_spaces(tmp_path, "lightgcn:\n  base: nope\n  params:\n    lr: {type: float, low: 0.001, high: 0.1}\n")


@pytest.mark.parametrize(
    "url",
    ["no-scheme", "postgresql://user:secret@127.0.0.1:1/optuna", "sqlite:///{file}/inside-a-file/studies.db"],
)
def test_unusable_storage_fails_clearly_and_hides_passwords(tmp_path, url):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    url = url.format(file=blocker)
    with pytest.raises(hpo.HpoError) as error:
        hpo.open_study(DATASET, "lightgcn", url)
    assert "secret" not in str(error.value)
    assert "storage" in str(error.value)


# --- studies -----------------------------------------------------------------------------------


def test_study_resumes_with_its_finished_trials(tmp_path):
    spaces = toy_spaces(tmp_path)
    data = toy_data()
    url = f"sqlite:///{tmp_path / 'optuna' / 'studies.db'}"
    lines: list[str] = []
    first = hpo.run_study(
        hpo.open_study(DATASET, "lightgcn", url, seed=3), spaces["lightgcn"], data, n_trials=2, log=lines.append
    )
    assert len(first.trials) == 2
    # a new process / session: same storage, same study name, two more trials
    second = hpo.run_study(
        hpo.open_study(DATASET, "lightgcn", url, seed=3), spaces["lightgcn"], data, n_trials=2, log=lines.append
    )
    assert second._study_id == first._study_id
    assert len(optuna.get_all_study_names(hpo.open_storage(url))) == 1
    finished = [t for t in second.trials if t.state.is_finished()]
    assert [t.number for t in finished] == [0, 1, 2, 3]
    # the resumed session did not redraw the first session's points
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 4
    assert sum(line.startswith("trial ") for line in lines) == 4
    best = hpo.best_config(second, spaces["lightgcn"])
    assert best.name == "lightgcn_tuned" and best.lr == second.best_params["lr"] and best.num_layers == 1
    assert 0.0 <= second.best_value <= 1.0


def test_best_config_yaml_is_a_loadable_registry_entry(tmp_path):
    spaces = toy_spaces(tmp_path)
    study = hpo.run_study(
        hpo.open_study(DATASET, "lightgcn", f"journal:///{tmp_path / 'j.log'}"),
        spaces["lightgcn"],
        toy_data(),
        n_trials=2,
    )
    path = hpo.write_best_yaml(tmp_path / "best.yaml", hpo.best_config(study, spaces["lightgcn"]), study)
    loaded = DATASET.registry.load(path)["lightgcn_tuned"]
    assert loaded.embedding_dim == study.best_params["embedding_dim"]
    assert loaded.max_epochs == 6 and "trial" in loaded.description
    table = hpo.trials_table(study)
    assert [row["number"] for row in table] == [0, 1] and "param_lr" in table[0]


ITEMKNN_SPACE = """
itemknn:
  base: toy_itemknn
  params:
    shrink: {type: float, low: 0.0, high: 50.0}
    neighbours: {type: categorical, choices: [null, 3, 20]}
"""


def test_baseline_study_gets_its_trials_and_promotes_its_best(tmp_path):
    """A closed-form family runs the study's n_trials like a GNN (no epochs: never pruned); each
    trial scores its config fitted on the training part on validation; the best trial becomes a
    promoted config of the chain."""
    space = toy_spaces(tmp_path, ITEMKNN_SPACE)["itemknn"]
    data = toy_data()
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = hpo.run_study(hpo.open_study(DATASET, "itemknn", url, seed=0), space, data, n_trials=4)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert all(t.intermediate_values == {} and t.user_attrs["epochs_run"] == 0 for t in study.trials)
    # the first trial is the registry config itself, so the study never ends below it
    assert study.trials[0].params == {"shrink": space.base.shrink, "neighbours": space.base.neighbours}
    assert study.trials[0].user_attrs["enqueued"] == "registry config toy_itemknn"
    assert study.best_value >= study.trials[0].value
    best = study.best_trial
    config = space.trial_config(best.params, "check")
    assert (config.shrink, config.neighbours) == (best.params["shrink"], best.params["neighbours"])
    model, _, _ = DATASET.fit(config, data.graph, data.split)
    assert best.value == pytest.approx(hpo.validation_metrics(model, data, config)[DATASET.protocol.monitor])
    assert 0.0 < best.value <= 1.0

    promoted, path = hpo.promote_best(DATASET, study, space, url, tmp_path / "lake")
    assert promoted.name == "hpo_itemknn" and path.exists()
    registered = DATASET.registry.full(tmp_path / "lake")["hpo_itemknn"]
    assert (registered.model, registered.shrink, registered.neighbours) == (
        "itemknn",
        best.params["shrink"],
        best.params["neighbours"],
    )
    assert f"trial {best.number}" in registered.description


def test_lastfm_baseline_study_promotes_a_final_fit_config(tmp_path):
    """The Last.fm chain's packaged EASE space on a toy dataset: trials fit on the validation cut's
    training part (never on validation), the promoted config keeps the registry's final fit."""
    from test_lastfm import fit_parts, toy_frames

    from spotify_engine_assets.datasets.lastfm import data as lastfm

    graph, parts = fit_parts(lastfm.build_dataset(*toy_frames()))
    space = hpo.get_space(LASTFM, "ease")
    assert space.base.train_on_validation
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = hpo.run_study(
        hpo.open_study(LASTFM, "ease", url, seed=0), space, hpo.StudyData(LASTFM, graph, parts), n_trials=3
    )
    assert study.study_name == "spotify-engine/lastfm/ease" and hpo.objective_names(study) == ["valid_ndcg@20"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert len({t.params["lam"] for t in study.trials}) == 3
    promoted, _ = hpo.promote_best(LASTFM, study, space, url, tmp_path / "lake")
    registered = LASTFM.registry.full(tmp_path / "lake")[promoted.name]
    assert promoted.name == "hpo_ease" and registered.lam == study.best_params["lam"] and registered.train_on_validation


def test_pruner_stops_a_hopeless_trial(tmp_path):
    spaces = toy_spaces(tmp_path)
    study = hpo.open_study(
        DATASET, "lightgcn", f"sqlite:///{tmp_path / 's.db'}", pruner_startup_trials=3, pruner_warmup_epochs=1
    )
    for _ in range(3):
        study.enqueue_trial({"lr": 0.05, "embedding_dim": 16, "l2": 0.0})
    study.enqueue_trial({"lr": 0.001, "embedding_dim": 8, "l2": 0.0})  # barely moves in 6 epochs
    hpo.run_study(study, spaces["lightgcn"], toy_data(), n_trials=4)
    states = [t.state for t in study.trials]
    assert states[:3] == [optuna.trial.TrialState.COMPLETE] * 3
    assert states[3] == optuna.trial.TrialState.PRUNED
    assert study.trials[3].user_attrs["epochs_run"] < 6


WORKER = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_hpo import toy_data, toy_spaces
    from spotify_engine_assets.core.experiments import hpo
    from spotify_engine_assets.datasets.listening import DATASET
    spaces = toy_spaces(Path({tmp!r}))
    study = hpo.open_study(DATASET, "lightgcn", {url!r}, seed=0, worker=int(sys.argv[1]))
    # barrier: both workers open the study (seeing 0 trials) before either runs a trial
    (Path({tmp!r}) / ("ready" + sys.argv[1])).touch()
    while not all((Path({tmp!r}) / f"ready{{i}}").exists() for i in (0, 1)):
        time.sleep(0.05)
    hpo.run_study(study, spaces["lightgcn"], toy_data(), n_trials=2, worker=int(sys.argv[1]))
    """
)


def test_two_workers_share_one_study_without_duplicates(tmp_path):
    """Two processes on one SQLite file (the default storage kind): every trial is recorded once,
    numbers are unique, and the workers draw different points (their samplers are seeded apart)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    (tmp_path / "w").mkdir()
    script = WORKER.format(tests=str(REPO / "tests"), tmp=str(tmp_path / "w"), url=url)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], env=env, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="spotify-engine/listening/lightgcn", storage=hpo.open_storage(url))
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    assert sorted(t.number for t in trials) == list(range(4))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert sum("enqueued" in t.user_attrs for t in trials) == 1  # worker 0 alone started from the registry config


# --- multi-objective (NSGA-II) ---------------------------------------------------------------


def _dominates(a: tuple[float, ...], b: tuple[float, ...], directions: tuple[str, ...]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    signed = [(x, y) if d == "maximize" else (-x, -y) for x, y, d in zip(a, b, directions)]
    return all(x >= y for x, y in signed) and any(x > y for x, y in signed)


def test_dominates_helper():
    directions = hpo.MULTI_DIRECTIONS  # max, min, max
    assert _dominates((0.5, 1.0, 0.2), (0.4, 2.0, 0.2), directions)
    assert not _dominates((0.5, 1.0, 0.2), (0.5, 1.0, 0.2), directions)
    assert not _dominates((0.5, 3.0, 0.2), (0.4, 2.0, 0.2), directions)


def test_multi_objective_study_yields_a_pareto_front(tmp_path):
    spaces = toy_spaces(tmp_path)
    data = toy_data()
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    lines: list[str] = []
    study = hpo.open_study(DATASET, "lightgcn", url, seed=1, multi_objective=True)
    assert study.study_name == "spotify-engine/listening/lightgcn/pareto"
    assert [d.name.lower() for d in study.directions] == list(hpo.MULTI_DIRECTIONS)
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    hpo.run_study(study, spaces["lightgcn"], data, n_trials=4, max_epochs=2, log=lines.append)

    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(finished) == 4
    for trial in finished:
        ndcg, seconds, coverage = trial.values
        assert 0.0 < ndcg <= 1.0 and 0.0 < coverage <= 1.0 and seconds > 0.0
        assert seconds == trial.user_attrs["train_seconds"]
        assert trial.intermediate_values == {}  # nothing reported: no pruning in this mode
    front = study.best_trials
    assert front
    front_numbers = {t.number for t in front}
    for a in front:
        for b in front:
            assert not _dominates(tuple(a.values), tuple(b.values), hpo.MULTI_DIRECTIONS), (a.number, b.number)
    for trial in finished:
        if trial.number not in front_numbers:
            assert any(_dominates(tuple(f.values), tuple(trial.values), hpo.MULTI_DIRECTIONS) for f in front), (
                trial.number
            )

    table = hpo.pareto_table(study)
    assert sorted(row["number"] for row in table) == sorted(front_numbers)
    assert set(table[0]) == {"number", *hpo.multi_objectives(DATASET), "param_lr", "param_embedding_dim", "param_l2"}
    by_number = {t.number: t for t in front}
    for row in table:
        assert [row[name] for name in hpo.multi_objectives(DATASET)] == by_number[row["number"]].values
        assert row["param_lr"] == by_number[row["number"]].params["lr"]
    assert sum(line.startswith("trial ") and "valid_ndcg@10" in line for line in lines) == 4
    rows = hpo.trials_table(study)
    assert len(rows) == 4 and all(row["valid_ndcg@10"] is not None for row in rows)

    # a single-objective study in the same storage is a separate entry
    single = hpo.open_study(DATASET, "lightgcn", url)
    assert single.study_name != study.study_name and len(single.trials) == 0
    assert len(optuna.get_all_study_names(hpo.open_storage(url))) == 2
    with pytest.raises(hpo.HpoError, match="single-objective"):
        hpo.pareto_table(single)


def test_validation_scores_match_ranking_metrics_on_the_validation_split(tmp_path):
    """The multi-objective values are computed on validation pairs with training pairs masked."""
    from spotify_engine_assets.core.data.graph import num_nodes_of
    from spotify_engine_assets.core.evaluation.metrics import ranking_metrics
    from spotify_engine_assets.core.models import build_model, embed

    spaces = toy_spaces(tmp_path)
    data = toy_data()
    config = spaces["lightgcn"].base
    view = data.view(config)
    model = build_model(config, SCHEMA, num_nodes_of(data.graph)).prepare(view)
    scores = hpo.validation_scores(model, data, config)
    user, song = embed(model, view)
    expected = ranking_metrics(user, song, data.valid_pairs, view[LISTENS].edge_index, ks=(10,))
    assert scores == {"valid_ndcg@10": expected["ndcg@10"], "valid_coverage@10": expected["coverage@10"]}
    unmasked = ranking_metrics(user, song, data.valid_pairs, torch.empty((2, 0), dtype=torch.long), ks=(10,))
    assert unmasked["ndcg@10"] != scores["valid_ndcg@10"]  # masking the training pairs matters


def test_study_name_with_other_directions_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    hpo.open_study(DATASET, "lightgcn", url, study_name="shared")
    with pytest.raises(hpo.HpoError, match="directions"):
        hpo.open_study(DATASET, "lightgcn", url, study_name="shared", multi_objective=True)
    hpo.open_study(DATASET, "lightgcn", url, study_name="other", multi_objective=True)
    with pytest.raises(hpo.HpoError, match="multi-objective"):
        hpo.open_study(DATASET, "lightgcn", url, study_name="other")


def test_pareto_front_plot_is_a_png_and_checks_lengths():
    import base64

    from spotify_engine_assets.core.plots import pareto_front

    markdown = pareto_front(
        [1.0, 2.0, 3.0], [0.1, 0.3, 0.2], [0.5, 0.6, 0.7], [True, True, False], "t", "s", "ndcg", "cov"
    )
    assert markdown.startswith("![t](data:image/png;base64,")
    assert base64.b64decode(markdown.split(",", 1)[1].rstrip(")")).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="lengths differ"):
        pareto_front([1.0], [0.1, 0.2], [0.5], [True], "t", "s", "ndcg", "cov")


def test_weighted_or_multi_task_trials_need_the_full_graph():
    """A sampled config that weights BPR or trains a task head reads the training edges' attributes:
    the study data always carries the full graph now (StudyData(dataset, graph, split)), so a trial
    reads them from it, and fails naming the fields when the graph lacks the columns (the toy graph
    has no play_count)."""
    from spotify_engine_assets.core.training.inputs import task_labels, training_inputs

    data = toy_data()
    base = hpo.get_space(DATASET, "lightgcn").base
    weighted = update_config(base, weight_play_count=1.0, task_repeat_weight=0.5)
    train = DATASET.training_index(data.split, weighted)
    with pytest.raises(ValueError, match=r"weight_play_count needs \S*play_count"):
        training_inputs(weighted, data.graph, SCHEMA, train)
    with pytest.raises(ValueError, match=r"task_repeat_weight needs \S*play_count"):
        task_labels(weighted, data.graph, SCHEMA, train)
    assert training_inputs(base, data.graph, SCHEMA, DATASET.training_index(data.split, base)) == {
        "weights": None,
        "task_labels": None,
    }
