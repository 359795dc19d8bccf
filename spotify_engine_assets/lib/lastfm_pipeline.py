"""Last.fm 2K model registry and one entry point to fit and score any of its models.

``configs/lastfm_models.yaml`` maps a config name to ``kind`` plus hyperparameters (tuned on the
validation cut of ``train.tsv``; see ``benchmarks/bench_lastfm.py --tune``). :func:`fit_config`
fits one config on a training part and returns a score function for
:func:`spotify_engine_assets.lib.lastfm.evaluate_scores` and the training seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from . import lastfm_baselines as baselines
from . import lastfm_models as models
from .lastfm import ARTIST, TAG, USER, LastfmData, ScoreFn, build_graph, evaluate_scores, validation_split
from .lastfm_training import TrainSettings, scorer, train
from .paths import configs_dir

KINDS = {
    "most_popular": set(),
    "itemknn": {"shrink", "neighbours"},
    "ease": {"lam"},
    "als": {"factors", "regularization", "alpha", "iterations"},
    "graph_ease": {"lam", "tag_weight", "friend_weight", "min_tag_artists"},
    "lightgcn": {"embedding_dim", "num_layers"},
    "tag_friend_gat": {"embedding_dim", "num_layers", "heads", "dropout", "use_tags", "use_friends", "conv", "side_weight"},
}
TRAINABLE = {"lightgcn", "tag_friend_gat"}
TRAIN_FIELDS = set(TrainSettings.__dataclass_fields__)


def registry_path() -> Path:
    return configs_dir() / "lastfm_models.yaml"


def load_registry(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Config name -> config, every field validated against its kind."""
    path = path or registry_path()
    document = yaml.safe_load(path.read_text()) or {}
    for name, config in document.items():
        validate(name, config)
    return document


def validate(name: str, config: dict[str, Any]) -> None:
    kind = config.get("kind")
    if kind not in KINDS:
        raise ValueError(f"lastfm config {name}: unknown kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    allowed = KINDS[kind] | ({"kind"} | (TRAIN_FIELDS if kind in TRAINABLE else set()))
    unknown = set(config) - allowed
    if unknown:
        raise ValueError(f"lastfm config {name}: unknown field(s) {', '.join(sorted(unknown))} for kind {kind}")


@dataclass
class Fitted:
    score_fn: ScoreFn
    seconds: float
    model: Any
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None


def split_settings(config: dict[str, Any]) -> tuple[dict[str, Any], TrainSettings]:
    params = {k: v for k, v in config.items() if k != "kind" and k not in TRAIN_FIELDS}
    settings = TrainSettings(**{k: v for k, v in config.items() if k in TRAIN_FIELDS})
    return params, settings


def fit_config(
    config: dict[str, Any],
    data: LastfmData,
    train_pairs: torch.Tensor,
    heldout: torch.Tensor,
    valid: torch.Tensor | None = None,
    log=None,
) -> Fitted:
    """Fit ``config`` on ``train_pairs``.

    ``heldout``: every pair the model must not learn from (test, plus validation when tuning);
    it only filters side information (tag assignments) - see :func:`build_graph`. ``valid``:
    for trainable models, early stopping on it (otherwise the config's ``epochs`` are run).
    """
    kind = config["kind"]
    params, settings = split_settings(config)
    users, items = data.num_users, data.num_artists
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    if kind in TRAINABLE or kind == "graph_ease":
        graph = build_graph(data, train_pairs, heldout)
    if kind == "most_popular":
        model = baselines.MostPopular(users, items).fit(train_pairs)
    elif kind == "itemknn":
        model = baselines.ItemKNN(users, items, **params).fit(train_pairs)
    elif kind == "ease":
        model = baselines.EASE(users, items, **params).fit(train_pairs)
    elif kind == "als":
        model = baselines.ALS(users, items, **params).fit(train_pairs)
    elif kind == "graph_ease":
        model = models.GraphEASE(users, items, **params).fit(graph)
    else:
        if kind == "lightgcn":
            model = models.LastfmLightGCN(users, items, **params)
        else:
            model = models.TagFriendGAT({USER: users, ARTIST: items, TAG: data.num_tags}, **params)
        outcome = train(model, graph, items, settings, valid=valid, log=log)
        return Fitted(scorer(model, graph, settings), outcome.seconds, model, outcome.history, outcome.best_epoch)
    return Fitted(model.scores, time.perf_counter() - start, model)


def validation_parts(data: LastfmData, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fit, valid, heldout) for tuning: the validation cut of train.tsv; heldout = valid + test."""
    fit, valid = validation_split(data.train, seed=seed)
    return fit, valid, torch.cat([valid, data.test], dim=1)


def evaluate_config(config: dict[str, Any], data: LastfmData, stage: str, log=None) -> tuple[dict[str, float], Fitted]:
    """``stage="valid"``: fit on the validation cut's training part, score validation (trainable
    models early-stop on it). ``stage="test"``: fit on all of train.tsv (trainable models for the
    config's ``epochs``), score test once."""
    if stage == "valid":
        fit, valid, heldout = validation_parts(data)
        fitted = fit_config(config, data, fit, heldout, valid=valid, log=log)
        return evaluate_scores(fitted.score_fn, fit, valid, data.num_artists), fitted
    if stage == "test":
        fitted = fit_config(config, data, data.train, data.test, log=log)
        return evaluate_scores(fitted.score_fn, data.train, data.test, data.num_artists), fitted
    raise ValueError(f"stage must be valid or test, got {stage!r}")
