"""Resources: the data lake (one movable root for all runtime state), the DuckDB warehouse,
torch runtime settings, and the IO manager that versions artifacts per asset and partition."""

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ..core.data.sqlmodels import quote_table
from ..core.device import resolve_device
from ..core.storage.artifacts import ArtifactStore, load_torch, save_torch, verify_artifact
from ..core.storage.paths import DATA_LAKE_ENV, data_lake_root
from .instance import release_dead_run, run_is_gone

if TYPE_CHECKING:
    import duckdb

DUCKDB_POOL = "duckdb_warehouse"


class DataLake(dg.ConfigurableResource):
    """All runtime state under one root: raw files, the warehouse, artifacts, reports, landing."""

    root: str | None = Field(
        default=None,
        description=f"Data lake folder; default ${DATA_LAKE_ENV} or the repository's data_lake/.",
    )

    @property
    def path(self) -> Path:
        return Path(self.root).expanduser().resolve() if self.root else data_lake_root()

    @property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.path / "artifacts")

    @property
    def warehouse_path(self) -> Path:
        return self.path / "warehouse.duckdb"

    @property
    def reports_dir(self) -> Path:
        return self.path / "reports"

    @property
    def landing_dir(self) -> Path:
        return self.path / "landing"


class WarehouseBusyError(dg.Failure):
    """The warehouse file is locked by another process that is writing it."""


class Warehouse(dg.ConfigurableResource):
    """The DuckDB warehouse file inside the data lake (one writer at a time: see the pool).

    DuckDB lets one process hold a file for writing, and no other process may open it then,
    even read-only. Writers normally queue in the ``duckdb_warehouse`` pool; a connection that
    still finds the file locked (a run outside the pool, a reader during a write) retries for
    ``lock_timeout_s`` and then fails with :class:`WarehouseBusyError` naming the file.
    """

    lake: DataLake
    lock_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="Seconds to wait for another process's lock on the warehouse file before failing.",
    )

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator["duckdb.DuckDBPyConnection"]:
        import duckdb  # imported here: a module-level import makes Dagster's resource
        # introspection keep duckdb type objects alive, which nanobind reports at exit

        path = self.lake.warehouse_path
        if read_only and not path.exists():
            raise dg.Failure(f"warehouse {path} does not exist yet: materialize the ingestion assets first")
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(path), read_only=read_only)
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower():
                    raise dg.Failure(f"cannot open warehouse {path}: {error}") from error
                if time.monotonic() >= deadline:
                    raise WarehouseBusyError(
                        f"warehouse {path} is being written by another process (DuckDB allows one writer per "
                        f"file and no reader during a write); waited {self.lock_timeout_s:g} s. Writers share the "
                        f"'{DUCKDB_POOL}' concurrency pool; retry when the run writing it ends."
                    ) from None
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 2, 0.25)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator["duckdb.DuckDBPyConnection"]:
        """A write connection inside one transaction (:func:`transaction`)."""
        with self.connect() as con, transaction(con):
            yield con

    def read_table(self, table: str) -> pl.DataFrame:
        """A whole table as polars, by schema-qualified name (identifiers quoted)."""
        import duckdb

        with self.connect(read_only=True) as con:
            try:
                return con.sql(f"SELECT * FROM {quote_table(table)}").pl()
            except duckdb.CatalogException as error:
                raise dg.Failure(f"warehouse table {table} is missing: materialize it first ({error})") from error


@contextlib.contextmanager
def transaction(con) -> Iterator[None]:
    """One transaction on ``con``: committed when the block ends, rolled back on any error."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def init_warehouse_pool(instance: dg.DagsterInstance) -> int:
    """Create the ``duckdb_warehouse`` pool's slots (dagster.yaml's default limit) once, before
    runs start; returns the slot count.

    Dagster otherwise creates them lazily when a step first claims one, and on SQLite two runs
    claiming at the same instant can both count zero slots and both add one (seen in
    ``tests/test_reliability.py``): the pool then admits two writers.
    """
    storage = instance.event_log_storage
    if storage.get_concurrency_info(DUCKDB_POOL).slot_count == 0:
        storage.initialize_concurrency_limit_to_default(DUCKDB_POOL)
    return storage.get_concurrency_info(DUCKDB_POOL).slot_count


def release_killed_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark runs whose process died without ending them (SIGKILL, power loss) as failed and free
    their concurrency slots; returns their run ids.

    A run killed while it held the ``duckdb_warehouse`` pool slot would otherwise keep it, and
    every later warehouse writer would wait for it for ever. Only runs started on this host are
    judged: a run counts as killed when every process id its events recorded is gone.
    """
    released = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        pids = run_is_gone(instance, run.run_id)
        if pids is not None:
            release_dead_run(instance, run, pids)
            released.append(run.run_id)
    return released


# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD and M_MMAP_MAX
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def pin_glibc_malloc(mmap_threshold_mb: int | None, trim_threshold_mb: int, heap_only: bool = False) -> bool:
    """Fix glibc's allocator thresholds for this process (False where libc is not glibc).

    By default glibc serves blocks above an *adaptive* threshold (at most 32 MiB) with a fresh
    ``mmap`` and unmaps them on free, so a training step's large tensors are page-faulted anew on
    every step: at the 50x world (``[N, d]`` tensors of 150 MB) an epoch spent as much system time
    as user time. ``heap_only`` turns mmap off (``M_MMAP_MAX`` 0): every block comes from the
    heap, and a block one step frees is reused by the next (3 sampled 50x steps: 18.3 s system
    time pinned at 32 MiB, 3.0 s heap-only). Otherwise ``mmap_threshold_mb`` pins the threshold
    (blocks below it stay in the heap). Free heap above ``trim_threshold_mb`` is returned to the OS.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    settings = [(_M_TRIM_THRESHOLD, trim_threshold_mb << 20)]
    if heap_only:
        settings.append((_M_MMAP_MAX, 0))
    elif mmap_threshold_mb is not None:
        settings.append((_M_MMAP_THRESHOLD, mmap_threshold_mb << 20))
    return all(bool(mallopt(parameter, value)) for parameter, value in settings)


class TorchRuntime(dg.ConfigurableResource):
    """Deliberate torch threading (on a busy 2-core machine 1 thread is fastest, see README), the
    glibc allocator settings for training (``pin_glibc_malloc``) and the device."""

    threads: int = Field(default=1, ge=1, description="torch intra-op threads for training and scoring.")
    malloc_heap_only: bool = Field(
        default=True,
        description="glibc: serve every block from the heap (mmap off), so the large tensors one "
        "training step frees are reused by the next instead of being mapped and page-faulted again.",
    )
    malloc_mmap_threshold_mb: int | None = Field(
        default=32,
        ge=1,
        description="glibc, without malloc_heap_only: blocks below this come from the heap "
        "(None: glibc's adaptive default and no other setting).",
    )
    malloc_trim_threshold_mb: int = Field(
        default=4096, ge=1, description="glibc: free heap kept before it is returned to the OS."
    )
    device: str = Field(
        default="auto", description="Where graph models train: auto (CUDA when present, else CPU), cpu, cuda or cuda:N."
    )

    def torch_device(self) -> torch.device:
        """The resolved ``device`` (a clear error naming this resource for one the machine lacks)."""
        try:
            return resolve_device(self.device)
        except ValueError as error:
            raise ValueError(f"resource torch_runtime, setting device: {error}") from None

    def apply(self) -> None:
        torch.set_num_threads(self.threads)
        if self.malloc_heap_only or self.malloc_mmap_threshold_mb is not None:
            pin_glibc_malloc(self.malloc_mmap_threshold_mb, self.malloc_trim_threshold_mb, self.malloc_heap_only)


class LakeIOManager(dg.ConfigurableIOManager):
    """Stores asset outputs as versioned artifacts in the data lake.

    Polars frames become Parquet, everything else a ``torch.save`` file of tensors and plain
    containers (loaded back with ``weights_only=True``). A new version is written to a
    temporary folder and renamed into place; only then does it become current, so a failed
    run never damages the previous materialization. Each materialization records its
    artifact path in metadata.
    """

    lake: DataLake

    def _partition(self, context: dg.OutputContext | dg.InputContext) -> str | None:
        # the *asset's* partition: an unpartitioned asset materialized in a partitioned run
        # (e.g. a landing batch) stays in its unpartitioned slot
        return context.asset_partition_key if context.has_asset_partitions else None

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return

        def fill(folder: Path) -> None:
            if isinstance(obj, pl.DataFrame):
                obj.write_parquet(folder / "data.parquet")
            else:
                save_torch(obj, folder / "data.pt")
            (folder / "run.json").write_text(json.dumps({"run_id": context.run_id}))

        version = self.lake.artifacts.write(context.asset_key.path, self._partition(context), fill, tag=context.run_id)
        context.add_output_metadata({"artifact": dg.MetadataValue.path(str(version))})

    def _load(self, key: list[str], partition: str | None) -> Any:
        folder = self.lake.artifacts.current(key, partition)
        parquet = folder / "data.parquet"
        if parquet.exists():
            verify_artifact(parquet)
            return pl.read_parquet(parquet)
        return load_torch(folder / "data.pt")

    def load_input(self, context: dg.InputContext) -> Any:
        key = context.asset_key.path
        reader_partitioned = context.step_context.entity_partitions_def is not None
        if context.has_asset_partitions and context.upstream_output is not None and not reader_partitioned:
            # an unpartitioned asset reading every partition of a partitioned one (also inside a
            # partitioned run: a config's retrain run refreshes the chain's comparison)
            loaded = {}
            for partition in context.asset_partition_keys:
                try:
                    loaded[partition] = self._load(key, partition)
                except FileNotFoundError:
                    context.log.warning(f"{'/'.join(key)} partition {partition} not materialized; skipped")
            return loaded
        return self._load(key, self._partition(context))
