"""Layer 3: the whole chain materialized in-process on tiny data, and failures that keep
earlier materializations intact."""

import json
import re

import dagster as dg
import duckdb
import polars as pl
import pytest

from spotify_engine_assets.core.presentation import INLINE_LIMIT
from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.runner import MODEL_STAGE, materialize_chain, run_config


@pytest.fixture(scope="module")
def tiny_chain(module_lake):
    """Materialize every stage once into the module's data lake and an ephemeral instance."""
    instance = dg.DagsterInstance.ephemeral()
    results = materialize_chain("tiny", instance=instance, log=lambda message: None)
    return module_lake, instance, results


def test_every_stage_succeeds(tiny_chain):
    _, _, results = tiny_chain
    assert [r.name for r in results] == ["data"] + [f"model {n}" for n in sorted(DATASET.registry.base)] + [
        "comparison"
    ]
    failed = {r.name: r.error for r in results if not r.success}
    assert not failed


def test_warehouse_holds_every_schema(tiny_chain):
    lake, _, _ = tiny_chain
    con = duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True)
    try:
        tables = set(con.sql("SELECT table_schema || '.' || table_name FROM information_schema.tables").fetchall())
        tables = {t[0] for t in tables}
        for table in ("raw.plays", "staging.stg_plays", "marts.user_song_interactions", "marts.songs"):
            assert table in tables
        ((plays,),) = con.sql('SELECT count(*) FROM "raw"."plays"').fetchall()
        ((interactions,),) = con.sql('SELECT count(*) FROM "marts"."user_song_interactions"').fetchall()
        assert plays > interactions > 0
    finally:
        con.close()


def test_reports_and_comparison(tiny_chain):
    lake, _, _ = tiny_chain
    store = ArtifactStore(lake / "artifacts")
    for name in DATASET.registry.base:
        report = load_torch(store.current(["listening", "metric_report"], name) / "data.pt")
        assert report["config"] == name
        assert 0 <= report["metrics"]["ndcg@10"] <= 1
        assert report["most_popular"]["users_evaluated"] == report["metrics"]["users_evaluated"]
    comparison = pl.read_csv(lake / "reports" / "listening" / "model_comparison.csv")
    assert sorted(comparison["config"]) == sorted(DATASET.registry.base)


def test_trained_artifact_records_config_and_history(tiny_chain):
    lake, _, _ = tiny_chain
    artifact = load_torch(
        ArtifactStore(lake / "artifacts").current(["listening", "trained_model"], "gat_enhanced") / "data.pt"
    )
    assert artifact["config"]["name"] == "gat_enhanced"
    cap = run_config("tiny_train.yaml")["ops"]["listening__trained_model"]["config"]["max_epochs"]
    assert 1 <= artifact["epochs_run"] == len(artifact["history"]) <= cap
    assert artifact["state"].keys() == artifact["final_state"].keys()


def test_failed_training_keeps_previous_model(tiny_chain):
    lake, instance, _ = tiny_chain
    store = ArtifactStore(lake / "artifacts")
    before = store.current(["listening", "trained_model"], "lightgcn")
    from spotify_engine_assets.definitions import defs

    config = run_config("tiny_train.yaml")
    config["ops"]["listening__trained_model"]["config"]["max_epochs"] = 0  # rejected by the asset
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=MODEL_STAGE,
        run_config=config,
        instance=instance,
        resources=defs.resources,
        partition_key="lightgcn",
        raise_on_error=False,
    )
    assert not result.success
    assert store.current(["listening", "trained_model"], "lightgcn") == before
    assert load_torch(before / "data.pt")["config"]["name"] == "lightgcn"


def test_invalid_world_config_fails_before_touching_warehouse(tiny_chain):
    lake, instance, _ = tiny_chain
    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.runner import DATA_STAGE

    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        ((plays_before,),) = con.sql('SELECT count(*) FROM "raw"."plays"').fetchall()
    config = run_config("tiny_data.yaml")
    config["ops"]["synthetic_world"]["config"]["users"] = 0
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=DATA_STAGE,
        run_config=config,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "users" in str(failure.step_failure_data.error.message)
    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        ((plays_after,),) = con.sql('SELECT count(*) FROM "raw"."plays"').fetchall()
    assert plays_after == plays_before


def test_failing_blocking_data_test_rolls_back_the_table(tiny_chain):
    """A duplicate play_id planted in raw.plays fails stg_plays' unique test; the old table stays."""
    lake, instance, _ = tiny_chain
    from spotify_engine_assets.definitions import defs

    warehouse = str(lake / "warehouse.duckdb")
    with duckdb.connect(warehouse) as con:
        ((staged_before,),) = con.sql('SELECT count(*) FROM "staging"."stg_plays"').fetchall()
        con.execute('INSERT INTO "raw"."plays" SELECT * FROM "raw"."plays" LIMIT 1')
    try:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=dg.AssetSelection.assets(["staging", "stg_plays"]),
            run_config=run_config(),
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
        )
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "unique__play_id" in failure.step_failure_data.error.message
        with duckdb.connect(warehouse, read_only=True) as con:
            ((staged_after,),) = con.sql('SELECT count(*) FROM "staging"."stg_plays"').fetchall()
        assert staged_after == staged_before
    finally:
        with duckdb.connect(warehouse) as con:  # undo the planted duplicate for other tests
            con.execute('CREATE OR REPLACE TABLE "raw"."plays" AS SELECT DISTINCT * FROM "raw"."plays"')


