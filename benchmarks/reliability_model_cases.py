"""Issue 19, "a model that must not serve": the catalogue's cases of names that are paths, duplicate
YAML keys, non-finite configs and diverged training, and flipped bytes in stored artifacts; and the
cost of the artifacts' content hashes on the default world.

Run ``.venv/bin/python benchmarks/reliability_model_cases.py`` (about a minute: the tiny world's data
stage and two 2-epoch trainings in a temporary data lake): one line per case with its outcome -
``clear`` (a clear error naming the thing, nothing current replaced), ``handled`` (correct
handling), ``unclear``, ``silent`` (a wrong result without a word) or ``lost`` (current data
replaced or damaged) - then the counts. ``--hash-cost`` instead materializes the default world's
data stage and one 1-epoch gat_enhanced model in a temporary lake and prints, per artifact, its size
and the seconds to hash it and to load it (``CASES`` is the list other catalogues can import).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spotify_engine_assets import cli
from spotify_engine_assets.core.config import update_config
from spotify_engine_assets.core.data.sqlmodels import load_sql_project
from spotify_engine_assets.core.experiments import hpo
from spotify_engine_assets.core.registry import PromotionSource, Registry
from spotify_engine_assets.core.storage import artifacts
from spotify_engine_assets.core.storage.artifacts import (
    POINTER,
    ArtifactStore,
    file_sha256,
    load_torch,
    save_torch,
)
from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV, sql_models_dir
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.runner import DATA_STAGE, run_config

MODEL_KEY = ["listening", "trained_model"]
Outcome = tuple[str, str]


def _error_of(action: Callable[[], object], *fragments: str) -> Outcome:
    """``clear`` when ``action`` raises an error whose message holds every fragment; else what it did."""
    try:
        result = action()
    except Exception as error:  # noqa: BLE001 - the outcome is what the catalogue records
        message = str(error)
        return ("clear" if all(f in message for f in fragments) else "unclear"), message.splitlines()[0][:150]
    return "silent", f"accepted: {result!r}"[:150]


def _registry(folder: Path, text: str) -> Registry:
    (folder / "models.yaml").write_text(text)
    return Registry("listening", folder / "models.yaml", DATASET.registry.strategies)


# --- names are paths -------------------------------------------------------------------------


def config_name_is_a_path(folder: Path) -> Outcome:
    registry = _registry(folder, "lightgcn:\n  model: lightgcn\nevil/../lightgcn:\n  model: most_popular\n")
    return _error_of(registry.load, "models.yaml", "'evil/../lightgcn'", "not a safe name")


def partition_is_a_path(folder: Path) -> Outcome:
    store = ArtifactStore(folder)
    good = store.write(MODEL_KEY, "lightgcn", lambda f: save_torch({"w": torch.ones(3)}, f / "data.pt"))
    outcome = _error_of(
        lambda: store.write(MODEL_KEY, "evil/../lightgcn", lambda f: save_torch({"w": torch.zeros(3)}, f / "data.pt")),
        "'evil/../lightgcn'",
        "not a safe name",
    )
    if store.current(MODEL_KEY, "lightgcn") != good:
        return "lost", "lightgcn's CURRENT was swapped"
    return outcome


def pointer_is_a_path(folder: Path) -> Outcome:
    store = ArtifactStore(folder)
    store.write(MODEL_KEY, "lightgcn", lambda f: save_torch({"w": torch.ones(3)}, f / "data.pt"))
    (store.slot(MODEL_KEY, "lightgcn") / POINTER).write_text("../../../../etc")
    return _error_of(lambda: store.current(MODEL_KEY, "lightgcn"), "CURRENT", "not a safe name")


def batch_is_a_path(folder: Path) -> Outcome:
    from spotify_engine_assets.defs.playlists.ingestion import archive_path
    from spotify_engine_assets.defs.resources import DataLake

    return _error_of(
        lambda: archive_path(DataLake(root=str(folder)), "../../artifacts", "x.csv"), "landing batch", "not a safe name"
    )


def study_name_is_a_path(folder: Path) -> Outcome:
    return _error_of(lambda: hpo.check_study_name("spotify-engine/../../x"), "study name", "not a safe name")


# --- duplicate keys --------------------------------------------------------------------------


def duplicate_config(folder: Path) -> Outcome:
    registry = _registry(folder, "lightgcn:\n  model: lightgcn\n  lr: 0.01\nlightgcn:\n  model: lightgcn\n  lr: 0.5\n")
    return _error_of(registry.load, "models.yaml: line 4: duplicate key 'lightgcn' (first at line 1)")


def duplicate_schema_entry(folder: Path) -> Outcome:
    """The project's own SQL folder with a second ``songs:`` (it would drop four blocking tests)."""
    from spotify_engine_assets.defs.sql import SQL_SOURCES

    project = Path(shutil.copytree(sql_models_dir(), folder / "sql"))
    schema = project / "marts" / "schema.yml"
    lines = schema.read_text().count("\n")
    schema.write_text(schema.read_text() + "  songs:\n    n_genres: [{accepted_range: {min: 1}, severity: warn}]\n")
    return _error_of(
        lambda: load_sql_project(project, SQL_SOURCES), "marts/schema.yml", f"line {lines + 1}: duplicate key 'songs'"
    )


