"""Reliability and security: the bad-input catalogue cases not covered elsewhere, the warehouse
under concurrent writers and readers, the landing sensor under load, confined landing paths, SQL
built with parameters and quoted identifiers, weights-only loads, the UI on 127.0.0.1, and the
catalogue in docs/reliability.md kept in step with the tests it names."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from spotify_engine_assets.core.storage.artifacts import ArtifactStore
from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV, REPO_ROOT
from spotify_engine_assets.datasets.playlists import DATASET
from spotify_engine_assets.datasets.playlists.kaggle import (
    KAGGLE_HEADER,
    LandingPathError,
    confined_landing_file,
    ingest_playlist_csv,
    sessions_to_kaggle,
)
from spotify_engine_assets.defs.playlists.sensors import LANDING_TAG, landing_sensor
from spotify_engine_assets.defs.resources import DataLake, LakeIOManager, Warehouse, WarehouseBusyError

PACKAGE = REPO_ROOT / "spotify_engine_assets"
TESTS = Path(__file__).parent
NOW = datetime(2026, 6, 1, 12, 0, 0)


# --- listening sessions: future timestamps, durations, duplicate ids ---------------------------


@pytest.fixture()
def songs_con():
    """A warehouse with ``raw.songs`` (ids 1..5), what landed sessions are checked against."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw")
    con.execute(
        "CREATE TABLE raw.songs AS SELECT range::INTEGER AS song_id, 1 AS artist_id, 'Song ' || range AS title FROM range(1, 6)"
    )
    con.execute("CREATE TABLE raw.artists AS SELECT 1 AS artist_id, 'Artist' AS name")
    con.execute("CREATE TABLE raw.genres AS SELECT 1 AS genre_id, 'pop' AS name")
    con.execute("CREATE TABLE raw.song_genres AS SELECT song_id, 1 AS genre_id FROM raw.songs")
    yield con
    con.close()


def _session_rejects(con) -> dict[int, str]:
    return dict(con.sql("SELECT line, reason FROM session_rejects ORDER BY line").fetchall())


def test_sessions_future_timestamps_are_quarantined_with_their_line(songs_con, tmp_path):
    path = tmp_path / "plays.csv"
    path.write_text(
        "user_id,song_id,played_at\n1,1,2026-05-31 10:00:00\n1,2,2026-06-01 12:00:01\n2,3,2031-01-01 00:00:00\n"
    )
    counts = sessions_to_kaggle(songs_con, path, tmp_path / "out.csv", not_after=NOW)
    assert counts["plays"] == 3 and counts["rejected"] == 2 and counts["used"] == 1
    assert _session_rejects(songs_con) == {
        3: "played_at in the future (after 2026-06-01 12:00:00 UTC)",
        4: "played_at in the future (after 2026-06-01 12:00:00 UTC)",
    }


def test_sessions_negative_or_missing_durations_are_quarantined(songs_con, tmp_path):
    path = tmp_path / "plays.csv"
    path.write_text(
        "user_id,song_id,played_at,ms_played,track_duration_ms\n"
        "1,1,2026-05-01 10:00:00,1000,2000\n"  # 2: fine
        "1,2,2026-05-01 10:01:00,-5,2000\n"  # 3
        "1,3,2026-05-01 10:02:00,,2000\n"  # 4
        "1,4,2026-05-01 10:03:00,100,-1\n"  # 5
        "1,5,2026-05-01 10:04:00,100,\n"  # 6
        "1,5,2026-05-01 10:05:00,ten,2000\n"  # 7
    )
    counts = sessions_to_kaggle(songs_con, path, tmp_path / "out.csv", not_after=NOW)
    assert counts["used"] == 1
    assert _session_rejects(songs_con) == {
        3: "negative ms_played",
        4: "missing ms_played",
        5: "negative track_duration_ms",
        6: "missing track_duration_ms",
        7: "invalid ms_played",
    }


def test_sessions_duplicate_play_ids_keep_the_first_and_name_it(songs_con, tmp_path):
    path = tmp_path / "plays.parquet"
    pl.DataFrame(
        {
            "play_id": [7, 8, 7, 9, 7],
            "user_id": [1, 1, 2, 2, 3],
            "song_id": [1, 2, 3, 4, 5],
            "played_at": [datetime(2026, 5, 1, 10, m) for m in range(5)],
        }
    ).write_parquet(path)
    counts = sessions_to_kaggle(songs_con, path, tmp_path / "out.csv", not_after=NOW)
    assert counts["used"] == 3
    # Parquet rows are numbered from 1
    assert _session_rejects(songs_con) == {
        3: "duplicate play_id (first on line 1)",
        5: "duplicate play_id (first on line 1)",
    }