def test_graph_from_world_matches_the_materialized_graph(tiny_chain):
    """The Dagster-free shortcut the benchmarks use builds the same graph as the SQL chain."""
    import torch

    from spotify_engine_assets.core.data.graph import from_payload
    from spotify_engine_assets.datasets.listening.generator import GeneratorSettings, generate_world
    from spotify_engine_assets.datasets.listening.graph import LISTENS, graph_from_world

    lake, _, _ = tiny_chain
    materialized = from_payload(
        load_torch(ArtifactStore(lake / "artifacts").current(["listening", "graph"], None) / "data.pt")
    )
    settings = run_config("tiny_data.yaml")["ops"]["synthetic_world"]["config"]
    shortcut = graph_from_world(generate_world(GeneratorSettings(**settings)))
    assert shortcut.node_types == materialized.node_types and shortcut.edge_types == materialized.edge_types

    def edge_set(edge_index):  # catalogue edges may come in another row order from SQL
        keys = edge_index[0] * (int(edge_index[1].max()) + 1) + edge_index[1]
        return torch.sort(keys).values

    for edge_type in materialized.edge_types:
        assert torch.equal(edge_set(shortcut[edge_type].edge_index), edge_set(materialized[edge_type].edge_index)), (
            edge_type
        )
    # listens edges are sorted by (user, song) in both, so their attributes line up row by row
    assert torch.equal(shortcut[LISTENS].edge_index, materialized[LISTENS].edge_index)
    assert torch.allclose(shortcut[LISTENS].edge_attr, materialized[LISTENS].edge_attr, atol=1e-5)


DECIMAL = re.compile(r"\d+\.\d+")
MAX_DIGITS = 8  # significant digits: 4 for numbers shown, 8 for the floats of a config in provenance


def too_precise(text: str) -> list[str]:
    """The decimal numbers in ``text`` printed with more than MAX_DIGITS significant digits
    (a float's repr has 16-17)."""
    return [
        number for number in DECIMAL.findall(text) if len(number.replace(".", "").lstrip("0").rstrip("0")) > MAX_DIGITS
    ]


def test_metadata_reads_well_in_the_ui(tiny_chain):
    """Every materialization and check result of the chain: floats rounded (numbers, JSON and
    markdown tables alike); a trained model leads with its numbers, shows its config in one line
    (the whole config only inside the collapsed provenance), a report leads with its primary
    metric and gives its cost as numbers."""
    _, instance, _ = tiny_chain
    long_floats = []
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None or event.event_type not in (
                dg.DagsterEventType.ASSET_MATERIALIZATION,
                dg.DagsterEventType.ASSET_CHECK_EVALUATION,
            ):
                continue
            data = event.event_specific_data
            metadata = data.materialization.metadata if hasattr(data, "materialization") else data.metadata
            for label, value in metadata.items():
                text = (
                    value.value
                    if isinstance(value, dg.MarkdownMetadataValue) and "base64," not in value.value
                    else None
                )
                if isinstance(value, dg.JsonMetadataValue):
                    text = json.dumps(value.value)
                if isinstance(value, dg.FloatMetadataValue) and value.value is not None:
                    text = repr(value.value)
                if text and too_precise(text):
                    long_floats.append((event.asset_key.to_user_string(), label, too_precise(text)[:3]))
    assert not long_floats
    assert too_precise("0.32197636409353786 and 0.0001572, 1.05") == ["0.32197636409353786"]

    trained = instance.fetch_materializations(dg.AssetKey(["listening", "trained_model"]), limit=20).records
    lightgcn = next(
        r.asset_materialization.metadata for r in trained if r.asset_materialization.partition == "lightgcn"
    )
    assert list(lightgcn)[:6] == [
        "best_valid_recall@10",
        "train_seconds",
        "seconds_per_epoch",
        "epochs_run",
        "best_epoch",
        "num_parameters",
    ]
    assert isinstance(lightgcn["best_valid_recall@10"], dg.FloatMetadataValue)
    assert isinstance(lightgcn["config"], dg.TextMetadataValue) and "embedding_dim" in lightgcn["config"].value
    assert len(json.dumps(lightgcn["provenance"].value)) > INLINE_LIMIT  # collapsed behind "[Show JSON]"
    assert lightgcn["provenance"].value["config"]["name"] == "lightgcn"

    report = instance.fetch_materializations(dg.AssetKey(["listening", "metric_report"]), limit=1).records[0]
    metadata = report.asset_materialization.metadata
    assert next(iter(metadata)) == DATASET.protocol.primary
    assert metadata["gate"].value.startswith(("pass: ", "FAIL: "))
    assert "efficiency" not in metadata
    for key in ("train_seconds", "latency_p50_ms", "throughput_users_per_s", "memory_estimate_mb"):
        assert isinstance(metadata[f"efficiency/{key}"], dg.FloatMetadataValue), key
