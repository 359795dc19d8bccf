"""The playlist-completion metric table: PlaylistGAT vs most-popular, ItemKNN and LightGCN.

Two datasets, each through the same library code the assets run (loader -> playlist SQL models
-> graph with filters -> position split -> models in their registry modes -> RecSys 2018 test
metrics): the default data (Kaggle-format files derived from the default synthetic world) and
the real 500-row Kaggle sample from ``../shared`` (when present). For the sample the loader and
filter counts are always printed; metrics only when at least ``--min-evaluable`` playlists have
held-out tracks (a table over a handful of playlists means nothing).

``--tune`` searches LightGCN and PlaylistGAT settings on the VALIDATION split only (each
candidate trains with early stopping on validation R-precision; no test metric is computed)
and prints the ranking; the chosen settings go into ``configs/playlist_models.yaml`` by hand,
and the plain run then reports test once.

    .venv/bin/python benchmarks/bench_playlists.py [--skip-sample] [--tune [--only NAME ...]]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import torch

from spotify_engine_assets.core.config import update_config
from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.data.sqlmodels import load_sql_project, materialize_model
from spotify_engine_assets.core.storage.paths import REPO_ROOT, sql_models_dir
from spotify_engine_assets.core.training.trainer import choose_fusion_weight
from spotify_engine_assets.datasets.listening.generator import GeneratorSettings, generate_world
from spotify_engine_assets.datasets.playlists import DATASET, kaggle
from spotify_engine_assets.datasets.playlists import graph as P
from spotify_engine_assets.datasets.playlists.metrics import evaluate, track_artists

SAMPLE = REPO_ROOT.parent / "shared" / "data" / "kaggle_spotify_playlists_sample" / "spotify_dataset_sample.csv"
COLUMNS = ("r_precision", "r_precision_track", "ndcg@10", "ndcg@500", "recall@10", "recall@50", "recall@500", "clicks")
MIN_EVALUABLE = 30

# Validation-only search space (lr, size, depth, L2, epochs/patience, co-occurrence relation,
# playlist ids); every candidate is a registry config with these fields replaced (sample and
# epochs: the registry's, 5,000 playlists and 25 epochs, early stopping on validation).
TUNE_GRID = {
    "lightgcn": [
        {"lr": 0.01, "num_layers": 2, "l2": 1e-4, "patience": 5},
        {"lr": 0.01, "num_layers": 2, "l2": 1e-2, "patience": 5},
        {"lr": 0.01, "num_layers": 3, "l2": 1e-4, "patience": 5},
        {"lr": 0.02, "num_layers": 2, "l2": 1e-4, "patience": 5},
    ],
    "playlist_gat": [
        {"lr": 0.003, "cooccurrence_k": 0, "user_ids": True, "patience": 4},
        {"lr": 0.003, "cooccurrence_k": 20, "user_ids": False, "patience": 4},
        {"lr": 0.01, "cooccurrence_k": 20, "user_ids": True, "patience": 4},
        {"lr": 0.01, "cooccurrence_k": 20, "user_ids": False, "patience": 4},
    ],
}


def playlist_sql_project():
    """Only the ``playlists`` folder of the SQL project (other folders read other sources)."""
    folder = Path(tempfile.mkdtemp(prefix="playlist-sql-"))
    shutil.copytree(sql_models_dir() / "playlists", folder / "playlists")
    try:
        return load_sql_project(folder, kaggle.KAGGLE_SOURCES)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def warehouse_from(csv: Path, genres: Path | None) -> tuple[duckdb.DuckDBPyConnection, kaggle.IngestStats]:
    con = duckdb.connect()
    stats = kaggle.ingest_playlist_csv(con, csv, "base")
    kaggle.create_tables(con, "kaggle_raw.landed_entries", "kaggle_raw.landed_rejects")
    kaggle.create_empty_enrichments(con, "kaggle_raw.artist_genres", "kaggle_raw.track_features")
    if genres:
        kaggle.load_artist_genres(con, genres)
    for model in playlist_sql_project().models.values():
        materialize_model(con, model)
    print(
        f"  loader: {stats.data_lines:,} data lines -> {stats.accepted:,} accepted, {stats.rejected} rejected "
        f"{stats.reasons or ''} (unaccounted {stats.unaccounted})"
    )
    return con, stats


def prepare(con, graph_settings: P.GraphSettings, split_settings: P.SplitSettings) -> dict | str:
    """The graph, split and view, or the reason why nothing is evaluable."""
    frames = [con.sql(f"SELECT * FROM playlists.{t}").pl() for t in ("playlist_tracks", "tracks", "artist_genres")]
    sizes = frames[0].group_by("playlist_key").len()["len"]
    print(
        f"  warehouse: {sizes.len():,} playlists, {frames[1].height:,} tracks, {frames[0].height:,} playlist-track pairs; "
        f"playlist sizes: median {sizes.median():.0f}, max {sizes.max()}, "
        f"{int((sizes >= 2 * split_settings.holdout + split_settings.min_train_tracks).sum())} with >= "
        f"{2 * split_settings.holdout + split_settings.min_train_tracks} tracks"
    )
    try:
        data, rounds = P.build_playlist_graph(*frames, graph_settings)
    except P.PlaylistGraphError as error:
        return str(error)
    print(
        f"  after filters ({graph_settings}): {data[P.CONTAINS].edge_index.size(1)} playlist-track edges in {len(rounds)} k-core rounds"
    )
    labels = P.split_labels(
        data[P.CONTAINS].edge_index, data[P.CONTAINS].position, data["playlist"].num_nodes, split_settings
    )
    split = labels_to_indices(labels)
    edges = data[P.CONTAINS].edge_index
    evaluable = int(torch.unique(edges[0, split["test"]]).numel())
    print(
        f"  split ({split_settings}): {evaluable} evaluable playlists (with held-out tracks) of {data['playlist'].num_nodes}"
    )
    leaks = P.split_violations(data, {"position": split})
    if sum(leaks.values()):
        raise SystemExit(f"leakage check failed: {leaks}")
    return {"data": data, "split": split, "evaluable": evaluable}


def _parts(prepared: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    edges, split = prepared["data"][P.CONTAINS].edge_index, prepared["split"]
    return edges[:, split["train"]], edges[:, split["valid"]], edges[:, split["test"]]


def table(prepared: dict, configs: dict | None = None) -> None:
    """Test metrics of every registry config (trainable ones early-stopped on validation)."""
    data, split = prepared["data"], prepared["split"]
    train, valid, test = _parts(prepared)
    known = torch.cat([train, valid], 1)
    artists = track_artists(data)
    protocol = DATASET.protocol.for_graph(data)
    configs = configs or DATASET.registry.base
    print(f"  | config | sample | {' | '.join(COLUMNS)} | playlists | epochs | seconds |")
    print(f"  |---|---|{'---|' * len(COLUMNS)}---|---|---|")
    trained: dict[str, tuple] = {}  # configs differing only by fusion train once (same seed)
    for name, config in configs.items():
        started = time.perf_counter()
        sample = DATASET.sample(data, config)
        epochs = "-"
        if config.trainable:
            key = repr(config.model_dump(exclude={"name", "description", "fusion"}))
            if key not in trained:
                model, result, view = DATASET.fit(update_config(config, fusion=None), data, split)
                trained[key] = (
                    model.state_dict(),
                    f"{result.best_epoch}/{result.epochs_run}",
                    time.perf_counter() - started,
                )
            weights, epochs, seconds_before = trained[key]
            started -= seconds_before
            model = DATASET.build(config, data)
            model.load_state_dict({**model.state_dict(), **weights})  # a fusion config keeps its fusion_weight buffer
            view = DATASET.view_for(data, split, config)
            model.prepare(view)
            if config.fusion is not None:
                fusion = choose_fusion_weight(model, view, valid, protocol, sample)
                epochs += f", w={float(model.fusion_weight):.1f} (valid {max(fusion.values()):.4f} vs {fusion[0.0]:.4f} unfused)"
        else:
            model, _, _ = DATASET.fit(config, data, split)
        metrics = evaluate(model.score, test, known, data["track"].num_nodes, sample, track_artist=artists)
        seconds = time.perf_counter() - started
        cells = " | ".join(f"{metrics[c]:.4f}" if c != "clicks" else f"{metrics[c]:.2f}" for c in COLUMNS)
        print(
            f"  | {name} | {config.user_sample} | {cells} | {metrics['playlists_evaluated']} | {epochs} | {seconds:.1f} |",
            flush=True,
        )


def tune(prepared: dict, only: list[str]) -> None:
    """Validation-only search; prints validation metrics (never test) per candidate."""
    data, split = prepared["data"], prepared["split"]
    train, valid, _ = _parts(prepared)
    artists = track_artists(data)
    registry = DATASET.registry.base
    for name in only:
        base = registry[name]
        sample = DATASET.sample(data, base)
        # the non-trainable references on the same validation split
        for reference in ("most_popular", "itemknn"):
            model, _, _ = DATASET.fit(registry[reference], data, split)
            metrics = evaluate(
                model.score, valid, train, data["track"].num_nodes, sample, ks=(10,), track_artist=artists
            )
            print(f"  valid {reference}: R-prec {metrics['r_precision']:.4f} NDCG@10 {metrics['ndcg@10']:.4f}")
        rows = []
        for changes in TUNE_GRID[base.model]:
            config = update_config(base, **changes, fusion=None)
            started = time.perf_counter()
            _, result, _ = DATASET.fit(config, data, split)
            best = result.history[result.best_epoch - 1]
            rows.append(
                (result.best_valid, changes, result.best_epoch, result.epochs_run, time.perf_counter() - started)
            )
            print(
                f"  {name} {changes}: valid R-prec {result.best_valid:.4f} (recall@10 {best['valid_recall@10']:.4f}) "
                f"best epoch {result.best_epoch}/{result.epochs_run} {rows[-1][-1]:.0f}s",
                flush=True,
            )
        best = max(rows, key=lambda row: row[0])
        print(f"  best {name} on validation: {best[1]} R-prec {best[0]:.4f} (epoch {best[2]})")


def default_data(folder: Path, seed: int | None = None) -> tuple[Path, Path]:
    """Kaggle-format files of the default world (or of generator seed ``seed``) in ``folder``."""
    world = generate_world(GeneratorSettings() if seed is None else GeneratorSettings(seed=seed))
    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw")
    for name, frame in world.tables().items():
        con.register("frame", frame)
        con.execute(f"CREATE TABLE raw.{name} AS SELECT * FROM frame")
        con.unregister("frame")
    kaggle.write_synthetic_kaggle_files(con, folder)
    return folder / "spotify_dataset.csv", folder / "data_w_genres.csv"


def real_sample(min_evaluable: int) -> None:
    if not SAMPLE.exists():
        print(f"real sample: skipped ({SAMPLE} is absent)")
        return
    graph_settings, split_settings = P.GraphSettings(1, 1), P.SplitSettings(1, 1)
    print(
        f"real 500-row Kaggle sample ({SAMPLE.name}; loosest settings: no size/k-core filter, holdout 1, min 1 training track):"
    )
    con, _ = warehouse_from(SAMPLE, None)
    prepared = prepare(con, graph_settings, split_settings)
    if isinstance(prepared, str):
        print(f"  metrics: not reported - {prepared}")
    elif prepared["evaluable"] < min_evaluable:
        print(
            f"  metrics: not reported - only {prepared['evaluable']} playlist(s) have held-out tracks "
            f"(minimum {min_evaluable}): the sample's rows are spread over almost as many playlists as rows, "
            f"so a metric table would describe {prepared['evaluable']} playlist(s), not the models"
        )
    else:
        table(prepared)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-sample", action="store_true")
    parser.add_argument("--skip-default", action="store_true")
    parser.add_argument(
        "--tune", action="store_true", help="validation-only search of LightGCN and PlaylistGAT settings"
    )
    parser.add_argument("--only", nargs="*", default=["lightgcn", "playlist_gat"])
    parser.add_argument("--min-evaluable", type=int, default=MIN_EVALUABLE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_default:
        with tempfile.TemporaryDirectory() as folder:
            playlists_csv, genres_csv = default_data(Path(folder))
            print(
                "default data (Kaggle-format files from the default synthetic world; min playlist size 5, k-core 2, holdout 2):"
            )
            con, _ = warehouse_from(playlists_csv, genres_csv)
            prepared = prepare(con, P.GraphSettings(5, 2), P.SplitSettings(2, 3))
            if isinstance(prepared, str):
                print(f"  metrics: not reported - {prepared}")
            elif args.tune:
                tune(prepared, args.only)
            else:
                table(prepared)
    if not args.skip_sample and not args.tune:
        real_sample(args.min_evaluable)


if __name__ == "__main__":
    main()
