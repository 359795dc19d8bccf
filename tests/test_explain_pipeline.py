"""Explanations, cold start and the recommend/explain command line on a materialized tiny chain:
the data stage and two model configs are materialized once into a temporary data lake, then
the `listening/explanations` and `listening/cold_start_report` assets and the `spotify-engine` commands run on it."""

from __future__ import annotations

import json
import os

import dagster as dg
import duckdb
import pytest

from spotify_engine_assets import cli
from spotify_engine_assets.core.presentation import group_name
from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV
from spotify_engine_assets.runner import run_config

MODELS = ("gat_enhanced", "most_popular")
SPINE_GROUPS = {
    group_name("listening", domain)
    for domain in ("ingestion", "sql", "graph", "training", "evaluation", "experiments", "explanations", "serving")
}


def spine_definitions() -> dg.Definitions:
    """The spine's domains plus experiments and explanations (independent of the other data sources' definitions)."""
    from spotify_engine_assets.defs import listening, sql
    from spotify_engine_assets.defs.resources import DataLake, LakeIOManager, TorchRuntime, Warehouse

    lake = DataLake()
    return dg.Definitions.merge(
        listening.defs,
        sql.build_sql_definitions(sql.load_project()),
        dg.Definitions(
            resources={
                "lake": lake,
                "warehouse": Warehouse(lake=lake),
                "torch_runtime": TorchRuntime(),
                "io_manager": LakeIOManager(lake=lake),
            }
        ),
    )


@pytest.fixture(scope="module")
def lake(tiny_lake_template, tmp_path_factory):
    """The tiny data stage (a copy of the session's) and MODELS' trained models."""
    from conftest import copy_tiny_lake

    from spotify_engine_assets.defs.chain import register_configs
    from spotify_engine_assets.defs.listening import CHAIN

    defs = spine_definitions()
    root, instance = copy_tiny_lake(tiny_lake_template, tmp_path_factory.mktemp("explain") / "lake")
    register_configs(CHAIN, instance, root)
    patch = pytest.MonkeyPatch()
    patch.setenv(DATA_LAKE_ENV, str(root))

    # the spine's groups only: the other data sources' SQL models are not needed here
    spine = [a for a in defs.assets if set(a.group_names_by_key.values()) <= SPINE_GROUPS]

    def materialize(selection, config, partition=None):
        return dg.materialize(
            spine,
            selection=selection,
            run_config=config,
            instance=instance,
            resources=defs.resources,
            partition_key=partition,
            raise_on_error=False,
        )

    for name in MODELS:
        assert materialize(
            dg.AssetSelection.assets(["listening", "trained_model"]), run_config("tiny_train.yaml"), name
        ).success
    yield root, materialize
    patch.undo()


def _warehouse_ids(root, sql):
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(sql).fetchall()


def _user_and_unplayed_song(root):
    ((user, song, title),) = _warehouse_ids(
        root,
        """
        SELECT u.user_id, s.song_id, s.title FROM marts.users u, marts.songs s
        WHERE NOT EXISTS (SELECT 1 FROM marts.user_song_interactions i WHERE i.user_id = u.user_id AND i.song_id = s.song_id)
          AND EXISTS (SELECT 1 FROM marts.user_song_interactions i WHERE i.user_id = u.user_id)
        ORDER BY u.user_id, s.song_id LIMIT 1""",
    )
    return user, song, title


def test_explanations_asset_is_faithful_and_rendered(lake):
    root, materialize = lake
    config = run_config()
    config.setdefault("ops", {})["listening__explanations"] = {"config": {"users": 2, "k": 3, "faithfulness_users": 6}}
    result = materialize(dg.AssetSelection.assets(["listening", "explanations"]), config)
    assert result.success
    output = load_torch(ArtifactStore(root / "artifacts").current(["listening", "explanations"]) / "data.pt")
    assert set(output) == {"gat_enhanced"}  # only the requested configs, not most_popular
    explained = output["gat_enhanced"]["explained"]
    assert len(explained) == 2 and all(len(entry["explanations"]) == 3 for entry in explained)
    for entry in explained:
        assert [e["song_id"] for e in entry["explanations"]] == [r["song_id"] for r in entry["recommendations"]]
        assert not any(e["already_played"] for e in entry["explanations"])
    # the faithfulness test on the trained model: top-attributed removal hurts more than random
    faith = output["gat_enhanced"]["faithfulness"]
    assert faith["pairs"] >= 15
    assert faith["mean_drop_top"] > faith["mean_drop_random"]
    assert faith["top_beats_random_share"] > 0.5
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["explanations_faithful"].passed
    materialization = result.asset_materializations_for_node("listening__explanations")[0]
    markdown = materialization.metadata["explanations"].value
    assert "## gat_enhanced" in markdown and "Top contributing evidence" in markdown and "Faithfulness over" in markdown
    assert (root / "reports" / "listening" / "explanations.md").read_text().strip() == markdown.strip()


