"""What the UI offers per model config: gates checked per partition (the config), one job per chain
that trains and evaluates a config, declarative automation that evaluates a newly trained config, the
landing sensor's retraining settings, and descriptions that say what they mean."""

import os

import dagster as dg
import pytest
from test_sensor import _finished_data_run, kaggle_csv, playlists_rows, tick

from spotify_engine_assets.definitions import OWNERS, defs
from spotify_engine_assets.defs.playlists import sensors
from spotify_engine_assets.defs.playlists.sensors import RETRAIN_ENV, RetrainSettings
from spotify_engine_assets.runner import run_config

CHAINS = ("listening", "playlists", "lastfm")
REPORT = dg.AssetKey(["listening", "metric_report"])
TRAINED = dg.AssetKey(["listening", "trained_model"])


@pytest.fixture(scope="module")
def tiny_chain(tiny_lake_runner):
    """``run`` of ``tiny_lake_runner``: a copy of the tiny listening data stage (graph, split, registry)."""
    _, run = tiny_lake_runner
    return run


def test_metric_report_checks_are_partitioned_by_config():
    """Every result of quality_gate / fairness_gap belongs to one config, so the UI lists it by partition."""
    graph = defs.resolve_asset_graph()
    for chain in CHAINS:
        for check in ("quality_gate", "fairness_gap"):
            spec = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey([chain, "metric_report"]), check))
            assert spec.partitions_def == graph.get(dg.AssetKey([chain, "metric_report"])).partitions_def, (
                chain,
                check,
            )
            assert spec.partitions_def.name == f"{chain}_configs"
        # an unpartitioned asset keeps unpartitioned checks
        champion = graph.get_check_spec(dg.AssetCheckKey(dg.AssetKey([chain, "champion"]), "champion_gate"))
        assert champion.partitions_def is None


def test_each_chain_has_a_train_and_evaluate_job_and_an_automation_sensor():
    repository = defs.get_repository_def()
    for chain in CHAINS:
        job = repository.get_job(f"{chain}_train_and_evaluate")
        assert job.partitions_def.name == f"{chain}_configs"
        assert set(job.asset_layer.executable_asset_keys) == {
            dg.AssetKey([chain, name]) for name in ("trained_model", "metric_report", "recommendations")
        }
        sensor = repository.get_sensor_def(f"{chain}_evaluate_trained_models")
        assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.asset_selection.resolve(defs.resolve_asset_graph()) == {dg.AssetKey([chain, "metric_report"])}
    # every automated asset is covered by a sensor that runs by default: no stopped default sensor is added
    assert "default_automation_condition_sensor" not in {sensor.name for sensor in repository.sensor_defs}


def test_every_asset_has_an_owner_and_descriptions_name_the_data_lake():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert set(OWNERS) <= set(node.owners), key
        assert "<data lake>" not in (node.description or "") and "<chain>" not in (node.description or ""), key
    trained = graph.get(dg.AssetKey(["lastfm", "trained_model"])).description
    assert "lastfm_train_and_evaluate" in trained and "lastfm_evaluate_trained_models" in trained
    description = sensors.landing_sensor.description
    for words in (
        "SPOTIFY_ENGINE_DATA_LAKE",
        "`<file>.done`",
        "user_id, song_id, played_at",
        "playlistname",
        RETRAIN_ENV["configs"],
        RETRAIN_ENV["max_epochs"],
        RETRAIN_ENV["user_sample"],
    ):
        assert words in description, words
    assert "<data lake>" not in description


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # raised by Dagster's own automation tester
def test_a_newly_trained_config_is_evaluated_by_declarative_automation(tiny_chain):
    """Training one config alone (as from its asset page) makes the automation request exactly that
    config's metric_report, once; a run that trains and evaluates together leaves nothing to request."""
    run = tiny_chain
    first = dg.evaluate_automation_conditions(defs=defs, instance=run.instance)
    assert first.total_requested == 0  # nothing trained yet
    assert run(dg.AssetSelection.assets(TRAINED), partition="most_popular").success
    second = dg.evaluate_automation_conditions(defs=defs, instance=run.instance, cursor=first.cursor)
    assert second.total_requested == 1
    assert second.get_requested_partitions(REPORT) == {"most_popular"}
    # what listening_train_and_evaluate runs for one config: trained and evaluated in one run
    assert run(dg.AssetSelection.assets(TRAINED, REPORT), partition="itemknn").success
    third = dg.evaluate_automation_conditions(defs=defs, instance=run.instance, cursor=second.cursor)
    assert third.total_requested == 0  # itemknn is evaluated already; most_popular was requested once