def test_header_only_kaggle_file_fails_naming_it_and_keeps_the_previous_tables(tmp_path, data_lake):
    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.runner import run_config

    source = tmp_path / "kaggle" / "spotify_dataset.csv"
    source.parent.mkdir()
    source.write_text(KAGGLE_HEADER + "\n" + "".join(f'u{i},"Artist {i}","Song {i}","PL"\n' for i in range(5)))
    instance = dg.DagsterInstance.ephemeral()
    selection = dg.AssetSelection.assets(["kaggle_raw", "entries"]).required_multi_asset_neighbors()

    def ingest():
        return dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=selection,
            run_config=run_config(),
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
        )

    assert ingest().success
    source.write_text(KAGGLE_HEADER + "\n")
    result = ingest()
    assert not result.success
    failures = " ".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)
    assert f"{source.resolve()}: header only, no data rows" in failures
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM kaggle_raw.entries").fetchone()[0] == 5


# --- corrupted checkpoint and model files ------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # torch on the crafted header below
def test_corrupted_checkpoint_is_ignored_naming_the_file(tmp_path):
    from spotify_engine_assets.core.training.trainer import CHECKPOINT_FILE, _load_checkpoint

    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(b"\x80\x04 not a checkpoint")
    messages: list[str] = []
    assert _load_checkpoint(path, "fingerprint", messages.append) is None  # training starts afresh
    assert len(messages) == 1 and str(path) in messages[0] and "unreadable checkpoint" in messages[0]


def test_corrupted_model_artifact_fails_naming_the_file(tmp_path):
    lake = DataLake(root=str(tmp_path))
    version = lake.artifacts.write(
        ["listening", "trained_model"], "lightgcn", lambda folder: (folder / "data.pt").write_bytes(b"garbage")
    )
    with pytest.raises(ValueError, match=re.escape(str(version / "data.pt")) + ".*cannot load torch artifact"):
        LakeIOManager(lake=lake)._load(["listening", "trained_model"], "lightgcn")


# --- the warehouse: a reader during a write, writers waiting for the lock ----------------------

HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_reader_during_a_write_gets_a_clear_busy_error(tmp_path):
    lake = DataLake(root=str(tmp_path))
    holder = _hold_write_lock(lake.warehouse_path, 30)
    try:
        with pytest.raises(WarehouseBusyError) as error:
            Warehouse(lake=lake, lock_timeout_s=0.3).read_table("main.t")
    finally:
        holder.kill()
        holder.wait()
    message = str(error.value)
    assert str(lake.warehouse_path) in message and "is being written by another process" in message
    assert "Traceback" not in message and error.value.__cause__ is None


def test_writer_waits_for_the_lock_then_succeeds(tmp_path):
    lake = DataLake(root=str(tmp_path))
    holder = _hold_write_lock(lake.warehouse_path, 1.5)
    try:
        with Warehouse(lake=lake, lock_timeout_s=30).connect() as con:
            con.execute("INSERT INTO t VALUES (2)")
    finally:
        holder.wait(timeout=30)
    assert Warehouse(lake=lake).read_table("main.t")["x"].sort().to_list() == [1, 2]


def test_hostile_table_name_is_quoted_not_executed(tmp_path):
    lake = DataLake(root=str(tmp_path))
    with Warehouse(lake=lake).connect() as con:
        con.execute("CREATE TABLE main.t AS SELECT 1 AS x")
    with pytest.raises(dg.Failure, match="is missing"):
        Warehouse(lake=lake).read_table('main.t"; DROP TABLE main.t; --')
    assert Warehouse(lake=lake).read_table("main.t").height == 1


# --- concurrent runs writing the warehouse ------------------------------------------------------