def test_explanations_name_unmaterialized_configs(lake):
    _, materialize = lake
    config = run_config()
    config.setdefault("ops", {})["listening__explanations"] = {"config": {"configs": ["lightgcn"]}}
    result = materialize(dg.AssetSelection.assets(["listening", "explanations"]), config)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "lightgcn" in message and "materialized: gat_enhanced, most_popular" in message


def test_cold_start_report_on_heldout_users(lake):
    root, materialize = lake
    config = run_config()
    config.setdefault("ops", {})["listening__cold_start_report"] = {"config": {"max_epochs": 10, "fraction": 0.3}}
    result = materialize(dg.AssetSelection.assets(["listening", "cold_start_report"]), config)
    assert result.success
    import polars as pl

    frame = pl.read_parquet(
        ArtifactStore(root / "artifacts").current(["listening", "cold_start_report"]) / "data.parquet"
    )
    rows = {(r["method"], r["revealed"]): r for r in frame.iter_rows(named=True)}
    popular, genres = rows[("most_popular", 0)], rows[("genres_only (top 3)", 0)]
    assert genres["ndcg@10"] > popular["ndcg@10"]  # a few stated genres beat most-popular for new users
    metadata = result.asset_materializations_for_node("listening__cold_start_report")[0].metadata
    tuned = metadata["n0_validation_ndcg@10"].value
    n0 = max(tuned, key=lambda key: (tuned[key], -float(key)))  # chosen on validation: the best, smallest on ties
    assert f"n0 = {float(n0):g} (chosen on validation)" in metadata["adaptive_weight"].value
    for n in (1, 3, 5, 10):
        assert rows[("songs_adaptive_foldin", n)]["genre_weight"] == pytest.approx(
            float(n0) / (float(n0) + n) if float(n0) else 0.0
        )
        assert ("songs_model_inductive", n) in rows
    assert {"active_genre", "active_model"} <= {method for method, _ in rows}
    assert metadata["heldout_users"].value > 10