def test_a_failing_gate_is_recorded_for_its_config(tiny_chain):
    """An untrained GAT (one epoch) fails the blocking quality_gate: the run fails, and the check's
    history in the instance (what the UI's check page lists) holds the result under its partition."""
    run = tiny_chain
    one_epoch = {**run_config(), "ops": {"listening__trained_model": {"config": {"max_epochs": 1}}}}
    result = run(dg.AssetSelection.assets(TRAINED, REPORT), one_epoch, partition="gat_basic")
    assert not result.success
    gate = next(e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate")
    assert not gate.passed and gate.partition == "gat_basic" and gate.description.startswith("gat_basic: ndcg@10")
    assert gate.metadata["config"].value == "gat_basic"
    history = run.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(REPORT, "quality_gate"), limit=10
    )
    assert [(record.partition, record.status.value) for record in history][:1] == [("gat_basic", "FAILED")]


def test_retrain_settings_come_from_the_environment_and_fail_naming_the_variable():
    assert RetrainSettings.from_env({}) == RetrainSettings()
    settings = RetrainSettings.from_env(
        {RETRAIN_ENV["configs"]: " itemknn, ease ", RETRAIN_ENV["max_epochs"]: "3", RETRAIN_ENV["user_sample"]: "200"}
    )
    assert settings == RetrainSettings(configs=("itemknn", "ease"), max_epochs=3, user_sample=200)
    assert settings.run_config() == {
        "ops": {"playlists__trained_model": {"config": {"max_epochs": 3, "user_sample": 200}}}
    }
    assert "retrains itemknn, ease; max_epochs 3; user_sample 200" in settings.describe()
    assert RetrainSettings.from_env({RETRAIN_ENV["configs"]: "all"}).configs == ()
    for variable, value in ((RETRAIN_ENV["max_epochs"], "ten"), (RETRAIN_ENV["user_sample"], "0")):
        with pytest.raises(ValueError, match=variable):
            RetrainSettings.from_env({variable: value})
    with pytest.raises(ValueError, match=f"{RETRAIN_ENV['configs']}: unknown playlists configs nope"):
        RetrainSettings(configs=("nope",)).select(["ease", "itemknn"])


def test_landing_sensor_retrains_what_the_settings_say(tmp_path, monkeypatch):
    """Once a landed batch's data run succeeded: one retrain run per configured config, with the
    configured epoch cap and sample as the trained model's run config."""
    (tmp_path / "landing").mkdir()
    instance = dg.DagsterInstance.ephemeral()
    monkeypatch.setattr(
        sensors, "RETRAIN", RetrainSettings(configs=("itemknn", "most_popular"), max_epochs=2, user_sample=300)
    )
    (tmp_path / "landing" / "new.csv").write_text(kaggle_csv(playlists_rows(5)))
    (tmp_path / "landing" / "new.csv.done").write_text("")
    first = tick(tmp_path, instance)
    (request,) = first.run_requests
    os.replace(tmp_path / "landing" / "new.csv", tmp_path / "archived.csv")  # what landed_batch's archiving does
    _finished_data_run(instance, request.partition_key, succeed=True)
    second = tick(tmp_path, instance, first.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == ["itemknn", "most_popular"]
    for retrain in second.run_requests:
        assert retrain.run_config == {
            "ops": {"playlists__trained_model": {"config": {"max_epochs": 2, "user_sample": 300}}}
        }