WRITER = """
import sys
import dagster as dg
from spotify_engine_assets.definitions import defs
from spotify_engine_assets.runner import run_config
config = run_config("tiny_data.yaml")
config["ops"]["synthetic_world"]["config"]["seed"] = int(sys.argv[1])
result = dg.materialize([*defs.assets, *defs.asset_checks], selection=dg.AssetSelection.groups("listening_ingest"),
                        run_config=config, instance=dg.DagsterInstance.get(), resources=defs.resources,
                        raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


@pytest.fixture()
def dagster_home_lake(tmp_path):
    from test_reliability_kill import real_home

    with real_home(tmp_path) as lake_and_instance:  # storage created once, before any concurrent run
        yield lake_and_instance


def test_concurrent_runs_writing_the_warehouse_all_succeed_and_readers_get_clear_answers(dagster_home_lake):
    lake, instance = dagster_home_lake
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(seed)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    warehouse = Warehouse(lake=DataLake(root=str(lake)), lock_timeout_s=0)
    answers = {"data": 0, "busy": 0, "absent": 0}
    unexpected = []
    while any(w.poll() is None for w in writers):
        try:
            answers["data"] += warehouse.read_table("raw.plays").height > 0
        except WarehouseBusyError as error:
            answers["busy"] += 1
            if not (str(warehouse.lake.warehouse_path) in str(error) and "being written" in str(error)):
                unexpected.append(str(error))
        except dg.Failure as error:  # before the first run created it: "does not exist yet" / "missing"
            answers["absent"] += 1
            if "materialize" not in str(error):
                unexpected.append(str(error))
        except Exception as error:  # noqa: BLE001 - a raw error is what this test must never see
            unexpected.append(f"{type(error).__name__}: {error}")
        time.sleep(0.1)
    outputs = [w.communicate()[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert unexpected == [], answers
    assert sum(answers.values()) > 0

    runs = instance.get_runs()
    assert len(runs) == 2 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    # The duckdb_warehouse pool (limit 1, its slot created before the runs: init_warehouse_pool)
    # queues the second writing step; a writer that still finds the file locked retries
    # (Warehouse.connect). Either way both succeed and the warehouse below is complete.
    from spotify_engine_assets.defs.resources import DUCKDB_POOL

    assert instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).slot_count == 1
    # the warehouse opens and every raw table is complete: all of them from the same (last) run
    current = ArtifactStore(lake / "artifacts").current(["raw", "synthetic"])
    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        for table in ("genres", "artists", "artist_genres", "songs", "song_genres", "users", "plays"):
            expected = pl.read_parquet(current / f"{table}.parquet").height
            assert con.execute(f'SELECT count(*) FROM "raw"."{table}"').fetchone()[0] == expected, table


# --- the landing sensor under load --------------------------------------------------------------


def _tick(root: Path, instance, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": DataLake(root=str(root))})
    return landing_sensor(context)


def test_thousand_files_landing_at_once_are_each_requested_exactly_once(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    for i in range(1000):
        (landing / f"batch{i:04d}.csv").write_text(f"{KAGGLE_HEADER}\nuser{i},Artist {i % 7},Song {i},mix {i}\n")
    growing = [landing / f"growing{i}.csv" for i in range(3)]
    for i, path in enumerate(growing):
        path.write_text(f"{KAGGLE_HEADER}\ngrow{i},Artist,Song 0,mix\n")
    hidden = landing / ".upload-part.csv.tmp"  # an uploader's temporary file
    hidden.write_text(f"{KAGGLE_HEADER}\nu,a,t,p\n")
    instance = dg.DagsterInstance.ephemeral()

    requests: list[dg.RunRequest] = []
    partitions: list[str] = []
    cursor = None
    for tick in range(5):
        if tick < 3:  # still being written during the first ticks
            for path in growing:
                with open(path, "a") as handle:
                    handle.write(f"more{tick},Artist,Song {tick},mix\n")
        result = _tick(tmp_path, instance, cursor)
        cursor = result.cursor
        requests += [r for r in result.run_requests or [] if r.job_name == "playlist_landing_job"]
        for add in result.dynamic_partitions_requests or []:
            partitions += list(add.partition_keys)
        if tick == 0:
            assert not result.run_requests  # nothing is taken before its size held still for a tick
        if tick in (1, 2):
            taken = {r.tags["spotify_engine/file"] for r in result.run_requests or []}
            assert not taken & {p.name for p in growing}  # half-written: never taken

    files = [r.tags["spotify_engine/file"] for r in requests]
    assert len(files) == len(set(files)) == 1003
    assert set(files) == {f"batch{i:04d}.csv" for i in range(1000)} | {p.name for p in growing}
    assert len({r.run_key for r in requests}) == 1003
    assert sorted(partitions) == sorted(r.partition_key for r in requests) and len(set(partitions)) == 1003
    # a growing file is taken with its final content's hash
    from spotify_engine_assets.defs.playlists.ingestion import file_sha256

    by_file = {r.tags["spotify_engine/file"]: r for r in requests}
    for path in growing:
        assert by_file[path.name].run_config["ops"]["landed_batch"]["config"]["sha256"] == file_sha256(path)
    assert ".upload-part.csv.tmp" not in json.dumps(json.loads(cursor))

    # data runs end for three of the 1,003 pending batches: models for the two that succeeded only
    from test_sensor import _finished_data_run

    ok, failed = [by_file["batch0000.csv"], by_file["batch0999.csv"]], by_file["growing0.csv"]
    for request in ok:
        _finished_data_run(instance, request.partition_key, succeed=True)
    _finished_data_run(instance, failed.partition_key, succeed=False)
    result = _tick(tmp_path, instance, cursor)
    models = result.run_requests
    assert {r.job_name for r in models} == {"playlist_retrain_job"}
    assert {r.tags[LANDING_TAG] for r in models} == {r.partition_key for r in ok}
    assert len(models) == len({r.run_key for r in models}) == 2 * len(DATASET.registry.base)
    state = json.loads(result.cursor)
    assert len(state["pending"]) == 1000 and failed.partition_key not in state["pending"]


# --- landing paths confined to the landing folder -----------------------------------------------


@pytest.mark.parametrize(
    "name", ["../outside.csv", "archive/../../outside.csv", "{landing}/../outside.csv", "{root}/outside.csv"]
)
def test_landing_path_escaping_the_landing_folder_is_refused(tmp_path, name):
    landing = tmp_path / "landing"
    (landing / "archive").mkdir(parents=True)
    (tmp_path / "outside.csv").write_text("secret")
    path = name.format(landing=landing, root=tmp_path)
    with pytest.raises(LandingPathError, match=re.escape(repr(path))):
        confined_landing_file(landing, path)


def test_landing_path_through_a_linked_folder_is_refused(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "file.csv").write_text("secret")
    (landing / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LandingPathError, match="is a symbolic link"):
        confined_landing_file(landing, landing / "linked" / "file.csv")
    assert confined_landing_file(landing, "ok.csv") == landing / "ok.csv"


def test_landed_batch_refuses_a_run_config_path_outside_landing(tmp_path, monkeypatch):
    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.runner import run_config

    monkeypatch.setenv(DATA_LAKE_ENV, str(tmp_path / "lake"))
    (tmp_path / "lake" / "landing").mkdir(parents=True)
    secret = tmp_path / "secret.csv"
    secret.write_text(f"{KAGGLE_HEADER}\nu,a,t,p\n")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("landing_batches", ["evil-1"])
    config = {
        **run_config(),
        "ops": {
            "landed_batch": {
                "config": {"path": str(tmp_path / "lake" / "landing" / ".." / ".." / "secret.csv"), "sha256": "0" * 64}
            }
        },
    }
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(["kaggle_raw", "landed_entries"], ["kaggle_raw", "landed_rejects"]),
        run_config=config,
        instance=instance,
        resources=defs.resources,
        partition_key="evil-1",
        raise_on_error=False,
    )
    assert not result.success
    failures = " ".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)
    assert "landed_batch [evil-1]" in failures and "'..' is not allowed" in failures
    assert secret.exists() and not (tmp_path / "lake" / "warehouse.duckdb").exists()


# --- SQL: parameters and quoted identifiers, never pasted values --------------------------------

_SQL_WORD = re.compile(r"\b(SELECT|INSERT|CREATE|DELETE|UPDATE|COPY|DROP|ALTER|ATTACH|PRAGMA|SET)\b")


def _pasted_string_literals(path: Path) -> list[str]:
    """f-strings holding SQL where a value is formatted inside a '...' literal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.JoinedStr):
            continue
        parts = node.values
        if not _SQL_WORD.search("".join(p.value for p in parts if isinstance(p, ast.Constant))):
            continue
        for i, part in enumerate(parts):
            if isinstance(part, ast.FormattedValue):
                before = parts[i - 1].value if i and isinstance(parts[i - 1], ast.Constant) else ""
                after = parts[i + 1].value if i + 1 < len(parts) and isinstance(parts[i + 1], ast.Constant) else ""
                if before.endswith("'") or after.startswith("'"):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {ast.unparse(part.value)}")
    return found


