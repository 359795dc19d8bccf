"""The Last.fm chain's ingestion: the five ``.dat`` files and the fixed split's two ``.tsv`` files
loaded into the warehouse schema ``raw_lastfm`` in one transaction (group ``lastfm_ingest``).
Folders are run config (defaults: ``../shared/data/...`` relative to the repository root); the
``lastfm`` SQL marts (``dbt_like_sql/lastfm``) read them."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from ...core.plots import frame_markdown
from ...core.presentation import group_name
from ...core.storage.paths import source_version
from ...datasets.lastfm import data as lastfm_lib
from ..resources import DUCKDB_POOL, Warehouse

RAW_SCHEMA, RAW_TABLES = lastfm_lib.RAW_SCHEMA, lastfm_lib.RAW_TABLES


class LastfmSourceConfig(dg.Config):
    data_dir: str = Field(default="", description="Folder of the .dat files; empty = ../shared/data/lastfm2k.")
    split_dir: str = Field(
        default="", description="Folder of train.tsv/test.tsv; empty = ../shared/data/lastfm2k_split_seed0."
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            [RAW_SCHEMA, t],
            group_name=group_name("lastfm", "ingestion"),
            kinds={"duckdb"},
            description=f"Last.fm 2K `{t}` as loaded from its file (DuckDB table `{RAW_SCHEMA}.{t}`).",
        )
        for t in RAW_TABLES
    ],
    pool=DUCKDB_POOL,
    code_version=source_version(lastfm_lib),
)
def lastfm_raw(context: dg.AssetExecutionContext, config: LastfmSourceConfig, warehouse: Warehouse):
    """Load the Last.fm 2K files (tags files decoded from Latin-1) and the fixed split into ``raw_lastfm``."""
    data_dir = Path(config.data_dir).expanduser().resolve() if config.data_dir else lastfm_lib.data_dir()
    split_dir = Path(config.split_dir).expanduser().resolve() if config.split_dir else lastfm_lib.split_dir()
    if not lastfm_lib.available(data_dir, split_dir):
        raise dg.Failure(f"Last.fm 2K files not found under {data_dir} and {split_dir} (see ../shared/data/README.md)")
    frames = lastfm_lib.read_raw(data_dir)
    frames.update({f"split_{k}": v for k, v in lastfm_lib.read_split(split_dir).items()})
    with warehouse.transaction() as con:
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{RAW_SCHEMA}"')
        for table in RAW_TABLES:
            con.register("frame", frames[table])
            con.execute(f'CREATE OR REPLACE TABLE "{RAW_SCHEMA}"."{table}" AS SELECT * FROM frame')
            con.unregister("frame")
    for table in RAW_TABLES:
        preview = dg.MetadataValue.md(frame_markdown(frames[table], max_rows=5))
        yield dg.MaterializeResult(
            asset_key=[RAW_SCHEMA, table], metadata={"dagster/row_count": frames[table].height, "preview": preview}
        )


defs = dg.Definitions(assets=[lastfm_raw])
