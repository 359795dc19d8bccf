"""The Last.fm chain in-process on the real data: raw files -> DuckDB -> SQL marts -> graph ->
fixed split (blocking leakage check) -> most-popular and a 1-epoch LightGCN -> reports ->
comparison. The most-popular report must reproduce the data README's reference figures."""

import dagster as dg
import pytest

from spotify_engine_assets.datasets.lastfm import data as lastfm
from spotify_engine_assets.runner import run_config

pytestmark = pytest.mark.skipif(
    not lastfm.available(),
    reason=f"Last.fm 2K data absent ({lastfm.data_dir()}, {lastfm.split_dir()}): ../shared/data is not on this machine",
)

DATA = dg.AssetSelection.groups("lastfm_ingest", "lastfm_sql") | dg.AssetSelection.assets(
    ["lastfm", "graph"], ["lastfm", "split"]
)
MODELS = dg.AssetSelection.assets(["lastfm", "trained_model"], ["lastfm", "metric_report"])


@pytest.fixture(scope="module")
def chain(lake_runner):
    lake, run = lake_runner
    results = {"data": run(DATA)}
    results["most_popular"] = run(MODELS, partition="most_popular")
    capped = {**run_config(), "ops": {"lastfm__trained_model": {"config": {"max_epochs": 1}}}}
    results["lightgcn"] = run(MODELS, capped, partition="lightgcn")
    results["comparison"] = run(dg.AssetSelection.assets(["lastfm", "model_comparison"]))
    yield lake, results


def _metadata(result, key):
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_data_chain_materializes_with_passing_checks(chain):
    _, results = chain
    result = results["data"]
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.check_name == "leakage_free")
    split = _metadata(result, "lastfm/split")
    # train.tsv is the fit part ("fixed/train") plus the validation cut ("fixed/valid"); test.tsv is "fixed/test"
    assert (split["fixed/train"] + split["fixed/valid"], split["fixed/test"]) == (74239, 18562)
    assert split["fixed/train"] + split["fixed/valid"] == 74239
    graph = _metadata(result, "lastfm/graph")
    # the graph is the whole graph now (every user_artists.dat pair); views hold the training part only
    assert graph["nodes/artist"] == 17632 and graph["edges/user__listens__artist"] == 92834


def test_most_popular_report_reproduces_reference(chain):
    _, results = chain
    assert results["most_popular"].success
    report = _metadata(results["most_popular"], "lastfm/metric_report")
    assert (report["recall@20"], report["ndcg@20"]) == (0.1067, 0.0992)
    assert (
        report["ndcg@10"] == 0.0798 and abs(report["recall@10"] - 0.0712) < 1.5e-4
    )  # rounded to 4 decimals; see test_lastfm.py


def test_trainable_partition_and_comparison(chain):
    lake, results = chain
    assert results["lightgcn"].success
    assert results["comparison"].success
    table = (lake / "reports" / "lastfm" / "model_comparison.md").read_text()
    assert "most_popular" in table and "lightgcn" in table