def test_no_sql_pastes_a_value_into_a_string_literal():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _pasted_string_literals(path)]
    assert found == []


def test_the_sql_scan_finds_a_pasted_value(tmp_path):
    bad = REPO_ROOT / "build" / "sql_scan_probe.py"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("def f(con, name):\n    con.execute(f\"SELECT * FROM t WHERE name = '{name}'\")\n")
    try:
        assert len(_pasted_string_literals(bad)) == 1
    finally:
        bad.unlink()


HOSTILE = "x'); DROP TABLE kaggle_raw.entries; --\"; SELECT '1"


def test_hostile_file_name_and_batch_id_are_bound_as_parameters(tmp_path):
    con = duckdb.connect()
    path = tmp_path / "evil'; DROP TABLE kaggle_raw.entries; --.csv"
    path.write_text(f'{KAGGLE_HEADER}\nu1,Artist,Song,PL\nu2,"bad\n')
    stats = ingest_playlist_csv(con, path, HOSTILE)
    assert (stats.accepted, stats.rejected) == (1, 1)
    assert con.execute("SELECT DISTINCT batch, source_file FROM kaggle_raw.entries").fetchall() == [
        (HOSTILE, str(path.resolve()))
    ]
    assert con.execute("SELECT batch FROM kaggle_raw.rejects").fetchall() == [(HOSTILE,)]
    again = ingest_playlist_csv(con, path, HOSTILE)  # same batch: replaced, not duplicated
    assert again.accepted == 1 and con.execute("SELECT count(*) FROM kaggle_raw.entries").fetchone()[0] == 1


