"""Issue 19's landed-data cases, rerun: each one tried on a fresh data lake, judged from what
actually happened (the run's answer and the tables and files afterwards), and counted.

Run with ``.venv/bin/python benchmarks/bench_reliability_landing.py``; prints one row per case
(verdict and what was seen) and the totals ``tried / clear / handled / unclear / silent / lost``.
*clear*: the run failed with a message naming the thing and nothing current changed; *handled*:
the right result; *unclear*: failed without naming it; *silent*: a wrong result and no error;
*lost*: data that failed a gate became current, or rows were lost. (The other cases of the
issue are in ``bench_reliability.py``'s own catalogue.)
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import dagster as dg
import duckdb

from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV
from spotify_engine_assets.datasets.playlists.kaggle import KAGGLE_HEADER, ingest_playlist_csv
from spotify_engine_assets.defs.playlists.ingestion import BASE_KEYS, LANDED_KEYS, file_sha256
from spotify_engine_assets.defs.playlists.sensors import LANDING_TAG, landing_sensor
from spotify_engine_assets.defs.resources import DataLake
from spotify_engine_assets.runner import run_config


def _rows(good: int, bad: int = 0, prefix: str = "u") -> str:
    return (
        KAGGLE_HEADER
        + "\n"
        + "".join(f"{prefix}{i},Artist {i % 3},Song {i},mix {i % 4}\n" for i in range(good))
        + "u,bad\n" * bad
    )


def _materialize(lake: Path, keys, config: dict | None = None, batch: str | None = None, instance=None):
    from spotify_engine_assets.definitions import defs

    instance = instance or dg.DagsterInstance.ephemeral()
    if batch:
        instance.add_dynamic_partitions("landing_batches", [batch])
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(*keys),
        instance=instance,
        resources=defs.resources,
        run_config={**run_config(), **(config or {})},
        partition_key=batch,
        raise_on_error=False,
    )


def _message(result) -> str:
    return " ".join(
        str(
            e.step_failure_data.user_failure_data.description
            if e.step_failure_data.user_failure_data
            else e.step_failure_data.error.message
        )
        for e in result.all_events
        if e.is_step_failure
    )


def _count(lake: Path, table: str, where: str = "true") -> int:
    """Rows of ``table`` (0 when a rolled-back first ingestion left no table, or no warehouse)."""
    if not (lake / "warehouse.duckdb").exists():
        return 0
    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        try:
            return con.sql(f"SELECT count(*) FROM {table} WHERE {where}").fetchall()[0][0]
        except duckdb.CatalogException:
            return 0


def _land(lake: Path, path: Path, batch: str):
    settings = {"path": str(path), "sha256": file_sha256(path)}
    return _materialize(lake, LANDED_KEYS.values(), {"ops": {"landed_batch": {"config": settings}}}, batch)


def _tick(lake: Path, instance, cursor=None):
    return landing_sensor(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": DataLake(root=str(lake))})
    )


def _data_run(instance, batch: str, succeed: bool, rows: int | None = None) -> None:
    @dg.op
    def step():
        if not succeed:
            raise RuntimeError("ingestion failed")
        if rows is not None:
            yield dg.AssetMaterialization(
                asset_key=LANDED_KEYS["landed_entries"], partition=batch, metadata={"dagster/row_count": rows}
            )
        yield dg.Output(None)

    instance.add_dynamic_partitions("landing_batches", [batch])
    dg.GraphDefinition(name="fake_landing", node_defs=[step]).to_job().execute_in_process(
        instance=instance, tags={LANDING_TAG: batch, "spotify_engine/stage": "data"}, raise_on_error=False
    )


# --- the cases: each returns (verdict, what was seen) --------------------------------------------


def base_gate(lake: Path):
    real = lake / "kaggle" / "spotify_dataset.csv"
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_text(_rows(200))
    assert _materialize(lake, BASE_KEYS.values()).success
    real.write_text(_rows(50, bad=50, prefix="x"))
    result = _materialize(lake, BASE_KEYS.values())
    entries = _count(lake, "kaggle_raw.entries")
    seen = f"run {'SUCCESS' if result.success else 'FAILURE'}, kaggle_raw.entries 200 -> {entries}"
    if entries != 200:
        return "lost", seen
    return (
        "clear" if str(real) in _message(result) and "reject_rate_within_threshold" in _message(result) else "unclear"
    ), seen


def landed_gate(lake: Path):
    path = lake / "landing" / "half_bad.csv"
    path.write_text(_rows(40, bad=40))
    result = _land(lake, path, "half_bad-1")
    rows = _count(lake, "kaggle_raw.landed_entries", "batch = 'half_bad-1'")
    seen = f"run {'SUCCESS' if result.success else 'FAILURE'}, {rows} rows committed, file {'in landing/' if path.exists() else 'archived'}"
    if rows or not path.exists():
        return "lost", seen
    return ("clear" if str(path) in _message(result) else "unclear"), seen


def open_writer(lake: Path):
    instance, cursor = dg.DagsterInstance.ephemeral(), None
    path = lake / "landing" / "slow.csv"
    with open(path, "w") as writer:
        writer.write(_rows(60))
        writer.flush()
        taken = 0
        for _ in range(3):  # the writer pauses for three ticks
            result = _tick(lake, instance, cursor)
            cursor, taken = result.cursor, taken + len(result.run_requests or [])
        writer.write("".join(f"w{i},Artist 0,Song {i},mix 0\n" for i in range(60)))
    seen = f"{taken} run requests while the writer held it open"
    return ("handled" if taken == 0 else "silent"), seen


def open_writer_at_ingestion(lake: Path):
    path = lake / "landing" / "open.csv"
    with open(path, "w") as writer:
        writer.write(_rows(6))
        writer.flush()
        result = _land(lake, path, "open-1")
    rows = _count(lake, "kaggle_raw.landed_entries", "batch = 'open-1'")
    if rows:
        return "silent", f"{rows} rows committed from a file still being written"
    return ("clear" if "still open for writing" in _message(result) else "unclear"), "run FAILURE, nothing committed"


def header_only(lake: Path):
    instance = dg.DagsterInstance.ephemeral()
    (lake / "landing" / "header.csv").write_text(KAGGLE_HEADER + "\n")
    (lake / "landing" / "header.csv.done").touch()
    first = _tick(lake, instance)
    _data_run(instance, first.run_requests[0].partition_key, succeed=True, rows=0)
    retrains = len(_tick(lake, instance, first.cursor).run_requests or [])
    return ("handled" if retrains == 0 else "silent"), f"{retrains} retrain runs for a batch of 0 rows"


def same_content_after_failure(lake: Path):
    instance = dg.DagsterInstance.ephemeral()
    content = _rows(20)
    (lake / "landing" / "first.csv").write_text(content)
    (lake / "landing" / "first.csv.done").touch()
    first = _tick(lake, instance)
    _data_run(instance, first.run_requests[0].partition_key, succeed=False)
    second = _tick(lake, instance, first.cursor)
    (lake / "landing" / "again.csv").write_text(content)
    (lake / "landing" / "again.csv.done").touch()
    third = _tick(lake, instance, second.cursor)
    taken = len(third.run_requests or [])
    return ("handled" if taken == 1 else "silent"), f"the same content after a failed run: {taken} run request(s)"


def _loaded(path: Path, data: bytes, column: str):
    """The loader's stats for ``data`` and ``column`` of its accepted rows, in line order."""
    path.write_bytes(KAGGLE_HEADER.encode() + data)
    with duckdb.connect() as con:
        stats = ingest_playlist_csv(con, path, "b")
        return stats, [row[0] for row in con.sql(f"SELECT {column} FROM kaggle_raw.entries ORDER BY line").fetchall()]


