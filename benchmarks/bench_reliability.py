"""The landing sensor under load, how long a warehouse writer waits for another's lock, and the
reliability catalogue's cases rerun as scenarios.

Run with ``.venv/bin/python benchmarks/bench_reliability.py [--files 1000 5000] [--cases [BLOCK ...]]``;
prints, per number of small Kaggle-format files landed at once, the seconds of the three sensor ticks
(first sight: every file waits for a stable size; second: every file is hashed and requested; third:
nothing new) and the requests made; then, for a write lock held 1 s by another process, the
seconds a ``Warehouse.connect()`` waited and a read-only reader's answer with ``lock_timeout_s=0``.

``--cases`` (every block, or the blocks named: "hangs and crashes", "landed data" from
``bench_reliability_landing.py``, "models that must not serve" from ``reliability_model_cases.py``)
reruns catalogue cases instead and prints one row a
case and a table per block: tried / clear / handled / unclear / silent / lost. A case is a function
registered with ``@case("<block>")`` that sets the scenario up, provokes it and returns an
:class:`Outcome`: **clear** (an error naming the file, folder, run or field), **handled** (the
right result, no error needed), **unclear** (an error that names nothing, a raw traceback, a hang),
**silent** (a wrong result and no error), **lost** (data lost, half-written or left out). Each
block is one section of ``docs/reliability.md``; add a block by adding its functions.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from spotify_engine_assets.datasets.playlists.kaggle import KAGGLE_HEADER
from spotify_engine_assets.defs.playlists.sensors import landing_sensor
from spotify_engine_assets.defs.resources import DataLake, Warehouse, WarehouseBusyError

HOLD = "import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(1.0)"


def sensor_ticks(files: int) -> tuple[list[float], int]:
    """Seconds of three ticks over ``files`` landed files, and the run requests made."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "landing").mkdir()
        for i in range(files):
            (root / "landing" / f"batch{i:05d}.csv").write_text(
                f"{KAGGLE_HEADER}\nuser{i},Artist {i % 7},Song {i},mix\n"
            )
        instance = dg.DagsterInstance.ephemeral()
        cursor, seconds, requests = None, [], 0
        for _ in range(3):
            started = time.perf_counter()
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"lake": DataLake(root=str(root))}
            )
            result = landing_sensor(context)
            seconds.append(time.perf_counter() - started)
            cursor = result.cursor
            requests += len(result.run_requests or [])
        return seconds, requests


def lock_wait() -> tuple[float, str]:
    """Seconds a writer waited for a 1 s lock held by another process; a reader's answer."""
    with tempfile.TemporaryDirectory() as folder:
        lake = DataLake(root=folder)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(lake.warehouse_path)], stdout=subprocess.PIPE, text=True
        )
        holder.stdout.readline()
        try:
            Warehouse(lake=lake, lock_timeout_s=0).read_table("main.t")
            answer = "data"
        except WarehouseBusyError as error:
            answer = str(error).split(";")[0][:90] + "..."
        started = time.perf_counter()
        with Warehouse(lake=lake, lock_timeout_s=30).connect():
            waited = time.perf_counter() - started
        holder.wait()
        return waited, answer


# --------------------------------------------------------------------------- the catalogue's cases

VERDICTS = ("clear", "handled", "unclear", "silent", "lost")
TESTS = Path(__file__).resolve().parents[1] / "tests"


@dataclass
class Outcome:
    verdict: str  # one of VERDICTS
    detail: str  # what was seen (the error's first line, the result)


CASES: dict[str, list[Callable[[Path], Outcome]]] = {}  # block -> its cases, in order


def case(block: str):
    """Register a case function ``f(scratch folder) -> Outcome`` under ``block`` (its docstring's
    first line is the row's name)."""

    def register(function):
        CASES.setdefault(block, []).append(function)
        return function

    return register