def test_hostile_sessions_file_name_is_bound_as_a_parameter(songs_con, tmp_path):
    path = tmp_path / "plays'); DROP TABLE raw.songs; --.csv"
    path.write_text("user_id,song_id,played_at\n1,1,2026-05-01 10:00:00\n")
    assert sessions_to_kaggle(songs_con, path, tmp_path / "out.csv", not_after=NOW)["used"] == 1
    assert songs_con.execute("SELECT count(*) FROM raw.songs").fetchone()[0] == 5


def test_sensor_batch_id_of_a_hostile_file_name_is_plain():
    from spotify_engine_assets.defs.playlists.sensors import batch_id

    batch = batch_id(Path("a'; DROP TABLE x; --.csv"), "ab" * 32)
    assert re.fullmatch(r"[A-Za-z0-9_]+-[0-9a-f]{12}", batch), batch


# --- torch.load and the UI -----------------------------------------------------------------------


def test_every_torch_load_is_weights_only():
    offenders, calls = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO_ROOT)}:{getattr(node, 'lineno', 0)}"
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "torch"
                and any(a.name == "load" for a in node.names)
            ):
                offenders.append(f"{where}: from torch import load (use torch.load(..., weights_only=True))")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls += 1
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                if not (weights_only and ast.unparse(weights_only[0].value) == "True"):
                    offenders.append(where)
    assert calls >= 1 and offenders == []


def test_ui_binds_to_localhost():
    makefile = (REPO_ROOT / "Makefile").read_text()
    (ui_line,) = [line for line in makefile.splitlines() if "dagster dev" in line]
    assert re.search(r"(-h|--host) 127\.0\.0\.1\b", ui_line), ui_line
    for path in [REPO_ROOT / "Makefile", *PACKAGE.rglob("*.py")]:
        assert "0.0.0.0" not in path.read_text(), path


# --- the catalogue in docs/reliability.md names tests that exist ------------------------------


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_reliability_catalogue_names_existing_tests():
    text = (REPO_ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("|") and "::" in line]
    assert len(rows) >= 20
    per_row = [re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)(?:\[[^\]]*\])?`", row) for row in rows]
    assert all(per_row), [row for row, refs in zip(rows, per_row) if not refs]
    named = [ref for refs in per_row for ref in refs]
    missing = [f"{file}::{name}" for file, name in named if name not in _test_names(REPO_ROOT / file)]
    assert missing == []


def test_torch_runtime_pins_glibc_malloc_thresholds():
    """The training resource fixes glibc's mmap/trim thresholds (no per-step page faults of the
    message tensors); where libc is glibc, mallopt accepts both."""
    import ctypes.util
    import platform

    from spotify_engine_assets.defs.resources import TorchRuntime, pin_glibc_malloc

    if platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"):
        pytest.skip("libc is not glibc")
    assert pin_glibc_malloc(32, 1024) is True
    assert pin_glibc_malloc(None, 4096, heap_only=True) is True
    TorchRuntime(threads=1).apply()  # the default (heap only) pins too, and must not fail
    TorchRuntime(threads=1, malloc_heap_only=False).apply()
    TorchRuntime(threads=1, malloc_heap_only=False, malloc_mmap_threshold_mb=None).apply()