def line_endings(lake: Path):
    stats, lines = _loaded(lake / "mixed.csv", b"\nu1,A,T1,P\r\nu2,B,T2,P\r\nu3,C\rX,T3,P\nu4,D,T4,P\r\n", "line")
    ok = lines == [2, 3, 5] and stats.unaccounted == 0 and stats.rejected == 1
    return (
        "handled" if ok else "silent"
    ), f"accepted at lines {lines}, {stats.rejected} rejected ({stats.reasons}), unaccounted {stats.unaccounted}"


def control_characters(lake: Path):
    stats, users = _loaded(lake / "controls.csv", b"\nu1,A\x00X,T,P\nu2,A\x1fX,T,P\n\xef\xbb\xbfu3,B,T,P\n", "user_id")
    cleaned = getattr(stats, "cleaned", {})  # (absent before issue 19)
    ok = stats.rejected == 2 and users == ["u3"] and cleaned == {"byte order mark removed": 1}
    return (
        "handled" if ok else "silent"
    ), f"{stats.rejected} rejected ({stats.reasons}), accepted {users}, cleaned {cleaned}"


def archive_is_a_file(lake: Path):
    (lake / "landing" / "archive").write_text("not a folder")
    (lake / "landing" / "ready.csv").write_text(_rows(5))
    (lake / "landing" / "ready.csv.done").touch()
    result = _tick(lake, dg.DagsterInstance.ephemeral())
    if result.run_requests:
        return "unclear", "taken although it can never be archived"
    landed = _land(lake, lake / "landing" / "ready.csv", "ready-1")
    rows = _count(lake, "kaggle_raw.landed_entries", "batch = 'ready-1'")
    ok = not landed.success and "is not a folder" in _message(landed) and not rows
    return ("clear" if ok else "unclear"), "sensor: no file taken, archive named; landed_batch: fails before ingesting"


CASES = [
    base_gate,
    landed_gate,
    open_writer,
    open_writer_at_ingestion,
    header_only,
    same_content_after_failure,
    line_endings,
    control_characters,
    archive_is_a_file,
]


def run_on_fresh_lake(case, lake: Path) -> tuple[str, str]:
    """``case(lake)`` with ``lake/landing`` made and ``$SPOTIFY_ENGINE_DATA_LAKE`` pointing at ``lake``
    for the call (restored after it): ``(verdict, what was seen)``."""
    (lake / "landing").mkdir()
    previous = os.environ.get(DATA_LAKE_ENV)
    os.environ[DATA_LAKE_ENV] = str(lake)
    try:
        return case(lake)
    finally:
        if previous is None:
            os.environ.pop(DATA_LAKE_ENV, None)
        else:
            os.environ[DATA_LAKE_ENV] = previous


def landing_catalogue() -> list[tuple[str, str, str]]:
    """(case, verdict, what was seen) for every landed-data case, each on a fresh data lake."""
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            try:
                verdict, seen = run_on_fresh_lake(case, Path(folder))
            except Exception as error:  # noqa: BLE001 - a crash is a verdict too
                verdict, seen = "unclear", f"crashed: {type(error).__name__}: {error}"
            rows.append((case.__name__, verdict, seen))
    return rows


def main() -> None:
    rows = landing_catalogue()
    for name, verdict, seen in rows:
        print(f"{name:<28} {verdict:<8} {seen}")
    counts = Counter(verdict for _, verdict, _ in rows)
    print(
        "tried "
        + str(len(rows))
        + " / "
        + " / ".join(f"{k} {counts.get(k, 0)}" for k in ("clear", "handled", "unclear", "silent", "lost"))
    )


if __name__ == "__main__":
    main()