def test_cli_recommend_table_json_and_explain(lake, capsys):
    root, _ = lake
    user, _, _ = _user_and_unplayed_song(root)
    played = {
        song
        for (song,) in _warehouse_ids(root, f"SELECT song_id FROM marts.user_song_interactions WHERE user_id = {user}")
    }
    assert cli.main(["recommend", "--model", "gat_enhanced", "--user", str(user), "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert f"gat_enhanced: top 5 for user {user}" in out and "title" in out and "artist" in out
    assert cli.main(["recommend", "--model", "gat_enhanced", "--user", str(user), "--k", "5", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    songs = [row["song_id"] for row in payload["recommendations"]]
    assert len(songs) == 5 and not set(songs) & played
    titles = dict(
        _warehouse_ids(root, f"SELECT song_id, title FROM marts.songs WHERE song_id IN ({', '.join(map(str, songs))})")
    )
    assert [row["title"] for row in payload["recommendations"]] == [titles[s] for s in songs]
    assert cli.main(["recommend", "--model", "gat_enhanced", "--user", str(user), "--k", "2", "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.count("Why user") == 2 and out.count("Top contributing evidence") == 2


def test_cli_explain_and_new_users(lake, capsys):
    root, _ = lake
    user, song, title = _user_and_unplayed_song(root)
    assert cli.main(["explain", "--model", "gat_enhanced", "--user", str(user), "--song", str(song)]) == 0
    out = capsys.readouterr().out
    assert f'Why user {user} may like "{title}" (song {song})' in out and "model score" in out
    assert cli.main(["explain", "--model", "gat_enhanced", "--user", str(user), "--song", str(song), "--json"]) == 0
    explanation = json.loads(capsys.readouterr().out)
    assert explanation["song_id"] == song and explanation["evidence"]
    ((genre,),) = _warehouse_ids(root, "SELECT name FROM marts.genres ORDER BY genre_id LIMIT 1")
    assert cli.main(["recommend", "--model", "gat_enhanced", "--genres", genre, "--k", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["genre_weight"] == 1.0 and all(genre in row["genres"] for row in payload["recommendations"])
    assert cli.main(["recommend", "--model", "gat_enhanced", "--songs", str(song), "--k", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert song not in [row["song_id"] for row in payload["recommendations"]] and payload["interactions"] == 1


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["recommend", "--model", "gat_enhanced", "--user", "987654"], r"unknown user '987654'; 150 users exist"),
        (
            ["explain", "--model", "gat_enhanced", "--user", "USER", "--song", "987654"],
            r"unknown song '987654'; 600 songs exist",
        ),
        (
            ["recommend", "--model", "nope", "--user", "USER"],
            r"unknown listening model config 'nope'; configs in the registry: artist_genre_popularity, ease, gat_basic",
        ),
        (
            ["recommend", "--model", "lightgcn", "--user", "USER"],
            r"'lightgcn' has no materialized listening/trained_model.*materialized: gat_enhanced, most_popular",
        ),
        (["recommend", "--model", "gat_enhanced", "--genres", "polka"], r"unknown genre 'polka'; 10 genres exist"),
        (["recommend", "--model", "gat_enhanced"], r"give --user ID"),
    ],
)
def test_cli_unknown_ids_are_clear_errors(lake, capsys, argv, expected):
    import re

    root, _ = lake
    user, _, _ = _user_and_unplayed_song(root)
    assert cli.main([str(user) if a == "USER" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err


def _serving_payload(root, config="gat_enhanced"):
    return load_torch(ArtifactStore(root / "artifacts").current(["listening", "trained_model"], config) / "data.pt")[
        "serving"
    ]


def test_recommendations_asset_is_every_users_ranking(lake, capsys):
    """listening/recommendations: top-k of every user as Parquet, no known song, the same list
    and scores as `spotify-engine recommend` (the n0 stored with the model)."""
    import polars as pl

    root, materialize = lake
    config = run_config()
    config.setdefault("ops", {})["listening__recommendations"] = {"config": {"k": 5}}
    for name in MODELS:
        assert materialize(dg.AssetSelection.assets(["listening", "recommendations"]), config, name).success
    folder = ArtifactStore(root / "artifacts").current(["listening", "recommendations"], "gat_enhanced")
    frame = pl.read_parquet(folder / "data.parquet")
    assert frame.columns == ["user_id", "rank", "song_id", "score", "model_score", "genre_score", "genre_weight"]
    ((users,),) = _warehouse_ids(root, "SELECT count(*) FROM marts.users")
    assert (
        frame["user_id"].n_unique() == users and frame.height == 5 * users
    )  # every tiny-world user has >= 5 unseen songs
    assert (
        frame.group_by("user_id").agg(pl.col("rank").sort()).get_column("rank").to_list() == [[1, 2, 3, 4, 5]] * users
    )
    known = pl.DataFrame(
        _warehouse_ids(root, "SELECT user_id, song_id FROM marts.user_song_interactions"),
        schema=["user_id", "song_id"],
        orient="row",
    )
    assert frame.join(known, on=["user_id", "song_id"], how="inner").is_empty()  # no training (or held-out) song
    user, _, _ = _user_and_unplayed_song(root)
    assert cli.main(["recommend", "--model", "gat_enhanced", "--user", str(user), "--k", "5", "--json"]) == 0
    served = json.loads(capsys.readouterr().out)["recommendations"]
    rows = frame.filter(pl.col("user_id") == user).sort("rank")
    assert rows["song_id"].to_list() == [row["song_id"] for row in served]
    assert rows["score"].to_list() == pytest.approx([row["score"] for row in served], rel=1e-5)
    popular = pl.read_parquet(
        ArtifactStore(root / "artifacts").current(["listening", "recommendations"], "most_popular") / "data.parquet"
    )
    assert popular.height == 5 * users


def test_diversified_recommendations_asset_and_cli_agree(lake, capsys):
    """listening/recommendations with ``diversify: artist-cap`` (one song per artist): every user's
    list has distinct artists and is what `recommend --diversify artist-cap` serves."""
    import polars as pl

    root, materialize = lake
    config = run_config()
    config.setdefault("ops", {})["listening__recommendations"] = {
        "config": {"k": 5, "diversify": "artist-cap", "max_per_artist": 1}
    }
    result = materialize(dg.AssetSelection.assets(["listening", "recommendations"]), config, "gat_enhanced")
    assert result.success
    metadata = result.asset_materializations_for_node("listening__recommendations")[0].metadata
    assert metadata["diversify"].value == {"method": "artist-cap", "max_per_artist": 1, "pool": 50}
    frame = pl.read_parquet(
        ArtifactStore(root / "artifacts").current(["listening", "recommendations"], "gat_enhanced") / "data.parquet"
    )
    artists = pl.DataFrame(
        _warehouse_ids(root, "SELECT song_id, artist_id FROM marts.songs"),
        schema=["song_id", "artist_id"],
        orient="row",
    )
    per_user = (
        frame.join(artists, on="song_id")
        .group_by("user_id")
        .agg(pl.len().alias("n"), pl.col("artist_id").n_unique().alias("a"))
    )
    assert per_user.height == frame["user_id"].n_unique() and (per_user["n"] == per_user["a"]).all()
    assert (per_user["n"] == 5).all()
    user, _, _ = _user_and_unplayed_song(root)
    argv = ["recommend", "--model", "gat_enhanced", "--user", str(user), "--k", "5", "--json"]
    assert cli.main(argv + ["--diversify", "artist-cap", "--max-per-artist", "1"]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["diversify"]["method"] == "artist-cap"
    assert frame.filter(pl.col("user_id") == user).sort("rank")["song_id"].to_list() == [
        r["song_id"] for r in served["recommendations"]
    ]
    artist_of = dict(artists.iter_rows())
    assert len({artist_of[r["song_id"]] for r in served["recommendations"]}) == 5


def test_serving_reads_the_n0_stored_with_the_model(lake, capsys, monkeypatch, tmp_path):
    """recommend, explain and recommend --explain never search n0: they read the one trained_model
    chose on validation; an artifact from before it was stored serves the default and says so."""
    import shutil

    import torch

    from spotify_engine_assets.core.serving import cold_start
    from spotify_engine_assets.core.serving.recommend import DEFAULT_GENRE_PRIOR

    root, _ = lake
    stored = _serving_payload(root)
    assert (
        stored["genre_prior_source"] == "validation"
        and str(float(stored["genre_prior"])) in stored["genre_prior_validation_ndcg"]
    )

    def searched(*args, **kwargs):
        raise AssertionError("tune_genre_prior called while serving")

    monkeypatch.setattr(cold_start, "tune_genre_prior", searched)
    user, song, _ = _user_and_unplayed_song(root)
    assert cli.main(["recommend", "--model", "gat_enhanced", "--user", str(user), "--k", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["genre_prior"] == stored["genre_prior"] and payload["genre_prior_source"] == "validation"
    assert cli.main(["recommend", "--model", "gat_enhanced", "--user", str(user), "--k", "2", "--explain"]) == 0
    assert f"n0 = {stored['genre_prior']:g})" in capsys.readouterr().out
    assert cli.main(["explain", "--model", "gat_enhanced", "--user", str(user), "--song", str(song)]) == 0
    capsys.readouterr()
    # the same model materialized before n0 was stored: the default, a note, no search
    old = tmp_path / "old_lake"
    shutil.copytree(root, old, ignore=shutil.ignore_patterns("dagster_home", "checkpoints"))
    store = ArtifactStore(old / "artifacts")
    artifact = load_torch(store.current(["listening", "trained_model"], "gat_enhanced") / "data.pt")
    del artifact["serving"]
    store.write(["listening", "trained_model"], "gat_enhanced", lambda folder: torch.save(artifact, folder / "data.pt"))
    monkeypatch.setenv(DATA_LAKE_ENV, str(old))
    assert cli.main(["recommend", "--model", "gat_enhanced", "--user", str(user), "--k", "3", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["genre_prior"] == DEFAULT_GENRE_PRIOR
    assert "note: trained_model[gat_enhanced]: n0 = 5 (default: the artifact was materialized before n0" in captured.err


def test_cli_imports_no_dagster_and_recommend_no_graph_library(lake):
    """Importing the command line loads neither Dagster nor torch; `recommend` runs on the serving
    index with torch only (no PyTorch Geometric, no Dagster)."""
    import subprocess
    import sys

    root, _ = lake
    user, _, _ = _user_and_unplayed_song(root)
    script = (
        "import sys, contextlib, io\n"
        "import spotify_engine_assets.cli as cli\n"
        "assert not {'dagster', 'torch', 'torch_geometric', 'polars'} & set(sys.modules), sorted(sys.modules)\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert cli.main(['recommend', '--model', 'gat_enhanced', '--user', '{user}', '--k', '3']) == 0\n"
        f"    assert cli.main(['recommend', '--model', 'gat_enhanced', '--user', '{user}', '--k', '3', '--diversify', 'mmr']) == 0\n"
        "print(sorted({'dagster', 'torch_geometric', 'spotify_engine_assets.definitions', 'spotify_engine_assets.datasets'}"
        " & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, DATA_LAKE_ENV: str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
