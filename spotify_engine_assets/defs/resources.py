"""Resources: the data lake (one movable root for all runtime state), the DuckDB warehouse,
torch runtime settings, and the IO manager that versions artifacts per asset and partition."""


import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ..lib.artifacts import ArtifactStore, load_torch, save_torch
from ..lib.paths import DATA_LAKE_ENV, data_lake_root

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


class Warehouse(dg.ConfigurableResource):
    """The DuckDB warehouse file inside the data lake (one writer at a time: see the pool)."""

    lake: DataLake

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator["duckdb.DuckDBPyConnection"]:
        import duckdb  # imported here: a module-level import makes Dagster's resource
        # introspection keep duckdb type objects alive, which nanobind reports at exit

        path = self.lake.warehouse_path
        if read_only and not path.exists():
            raise dg.Failure(f"warehouse {path} does not exist yet: materialize the ingestion assets first")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            raise dg.Failure(
                f"cannot open warehouse {path} ({error}); another process holds its write lock - "
                f"writers share the '{DUCKDB_POOL}' concurrency pool, retry when it is free"
            ) from error
        try:
            yield con
        finally:
            con.close()

    def read_table(self, table: str) -> pl.DataFrame:
        """A whole table as polars, by schema-qualified name (identifiers quoted)."""
        import duckdb

        schema, name = table.split(".")
        with self.connect(read_only=True) as con:
            try:
                return con.sql(f'SELECT * FROM "{schema}"."{name}"').pl()
            except duckdb.CatalogException as error:
                raise dg.Failure(f"warehouse table {table} is missing: materialize it first ({error})") from error


class TorchRuntime(dg.ConfigurableResource):
    """Deliberate torch threading: on a busy 2-core machine 1 thread is fastest (see README)."""

    threads: int = Field(default=1, ge=1, description="torch intra-op threads for training and scoring.")

    def apply(self) -> None:
        torch.set_num_threads(self.threads)


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
        key = context.asset_key.path

        def fill(folder: Path) -> None:
            if isinstance(obj, pl.DataFrame):
                obj.write_parquet(folder / "data.parquet")
            else:
                save_torch(obj, folder / "data.pt")
            (folder / "run.json").write_text(json.dumps({"run_id": context.run_id}))

        version = self.lake.artifacts.write(key, self._partition(context), fill, tag=context.run_id)
        context.add_output_metadata({"artifact": dg.MetadataValue.path(str(version))})

    def _load(self, key: list[str], partition: str | None) -> Any:
        folder = self.lake.artifacts.current(key, partition)
        parquet = folder / "data.parquet"
        return pl.read_parquet(parquet) if parquet.exists() else load_torch(folder / "data.pt")

    def load_input(self, context: dg.InputContext) -> Any:
        key = context.asset_key.path
        if context.has_asset_partitions and context.upstream_output is not None and not context.has_partition_key:
            # an unpartitioned asset reading every partition of a partitioned one
            loaded = {}
            for partition in context.asset_partition_keys:
                try:
                    loaded[partition] = self._load(key, partition)
                except FileNotFoundError:
                    context.log.warning(f"{'/'.join(key)} partition {partition} not materialized; skipped")
            return loaded
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return self._load(key, partition)
