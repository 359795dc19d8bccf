"""Ingestion: the synthetic music world and its listening sessions, loaded into DuckDB.

One multi-asset generates every raw table at once (they share one random stream), writes them
as Parquet into a versioned folder of the data lake and replaces the ``raw`` schema of the
warehouse in a single transaction. The generator's latent truth (user genre affinities) is a
separate asset that stays out of the warehouse: it is for diagnostics, never a model input.
"""

import dataclasses

import dagster as dg
import polars as pl
from pydantic import Field

from ...core.data.sqlmodels import quote_table
from ...core.plots import count_bars, frame_markdown, hour_profile
from ...core.presentation import group_name, metric_value
from ...core.storage.paths import source_version
from ...datasets.listening import generator as generator_lib
from ...datasets.listening.generator import GeneratorConfigError, GeneratorSettings, generate_world, write_world
from ..resources import DUCKDB_POOL, DataLake, Warehouse

RAW_TABLES = ("genres", "artists", "artist_genres", "songs", "song_genres", "users", "plays")
RAW_SOURCES = tuple(f"raw.{table}" for table in RAW_TABLES)
GROUND_TRUTH_KEY = dg.AssetKey(["ground_truth", "user_genre_affinity"])
GROUP = group_name("listening", "ingestion")
GENERATOR_VERSION = source_version(generator_lib)

_DESCRIPTIONS = {
    "genres": "Genres with Zipf popularity (popularity is the generator's hidden truth).",
    "artists": "Artists with heavy-tailed popularity.",
    "artist_genres": "Each artist's 1-3 genres.",
    "songs": "Songs with artist, duration and popularity.",
    "song_genres": "Genres of each song (inherited from its artist).",
    "users": "Users typed casual / regular / power with an activity level.",
    "plays": "Every play: session, timestamp, ms played, duration, completion ratio, skip flag.",
}


class SyntheticWorldConfig(dg.Config):
    """Size and seed of the generated world (defaults: the seed project's reference size)."""

    users: int = Field(default=1000, description="Number of listeners.")
    songs: int = Field(default=5000, description="Number of songs (>= artists).")
    artists: int = Field(default=500, description="Number of artists.")
    genres: int = Field(default=35, description="Number of genres.")
    days: int = Field(default=30, description="Days of listening history from the fixed start date.")
    seed: int = Field(default=42, description="Random seed; the same config and seed give identical files.")

    def settings(self) -> GeneratorSettings:
        return GeneratorSettings(**self.model_dump())


@dg.multi_asset(
    specs=[
        *(
            dg.AssetSpec(
                ["raw", table], description=_DESCRIPTIONS[table], group_name=GROUP, kinds={"duckdb", "parquet"}
            )
            for table in RAW_TABLES
        ),
        dg.AssetSpec(
            GROUND_TRUTH_KEY,
            group_name=GROUP,
            kinds={"parquet"},
            description="Latent user genre affinities of the generator. Diagnostics only: never a model input.",
        ),
    ],
    pool=DUCKDB_POOL,
    code_version=GENERATOR_VERSION,
)
def synthetic_world(
    context: dg.AssetExecutionContext, config: SyntheticWorldConfig, lake: DataLake, warehouse: Warehouse
):
    """Generate the synthetic listening world and load it into the warehouse's ``raw`` schema."""
    settings = config.settings()
    try:
        settings.validate()
    except GeneratorConfigError as error:
        raise dg.Failure(f"invalid synthetic_world config: {error}") from error
    world = generate_world(settings)
    context.log.info(f"generated {world.plays.height} plays for {settings.users} users")

    version = lake.artifacts.write(
        ["raw", "synthetic"], None, lambda folder: write_world(world, folder), tag=context.run.run_id
    )
    with warehouse.transaction() as con:
        con.execute('CREATE SCHEMA IF NOT EXISTS "raw"')
        for table in RAW_TABLES:
            con.execute(
                f"CREATE OR REPLACE TABLE {quote_table(f'raw.{table}')} AS SELECT * FROM read_parquet(?)",
                [str(version / f"{table}.parquet")],
            )

    for table in RAW_TABLES:
        frame: pl.DataFrame = getattr(world, table)
        metadata = {
            "dagster/row_count": frame.height,
            "parquet": dg.MetadataValue.path(str(version / f"{table}.parquet")),
            "preview": dg.MetadataValue.md(frame_markdown(frame, max_rows=5)),
            "null_cells": int(frame.null_count().sum_horizontal().item()),
        }
        if table == "plays":
            by_hour = dict(frame["played_at"].dt.hour().value_counts().iter_rows())
            counts = [by_hour.get(hour, 0) for hour in range(24)]
            metadata["plays per hour"] = dg.MetadataValue.md(hour_profile(counts, "plays per hour of day"))
            metadata["skip rate"] = metric_value(frame["skipped"].mean())
            settings_meta = {k: str(v) for k, v in dataclasses.asdict(settings).items()}
            metadata["generator settings"] = dg.MetadataValue.json(settings_meta)
            metadata["raw row counts"] = dg.MetadataValue.md(
                count_bars(
                    {f"raw.{t}": getattr(world, t).height for t in RAW_TABLES}, "rows per raw table", "rows", log=True
                )
            )
        yield dg.MaterializeResult(asset_key=["raw", table], metadata=metadata)
    yield dg.MaterializeResult(
        asset_key=GROUND_TRUTH_KEY,
        metadata={
            "dagster/row_count": world.user_genre_affinity.height,
            "parquet": dg.MetadataValue.path(str(version / "user_genre_affinity.parquet")),
        },
    )


defs = dg.Definitions(assets=[synthetic_world])
