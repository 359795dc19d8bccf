"""The dbt-like SQL project as assets: one asset per ``dbt_like_sql/<schema>/<name>.sql``.

Dependencies come from parsing the SQL (see :mod:`spotify_engine_assets.core.data.sqlmodels`); raw
tables map to the ingestion assets that produce them. Data tests declared in each folder's
``schema.yml`` become asset checks. They run inside the transaction that rebuilds the table: a
failing ``error`` test rolls the transaction back, so the previous table stays intact and the
run fails naming the test; ``warn`` tests are reported as non-blocking check results.
"""

import dagster as dg
import polars as pl

from ..core.data.sqlmodels import (
    DataTest,
    SqlModel,
    SqlModelError,
    SqlProject,
    load_sql_project,
    materialize_model,
    quote_table,
    run_data_test,
)
from ..core.plots import data_quality, frame_markdown
from ..core.storage.paths import sql_models_dir
from ..datasets.lastfm.data import LASTFM_SOURCES
from ..datasets.playlists.kaggle import KAGGLE_SOURCES
from .listening.ingestion import RAW_SOURCES
from .resources import DUCKDB_POOL, Warehouse

# Raw tables the SQL models may read, by the ingestion assets that write them.
SQL_SOURCES = (*RAW_SOURCES, *KAGGLE_SOURCES, *LASTFM_SOURCES)
# The chain (asset group <chain>_sql) of each folder of dbt_like_sql/.
SCHEMA_GROUPS = {
    "staging": "listening_sql",
    "marts": "listening_sql",
    "playlists": "playlists_sql",
    "lastfm": "lastfm_sql",
}


class DataTestFailed(Exception):
    """A blocking data test found failing rows."""


def table_key(table: str) -> dg.AssetKey:
    """``schema.table`` -> the asset key ``[schema, table]``."""
    return dg.AssetKey(table.split("."))


def column_schema(columns: list[tuple[str, str]], descriptions: dict[str, str] | None = None) -> dg.TableSchema:
    """A Dagster table schema from (name, type) pairs, with the columns' ``descriptions`` (schema.yml).

    Built in its own frame on purpose: Dagster's record classes resolve annotations against the
    *calling* frame and keep that namespace alive, so constructing the schema where a DuckDB
    connection is a local would keep the connection alive until interpreter exit (nanobind then
    prints a page of "leaked instance" warnings).
    """
    descriptions = descriptions or {}
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype), description=descriptions.get(name)) for name, dtype in columns]
    )


def column_profile(con, table: str, columns: list[tuple[str, str]]) -> tuple[dict[str, int], dict[str, int]] | None:
    """NULL and (approximate) distinct counts per column of a built table, in one scan; ``None``
    when DuckDB cannot profile a column type (the plot is then left out, the asset still succeeds)."""
    if not columns:
        return None
    quoted = ['"' + name.replace('"', '""') + '"' for name, _ in columns]
    selects = [f"count(*) - count({q}), approx_count_distinct({q})" for q in quoted]
    target = ".".join('"' + part + '"' for part in table.split("."))
    try:
        (values,) = con.sql(f"SELECT {', '.join(selects)} FROM {target}").fetchall()
    except Exception:  # noqa: BLE001 - an exotic column type: no profile, not a failed model
        return None
    names = [name for name, _ in columns]
    return {n: int(values[2 * i]) for i, n in enumerate(names)}, {
        n: int(values[2 * i + 1]) for i, n in enumerate(names)
    }


def quality_metadata(table: str, row_count: int, profile: tuple[dict[str, int], dict[str, int]] | None) -> dict:
    """Data-quality metadata of a SQL model: NULLs per column and the summary plot."""
    if profile is None:
        return {}
    nulls, distinct = profile
    rows = max(row_count, 1)
    profile_table = pl.DataFrame(
        {
            "column": list(nulls),
            "NULLs": list(nulls.values()),
            "NULL %": [round(100 * n / rows, 1) for n in nulls.values()],
            "distinct (approx.)": [distinct.get(c, 0) for c in nulls],
        }
    )
    return {
        "null_cells": sum(nulls.values()),
        "columns": len(nulls),
        # the numbers of the plot, inline in the UI while short (the plot is an image behind "[Show Markdown]")
        "profile": dg.MetadataValue.md(frame_markdown(profile_table, max_rows=100, float_digits=1)),
        "data_quality": dg.MetadataValue.md(
            data_quality(row_count, nulls, distinct, f"{table}: NULL and distinct share per column")
        ),
    }


