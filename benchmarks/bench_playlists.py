"""The playlist-completion metric table: PlaylistGAT vs most-popular, ItemKNN and LightGCN.

Two datasets, each through the same library code the assets run (loader -> playlist SQL models
-> graph with filters -> position split -> models in their registry modes -> RecSys 2018 test
metrics): the default data (Kaggle-format files derived from the default synthetic world) and
the real 500-row Kaggle sample from ``../shared`` (when present).

    .venv/bin/python benchmarks/bench_playlists.py [--skip-sample]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import torch

from spotify_engine_assets.lib import kaggle
from spotify_engine_assets.lib import playlist_models as M
from spotify_engine_assets.lib import playlists as P
from spotify_engine_assets.lib.generator import GeneratorSettings, generate_world
from spotify_engine_assets.lib.paths import REPO_ROOT, playlist_sql_dir
from spotify_engine_assets.lib.sqlmodels import load_sql_project, materialize_model

SAMPLE = REPO_ROOT.parent / "shared" / "data" / "kaggle_spotify_playlists_sample" / "spotify_dataset_sample.csv"
COLUMNS = ("r_precision", "ndcg@10", "ndcg@500", "recall@10", "recall@50", "recall@500", "clicks")


def warehouse_from(csv: Path, genres: Path | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    stats = kaggle.ingest_playlist_csv(con, csv, "base")
    kaggle.create_tables(con, "kaggle_raw.landed_entries", "kaggle_raw.landed_rejects")
    kaggle.create_empty_enrichments(con, "kaggle_raw.artist_genres", "kaggle_raw.track_features")
    if genres:
        kaggle.load_artist_genres(con, genres)
    for model in load_sql_project(playlist_sql_dir(), kaggle.KAGGLE_SOURCES).models.values():
        materialize_model(con, model)
    print(f"  ingested {stats.accepted:,} rows, rejected {stats.rejected} {stats.reasons}")
    return con


def table(con, graph_settings: P.GraphSettings, split_settings: P.SplitSettings) -> None:
    frames = [con.sql(f"SELECT * FROM playlists.{t}").pl() for t in ("playlist_tracks", "tracks", "artist_genres")]
    try:
        data, _ = P.build_playlist_graph(*frames, graph_settings)
    except P.PlaylistGraphError as error:
        print(f"  not evaluable: {error}")
        return
    print(f"  graph: {P.graph_summary(data)}")
    labels = P.split_labels(data[P.CONTAINS].edge_index, data[P.CONTAINS].position, data["playlist"].num_nodes, split_settings)
    split = P.labels_to_indices(labels)
    if split["test"].numel() == 0:
        lengths = torch.bincount(data[P.CONTAINS].edge_index[0])
        print(
            f"  not evaluable: no playlist has {2 * split_settings.holdout + split_settings.min_train_tracks} tracks "
            f"(longest: {int(lengths.max())}; playlists: {data['playlist'].num_nodes})"
        )
        return
    assert sum(P.leakage_report(data, split).values()) == 0
    view = P.message_passing_view(data, split["train"])
    edges = data[P.CONTAINS].edge_index
    valid, test = edges[:, split["valid"]], edges[:, split["test"]]
    known = torch.cat([edges[:, split["train"]], valid], 1)
    registry = M.default_playlist_registry()
    print(f"  | config | mode | {' | '.join(COLUMNS)} | playlists | seconds |")
    print(f"  |---|---|{'---|' * len(COLUMNS)}---|---|")
    for name, config in registry.configs.items():
        mode = registry.modes[config.mode]
        sample = M.sample_playlists(data["playlist"].num_nodes, mode.playlists, config.seed)
        started = time.perf_counter()
        state = None
        if config.trainable:
            model = M.build_trainable(config, {t: data[t].num_nodes for t in data.node_types})
            state = M.train_bpr(model, view, valid, config, mode.epochs, sample)["best_state"]
        metrics = M.evaluate(M.scorer_for(config, view, state), test, known, data["track"].num_nodes, sample)
        seconds = time.perf_counter() - started
        cells = " | ".join(f"{metrics[c]:.4f}" if c != "clicks" else f"{metrics[c]:.2f}" for c in COLUMNS)
        print(f"  | {name} | {config.mode} | {cells} | {metrics['playlists_evaluated']} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-sample", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        world = generate_world(GeneratorSettings())
        con = duckdb.connect()
        con.execute("CREATE SCHEMA raw")
        for name, frame in world.tables().items():
            con.register("frame", frame)
            con.execute(f"CREATE TABLE raw.{name} AS SELECT * FROM frame")
            con.unregister("frame")
        kaggle.write_synthetic_kaggle_files(con, Path(folder))
        print("default data (Kaggle-format files from the default synthetic world; min playlist size 5, k-core 2, holdout 2):")
        table(warehouse_from(Path(folder) / "spotify_dataset.csv", Path(folder) / "data_w_genres.csv"),
              P.GraphSettings(5, 2), P.SplitSettings(2, 3))
    if not args.skip_sample:
        if not SAMPLE.exists():
            print(f"real sample: skipped ({SAMPLE} is absent)")
            return
        print("real 500-row Kaggle sample (no filters, holdout 1, min 1 training track):")
        table(warehouse_from(SAMPLE, None), P.GraphSettings(1, 1), P.SplitSettings(1, 1))


if __name__ == "__main__":
    main()