# --- non-finite values -----------------------------------------------------------------------


def infinite_learning_rate(folder: Path) -> Outcome:
    return _error_of(
        _registry(folder, "lightgcn:\n  model: lightgcn\n  lr: .inf\n").load, "lr: Input should be a finite number"
    )


def _promote(lake: Path, name: str, **changes) -> None:
    config = update_config(DATASET.registry.base["lightgcn"], name=name, embedding_dim=8, num_layers=1, **changes)
    source = PromotionSource(
        family="lightgcn",
        study_name="catalogue",
        trial=0,
        objective="valid_recall@10",
        value=0.0,
        storage="none",
        promoted_at="2026-01-01T00:00:00+0000",
    )
    DATASET.registry.write_promoted(config, source, lake)


@contextlib.contextmanager
def materialized_lake(folder: Path, data_config: dict):
    """``(lake, run)`` over a world's materialized data stage (an ephemeral instance)."""
    import dagster as dg

    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.defs import listening
    from spotify_engine_assets.defs.chain import register_configs

    lake, previous = folder / "lake", os.environ.get(DATA_LAKE_ENV)
    os.environ[DATA_LAKE_ENV] = str(lake)
    instance = dg.DagsterInstance.ephemeral()

    def run(selection, config: dict, partition: str | None = None) -> dg.ExecuteInProcessResult:
        register_configs(listening.CHAIN, instance, lake)
        return dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=selection,
            run_config=config,
            instance=instance,
            resources=defs.resources,
            partition_key=partition,
            raise_on_error=False,
        )

    try:
        assert run(DATA_STAGE, data_config).success
        yield lake, run
    finally:
        os.environ.pop(DATA_LAKE_ENV, None) if previous is None else os.environ.__setitem__(DATA_LAKE_ENV, previous)


def _recommend(lake: Path, model: str) -> tuple[int, str]:
    import duckdb

    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        user = con.execute("SELECT min(user_id) FROM marts.user_song_interactions").fetchone()[0]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["recommend", "--model", model, "--user", str(user), "--k", "5"])
    return code, err.getvalue().strip()