def run_cases(blocks: list[str]) -> dict[str, dict[str, int]]:
    """Run the cases of ``blocks``, print a row per case; returns counts per block and verdict."""
    unknown = sorted(set(blocks) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case blocks {unknown}; known: {', '.join(CASES)}")
    counts = {}
    for block in blocks:
        counts[block] = dict.fromkeys(("tried", *VERDICTS), 0)
        print(f"\n## {block}")
        for function in CASES[block]:
            started = time.perf_counter()
            name = (function.__doc__ or function.__name__).strip().splitlines()[0]
            with tempfile.TemporaryDirectory() as folder:
                try:
                    outcome = function(Path(folder))
                except Exception as error:  # noqa: BLE001 - the scenario broke: a raw error names nothing
                    outcome = Outcome("unclear", f"{type(error).__name__}: {str(error).splitlines()[0][:150]}")
            # a scenario that provokes several cases at once returns {case name: Outcome}
            rows = outcome.items() if isinstance(outcome, dict) else [(name, outcome)]
            seconds = time.perf_counter() - started
            for name, outcome in rows:
                counts[block]["tried"] += 1
                counts[block][outcome.verdict] += 1
                print(f"{outcome.verdict:>8}  {seconds:6.1f} s  {name}: {outcome.detail}")
    print(f"\n{'block':<28}" + "".join(f"{column:>9}" for column in ("tried", *VERDICTS)))
    for block, row in counts.items():
        print(f"{block:<28}" + "".join(f"{row[column]:>9}" for column in ("tried", *VERDICTS)))
    return counts


# ---- issue 19: hangs and crashes (the pool, the home, SQL models' table functions)


def _pool_scenario():
    """The helpers of ``tests/test_reliability_instance.py`` (a pool holder and a writer started
    with the Dagster CLI on a real home)."""
    sys.path.insert(0, str(TESTS))
    import test_reliability_instance as scenario

    return scenario


def _holder(scenario, root: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """A CLI run holding the warehouse pool's slot, and its run id once it holds it."""
    (root / "pool_defs.py").write_text(scenario.POOL_DEFS)
    marker = root / "holding"
    holder = scenario._dagster(root / "pool_defs.py", "holder", MARKER=str(marker), **env)
    return holder, scenario._wait_for(lambda: scenario._holder_run_id(marker), 240, "holder step")


@case("hangs and crashes")
def killed_pool_holder(root: Path) -> Outcome:
    """a SIGKILLed run held the warehouse pool slot; the next CLI writer"""
    import dagster as dg

    scenario = _pool_scenario()
    with scenario.real_home(root) as (_, instance):
        holder, holder_run = _holder(scenario, root)
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
        writer = scenario._dagster(root / "pool_defs.py", "writer")
        try:
            _, stderr = writer.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.communicate()
            return Outcome("unclear", "the writer still waited after 180 s (hang)")
        freed = f"freed the slots of run(s) {holder_run}" in stderr
        status = instance.get_run_by_id(holder_run).status
        if writer.returncode == 0 and freed and status == dg.DagsterRunStatus.FAILURE:
            return Outcome(
                "handled", f"writer succeeded; killed run {holder_run[:8]} marked failed, its slot freed (logged)"
            )
        return Outcome("unclear", f"writer exit {writer.returncode}, holder {status}, freed logged: {freed}")


def _waiting_writer_stops(root: Path, signum: int) -> Outcome:
    import dagster as dg

    scenario = _pool_scenario()
    with scenario.real_home(root) as (_, instance):
        holder, holder_run = _holder(scenario, root)
        try:
            writer = scenario._dagster(root / "pool_defs.py", "writer")
            time.sleep(20)  # well inside the wait
            writer.send_signal(signum)
            try:
                _, stderr = writer.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.communicate()
                return Outcome("unclear", f"{signal.Signals(signum).name} ignored for 30 s (hang)")
            runs = [run for run in instance.get_runs() if run.run_id != holder_run]
            named = f"held by run(s) {holder_run}" in stderr
            if named and runs and runs[0].status == dg.DagsterRunStatus.FAILURE:
                return Outcome(
                    "clear",
                    f"wait logged at INFO naming run {holder_run[:8]}; stopped on "
                    f"{signal.Signals(signum).name}, run marked failed",
                )
            return Outcome("unclear", f"holder named: {named}, writer run {runs[0].status if runs else None}")
        finally:
            holder.kill()
            holder.communicate()


@case("hangs and crashes")
def waiting_writer_sigterm(root: Path) -> Outcome:
    """a writer waiting for a live run's pool slot gets SIGTERM"""
    return _waiting_writer_stops(root, signal.SIGTERM)


@case("hangs and crashes")
def waiting_writer_sigint(root: Path) -> Outcome:
    """a writer waiting for a live run's pool slot gets SIGINT"""
    return _waiting_writer_stops(root, signal.SIGINT)


@case("hangs and crashes")
def read_only_home_at_start(root: Path) -> Outcome:
    """DAGSTER_HOME read-only before the run"""
    import dagster as dg

    scenario = _pool_scenario()
    with scenario.real_home(root):
        home = Path(os.environ["DAGSTER_HOME"])
        with scenario.read_only(home):
            try:
                dg.DagsterInstance.from_config(str(home))
            except Exception as error:  # noqa: BLE001 - any error: judged by its message
                message = str(error).splitlines()[0]
                return Outcome("clear" if str(home) in message else "unclear", message[:150])
        return Outcome("silent", "the instance opened on a read-only home")


@case("hangs and crashes")
def read_only_home_mid_run(root: Path) -> Outcome:
    """DAGSTER_HOME turned read-only while a run is inside its step"""
    scenario = _pool_scenario()
    with scenario.real_home(root):
        home = Path(os.environ["DAGSTER_HOME"])
        run, _ = _holder(scenario, root, HOLD_S="3")
        with scenario.read_only(home):
            _, stderr = run.communicate(timeout=120)
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        if run.returncode != 0 and str(home) in last and "sqlalchemy" not in stderr:
            return Outcome("clear", last.split(": ", 1)[-1][:150])
        return Outcome("unclear", f"exit {run.returncode}: {last[:150]}")


@case("hangs and crashes")
def query_table_dependency(root: Path) -> Outcome:
    """a SQL model reads marts.songs through query_table('marts.songs')"""
    from spotify_engine_assets.core.data.sqlmodels import (
        SqlModelError,
        load_sql_project,
    )

    (root / "marts").mkdir()
    (root / "marts" / "songs.sql").write_text("SELECT 1 AS song_id")
    (root / "marts" / "a_reader.sql").write_text("SELECT * FROM query_table('marts.songs')")
    models = load_sql_project(root, [])
    order = list(models.models)
    if models.models["marts.a_reader"].depends_on != ("marts.songs",) or order.index("marts.a_reader") < order.index(
        "marts.songs"
    ):
        return Outcome("silent", f"no dependency recorded; order {order}")
    (root / "marts" / "a_reader.sql").write_text("SELECT * FROM query_table(concat('marts', '.songs'))")
    try:
        load_sql_project(root, [])
    except SqlModelError as error:
        return Outcome("handled", f"marts.songs is a dependency, runs first; a computed name fails: {str(error)[:90]}")
    return Outcome("silent", "a computed table name was accepted")


# ---- issue 19: landed data and models that must not serve (their cases live beside this script)


def _register_sibling_catalogues() -> None:
    """Register bench_reliability_landing's and reliability_model_cases' cases as two blocks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_reliability_landing as landing
    import reliability_model_cases as models

    def landed(function):
        def run(root: Path) -> Outcome:
            return Outcome(*landing.run_on_fresh_lake(function, root))

        run.__doc__ = function.__name__.replace("_", " ")
        return run

    def modelled(name, function):
        def run(root: Path) -> Outcome:
            return Outcome(*function(root))

        run.__doc__ = name
        return run

    def materialized(root: Path) -> dict[str, Outcome]:
        return {name: Outcome(*outcome) for name, outcome in models.model_cases(root).items()}

    materialized.__doc__ = models.model_cases.__doc__

    for function in landing.CASES:
        case("landed data")(landed(function))
    for name, function in models.CASES:
        case("models that must not serve")(modelled(name, function))
    case("models that must not serve")(materialized)


_register_sibling_catalogues()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[1000])
    parser.add_argument(
        "--cases", nargs="*", metavar="BLOCK", help=f"rerun catalogue cases (blocks: {', '.join(CASES)})"
    )
    args = parser.parse_args()
    if args.cases is not None:
        counts = run_cases(args.cases or list(CASES))
        bad = sum(row["unclear"] + row["silent"] + row["lost"] for row in counts.values())
        sys.exit(1 if bad else 0)
    print(f"{'files':>6} {'tick 1 s':>9} {'tick 2 s':>9} {'tick 3 s':>9} {'requests':>9}")
    for files in args.files:
        seconds, requests = sensor_ticks(files)
        print(f"{files:>6} " + " ".join(f"{s:>9.2f}" for s in seconds) + f" {requests:>9}")
    waited, answer = lock_wait()
    print(f"writer waited {waited:.2f} s for a 1 s lock held by another process")
    print(f"reader during the write (lock_timeout_s=0): {answer}")


if __name__ == "__main__":
    main()