def check_descriptions(con, model: SqlModel) -> None:
    """Before the rebuilt table is committed: every column ``schema.yml`` describes must exist (a
    stale description fails the run naming it; the previous table is kept)."""
    if not model.descriptions:
        return
    columns = [row[0] for row in con.sql(f"DESCRIBE {quote_table(model.table)}").fetchall()]
    unknown = [column for column, _ in model.descriptions if column not in columns]
    if unknown:
        raise dg.Failure(
            f"{model.schema}/schema.yml: descriptions.{model.name}: no column {', '.join(unknown)} in {model.table} "
            f"(its columns: {', '.join(columns)}); the previous {model.table} is kept"
        )


def build_sql_asset(model: SqlModel, group_name: str = "sql") -> dg.AssetsDefinition:
    """One asset (plus its checks) for one SQL model."""
    extra_deps = {t for test in model.tests for t in test.referenced_tables() if t != model.table}
    checks = [
        dg.AssetCheckSpec(
            test.name,
            asset=table_key(model.table),
            blocking=test.severity == "error",
            description=f"{test.description} (severity {test.severity})",
            additional_deps=[table_key(t) for t in test.referenced_tables() if t != model.table],
        )
        for test in model.tests
    ]
    source = f"`{model.schema}/{model.path.name}`:\n\n```sql\n{model.sql.strip()}\n```"

    @dg.asset(
        key=table_key(model.table),
        deps=[table_key(t) for t in sorted(set(model.depends_on) | extra_deps)],
        code_version=model.code_version,
        description=f"DuckDB table `{model.table}` built from {source}",
        group_name=group_name,
        kinds={"duckdb", "sql"},
        check_specs=checks,
        pool=DUCKDB_POOL,
        metadata={"sql_file": dg.MetadataValue.path(str(model.path))},
    )
    def _sql_model(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        outcomes: dict[str, tuple[DataTest, int, object]] = {}

        def run_tests(con) -> None:
            check_descriptions(con, model)
            for test in model.tests:
                try:
                    failing, sample = run_data_test(con, test)
                except Exception as error:
                    raise dg.Failure(
                        f"{model.schema}/{model.path.name}: data test {test.name} could not run: {error}"
                    ) from error
                outcomes[test.name] = (test, failing, sample)
            blocking = [name for name, (test, failing, _) in outcomes.items() if failing and test.severity == "error"]
            if blocking:
                details = "; ".join(f"{name}: {outcomes[name][1]} failing rows" for name in blocking)
                raise DataTestFailed(f"{model.schema}/{model.path.name}: blocking data tests failed ({details})")

        with warehouse.connect() as con:
            try:
                info = materialize_model(con, model, before_commit=run_tests)
            except DataTestFailed as error:
                samples = {
                    name: dg.MetadataValue.md(frame_markdown(sample))
                    for name, (_, failing, sample) in outcomes.items()
                    if failing
                }
                raise dg.Failure(f"{error}; the previous {model.table} is kept", metadata=samples) from error
            except SqlModelError as error:
                raise dg.Failure(description=str(error)) from error
            profile = column_profile(con, model.table, info["columns"])

        check_results = [
            dg.AssetCheckResult(
                check_name=name,
                passed=failing == 0,
                severity=dg.AssetCheckSeverity.ERROR if test.severity == "error" else dg.AssetCheckSeverity.WARN,
                metadata={"failing_rows": failing, "sample": dg.MetadataValue.md(frame_markdown(sample))},
            )
            for name, (test, failing, sample) in outcomes.items()
        ]
        schema = column_schema(info["columns"], dict(model.descriptions))
        metadata = {
            "dagster/row_count": info["row_count"],
            "dagster/column_schema": schema,
            "table": model.table,
            **quality_metadata(model.table, info["row_count"], profile),
        }
        return dg.MaterializeResult(metadata=metadata, check_results=check_results)

    return _sql_model


def build_sql_definitions(project: SqlProject) -> dg.Definitions:
    """One asset per model, grouped by its folder's chain (``SCHEMA_GROUPS``, default ``sql``)."""
    return dg.Definitions(
        assets=[build_sql_asset(model, SCHEMA_GROUPS.get(model.schema, "sql")) for model in project.models.values()]
    )


def load_project() -> SqlProject:
    """Parse the SQL project; any problem fails definition loading with the file named."""
    return load_sql_project(sql_models_dir(), SQL_SOURCES)