def model_cases(folder: Path) -> dict[str, Outcome]:
    """The cases that need a materialized model: a diverging config, a NaN model, flipped bytes."""
    outcomes = {}
    with materialized_lake(folder, run_config("tiny_data.yaml")) as (lake, run):
        _promote(lake, "small_lgcn")
        _promote(lake, "diverged_lgcn", lr=1e30)
        config = run_config("tiny_train.yaml")
        config["ops"]["listening__trained_model"]["config"]["max_epochs"] = 2
        assert run(["listening/trained_model"], config, "small_lgcn").success
        store = ArtifactStore(lake / "artifacts")
        good = store.current(MODEL_KEY, "small_lgcn")
        assert _recommend(lake, "small_lgcn")[0] == 0  # the healthy model serves

        result = run(["listening/trained_model"], config, "diverged_lgcn")
        text = " ".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events())
        if result.success:
            outcomes["diverged training (lr 1e30)"] = ("silent", "the run succeeded")
        else:
            stored = (store.slot(MODEL_KEY, "diverged_lgcn") / POINTER).exists()
            outcomes["diverged training (lr 1e30)"] = (
                "lost" if stored else "clear" if "training diverged" in text else "unclear",
                next((line for line in text.splitlines() if "diverged" in line), text[:150]).strip()[:150],
            )

        for flipped in (64, 2000):
            original = (good / "data.pt").read_bytes()
            data = bytearray(original)
            for i in range(flipped):
                data[len(data) // 8 + i * (len(data) // (2 * flipped))] ^= 0x5A
            (good / "data.pt").write_bytes(bytes(data))
            code, err = _recommend(lake, "small_lgcn")
            (good / "data.pt").write_bytes(original)
            outcome = (
                "clear"
                if code == 2 and "content hash mismatch" in err and str(good / "data.pt") in err
                else "silent"
                if code == 0
                else "unclear"
            )
            outcomes[f"{flipped} flipped bytes in trained_model data.pt, recommend"] = (outcome, err[:150])

        artifact = load_torch(good / "data.pt")
        artifact["state"] = {
            k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in artifact["state"].items()
        }
        store.write(MODEL_KEY, "small_lgcn", lambda f: save_torch(artifact, f / "data.pt"))
        code, err = _recommend(lake, "small_lgcn")
        outcome = "clear" if code == 2 and "non-finite weights" in err else "silent" if code == 0 else "unclear"
        outcomes["NaN model already current (stored before the guard), recommend"] = (outcome, err[:150])
    return outcomes


def unhashed_old_artifact(folder: Path) -> Outcome:
    store = ArtifactStore(folder)
    version = store.write(MODEL_KEY, "old", lambda f: save_torch({"w": torch.ones(3)}, f / "data.pt"))
    (version / artifacts.MANIFEST).unlink()
    return (
        ("handled", "loaded with a warning naming the folder (decided: warn, not refuse)")
        if load_torch(version / "data.pt")["w"].sum() == 3
        else ("silent", "")
    )


CASES: list[tuple[str, Callable[[Path], Outcome]]] = [
    ("config named evil/../lightgcn in models.yaml", config_name_is_a_path),
    ("artifact partition evil/../lightgcn", partition_is_a_path),
    ("CURRENT naming a path outside its slot", pointer_is_a_path),
    ("landing batch ../../artifacts", batch_is_a_path),
    ("study name spotify-engine/../../x", study_name_is_a_path),
    ("second lightgcn: in models.yaml", duplicate_config),
    ("second songs: in marts/schema.yml", duplicate_schema_entry),
    ("lr: .inf in models.yaml", infinite_learning_rate),
    ("artifact written before content hashes", unhashed_old_artifact),
]


def catalogue() -> dict[str, int]:
    counts = dict.fromkeys(("tried", "clear", "handled", "unclear", "silent", "lost"), 0)
    rows = []
    for name, case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            rows.append((name, *case(Path(folder))))
    with tempfile.TemporaryDirectory() as folder:
        rows += [(name, *outcome) for name, outcome in model_cases(Path(folder)).items()]
    for name, outcome, detail in rows:
        counts["tried"] += 1
        counts[outcome] += 1
        print(f"{outcome:>8}  {name}: {detail}")
    print(" / ".join(f"{key} {value}" for key, value in counts.items()))
    return counts


def hash_cost() -> None:
    """Per artifact of the default world: megabytes, seconds to hash it, seconds of load_torch
    (its hash included); medians of 5."""
    with tempfile.TemporaryDirectory() as folder, materialized_lake(Path(folder), run_config()) as (lake, run):
        config = run_config()
        config.setdefault("ops", {})["listening__trained_model"] = {"config": {"max_epochs": 1}}
        assert run(["listening/trained_model"], config, "gat_enhanced").success
        store = ArtifactStore(lake / "artifacts")
        print(f"{'artifact':<36} {'MB':>7} {'hash s':>8} {'load s':>8} {'hash share':>10}")
        for key, partition in (
            (["listening", "graph"], None),
            (["listening", "split"], None),
            (MODEL_KEY, "gat_enhanced"),
        ):
            path = store.current(key, partition) / "data.pt"
            hashing, loading = [], []
            for _ in range(5):
                started = time.perf_counter()
                file_sha256(path)
                hashing.append(time.perf_counter() - started)
                started = time.perf_counter()
                load_torch(path)
                loading.append(time.perf_counter() - started)
            h, load = sorted(hashing)[2], sorted(loading)[2]
            name = "/".join(key) + (f"[{partition}]" if partition else "")
            print(f"{name:<36} {path.stat().st_size / 1e6:>7.1f} {h:>8.3f} {load:>8.3f} {h / load:>9.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hash-cost", action="store_true", help="measure the content hashes' cost on the default world"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.hash_cost:
        hash_cost()
    else:
        catalogue()


if __name__ == "__main__":
    main()
