"""How metadata reads in the UI: rounded numbers, headline numbers first as numeric entries, a
config in one line instead of its JSON, efficiency in seconds / ms / MiB, and SQL columns
described from schema.yml (a stale description fails the run and keeps the previous table)."""

import dagster as dg
import duckdb
import pytest

from spotify_engine_assets.core.data.sqlmodels import load_sql_project
from spotify_engine_assets.core.models.base import FitResult
from spotify_engine_assets.core.presentation import (
    INLINE_LIMIT,
    config_hash,
    config_summary,
    metric_value,
    rounded,
    tidy,
)
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.defs.chain import config_metadata, efficiency_metadata, trained_model_headline
from spotify_engine_assets.defs.resources import DataLake, Warehouse
from spotify_engine_assets.defs.sql import build_sql_definitions


def test_rounded_keeps_four_significant_digits():
    assert rounded(0.2154930981618541) == 0.2155
    assert rounded(0.021154698450118303) == 0.02115
    assert rounded(1234.5678) == 1235.0
    assert rounded(3) == 3.0
    # a metric or share: 4 decimals, as the markdown tables print it
    assert metric_value(0.09916) == 0.0992 and metric_value(0.0001572) == 0.0002
    assert tidy({"a": [0.32197636409353786, {"b": 2.0000001}], "c": "x", "d": True, "e": None, "n": 7}) == {
        "a": [0.322, {"b": 2.0}],
        "c": "x",
        "d": True,
        "e": None,
        "n": 7,
    }


def test_config_summary_is_one_short_line_with_headline_settings():
    lightgcn = DATASET.registry.base["lightgcn"]
    metadata = config_metadata(lightgcn)
    summary = metadata["config"]
    assert "\n" not in summary and len(summary) < 200
    assert summary.startswith("split random · trainer advanced · loss bpr · embedding_dim")
    assert f"lr {lightgcn.lr}" in summary and f"max_epochs {lightgcn.max_epochs}" in summary
    assert metadata["config_hash"] == config_hash(lightgcn.model_dump()) and len(metadata["config_hash"]) == 12
    # a changed setting changes the hash; a nested config is named by its model
    assert config_hash({**lightgcn.model_dump(), "lr": 0.02}) != metadata["config_hash"]
    assert (
        config_summary({"split": "random", "fusion": {"model": "itemknn", "k": 1}}, {})
        == "split random · fusion itemknn"
    )
    assert config_summary({"name": "x", "model": "most_popular"}, {}) == "defaults"


def test_trained_model_headline_leads_with_numbers():
    history = [{"epoch": e, "loss": 1.0 / e, "seconds": 0.5} for e in range(1, 5)]
    result = FitResult(
        seconds=2.0123456789, history=history, best_epoch=3, epochs_run=4, best_valid=0.123456789, monitor="recall@10"
    )
    headline = trained_model_headline(result, 96000)
    assert list(headline) == [
        "best_valid_recall@10",
        "train_seconds",
        "seconds_per_epoch",
        "epochs_run",
        "best_epoch",
        "num_parameters",
    ]
    assert headline["best_valid_recall@10"] == dg.MetadataValue.float(0.1235)
    assert headline["train_seconds"] == dg.MetadataValue.float(2.012)
    assert headline["seconds_per_epoch"] == dg.MetadataValue.float(0.5)
    assert headline["epochs_run"] == dg.MetadataValue.int(4) and headline["num_parameters"] == dg.MetadataValue.int(
        96000
    )
    # a closed-form model: no epochs, no validation
    assert list(trained_model_headline(FitResult(seconds=0.1), 10)) == ["train_seconds", "num_parameters"]


def test_efficiency_is_numbers_in_readable_units():
    efficiency = {
        "num_parameters": 96000,
        "train_seconds": 12.3456789,
        "forward_seconds": 0.0123456,
        "latency_p50_ms": 0.0361234,
        "latency_p95_ms": 0.1,
        "throughput_users_per_s": 123456.789,
        "memory_estimate_mb": 1.23456789,
        "memory_peak_mb": None,
    }
    metadata = efficiency_metadata(efficiency)
    assert metadata == {
        "efficiency/train_seconds": dg.MetadataValue.float(12.35),
        "efficiency/forward_ms": dg.MetadataValue.float(12.35),
        "efficiency/latency_p50_ms": dg.MetadataValue.float(0.03612),
        "efficiency/latency_p95_ms": dg.MetadataValue.float(0.1),
        "efficiency/throughput_users_per_s": dg.MetadataValue.float(123500.0),
        "efficiency/memory_estimate_mb": dg.MetadataValue.float(1.235),
    }


# --------------------------------------------------------------------------- SQL column descriptions

SCHEMA_YML = """models:
  t:
    id: [not_null]
descriptions:
  t:
    id: The row's id.
    label: {label}
"""


def _sql_defs(tmp_path, label_description: str, column: str = "label"):
    root = tmp_path / "sql"
    (root / "staging").mkdir(parents=True, exist_ok=True)
    (root / "staging" / "t.sql").write_text(f"SELECT 1 AS id, 'x' AS {column} UNION ALL SELECT 2, NULL")
    (root / "staging" / "schema.yml").write_text(SCHEMA_YML.format(label=label_description))
    lake = DataLake(root=str(tmp_path / "lake"))
    return dg.Definitions.merge(
        build_sql_definitions(load_sql_project(root, [])),
        dg.Definitions(resources={"warehouse": Warehouse(lake=lake)}),
    ), lake


def _materialize(defs):
    return dg.materialize(defs.assets, resources=defs.resources, raise_on_error=False)


def test_sql_columns_carry_their_schema_yml_descriptions(tmp_path):
    defs, _ = _sql_defs(tmp_path, "A free-text label.")
    result = _materialize(defs)
    assert result.success
    metadata = result.asset_materializations_for_node("staging__t")[0].metadata
    columns = {c.name: c.description for c in metadata["dagster/column_schema"].value.columns}
    assert columns == {"id": "The row's id.", "label": "A free-text label."}
    # the plot's numbers, short enough to show inline in the UI's metadata table
    profile = metadata["profile"].value
    assert "| label | 1 | 50.0 |" in profile and len(profile) < INLINE_LIMIT
    assert metadata["columns"].value == 2 and metadata["null_cells"].value == 1


def test_a_stale_column_description_fails_and_keeps_the_previous_table(tmp_path):
    defs, lake = _sql_defs(tmp_path, "A free-text label.")
    assert _materialize(defs).success
    renamed, _ = _sql_defs(tmp_path, "A free-text label.", column="tag")  # the SQL renames the column
    result = _materialize(renamed)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.error.message if failure.step_failure_data.error else ""
    message += (
        failure.step_failure_data.user_failure_data.description if failure.step_failure_data.user_failure_data else ""
    )
    assert "staging/schema.yml: descriptions.t: no column label in staging.t" in message, message
    assert "the previous staging.t is kept" in message
    con = duckdb.connect(str(lake.warehouse_path), read_only=True)
    try:
        assert [row[0] for row in con.sql("DESCRIBE staging.t").fetchall()] == ["id", "label"]
    finally:
        con.close()


@pytest.mark.parametrize("table", ["marts.songs", "marts.user_song_interactions", "playlists.tracks", "lastfm.listens"])
def test_main_tables_have_column_descriptions(table):
    from spotify_engine_assets.defs.sql import load_project

    model = load_project().models[table]
    assert len(model.descriptions) >= 2 and all(text for _, text in model.descriptions)
