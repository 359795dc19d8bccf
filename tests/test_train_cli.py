"""`spotify-engine train` on a tiny data lake: a clear error before the graph is materialized,
then training (simple and advanced trainer, a variant with task heads) that prints progress and
metrics and writes nothing into the asset store."""

from __future__ import annotations

import pytest

from spotify_engine_assets import cli
from spotify_engine_assets.core.presentation import metric_value
from spotify_engine_assets.runner import DATA_STAGE, run_config


def _files(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_train_command(lake_runner, capsys):
    lake, run = lake_runner
    assert cli.main(["train", "gat_enhanced", "--max-epochs", "1"]) == 2
    error = capsys.readouterr().err
    assert "listening/graph has not been materialized yet" in error and "materialize the data stage" in error

    assert run(DATA_STAGE, run_config("tiny_data.yaml")).success
    artifacts = lake / "artifacts"
    before = _files(artifacts)

    assert cli.main(["train", "gat_enhanced", "--trainer", "simple", "--max-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "simple trainer" in out and "nothing is written to the asset store" in out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and not any("valid recall" in line for line in epochs)
    assert "| valid |" in out and "| test |" in out and "| part | ndcg@10 | coverage@10 |" in out

    assert cli.main(["train", "gat_enhanced_multitask", "--variants", "--max-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "advanced trainer" in out and "auc complete" in out and "auc repeat" in out
    assert sum(line.startswith("epoch ") and "valid recall@10" in line for line in out.splitlines()) == 2
    test_row = next(line for line in out.splitlines() if line.startswith("| test |"))
    assert len(test_row.strip("|").split("|")) == 6  # part, ndcg, coverage, recall, two AUCs

    assert _files(artifacts) == before  # no new or rewritten artifact
    assert not (lake / "checkpoints").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "no_such_config"], "unknown listening model config 'no_such_config'"),
        (
            ["train", "gat_enhanced_multitask"],
            "unknown listening model config 'gat_enhanced_multitask'",
        ),  # needs --variants
        (["train", "most_popular"], "has nothing to train"),
    ],
)
def test_train_command_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_train_command_arguments(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "gat_enhanced", "--max-epochs", "0"])
    assert stop.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--help"])
    assert stop.value.code == 0 and "nothing is written to the asset store" in " ".join(capsys.readouterr().out.split())


def test_metric_report_scores_task_heads_on_test_edges(lake_runner):
    """A task-head variant as a partition (promoted into the lake): trained_model keeps the heads,
    metric_report restores them and reports each head's test AUC (report, metadata, comparison)."""
    import dagster as dg

    from spotify_engine_assets.core.registry import PromotionSource
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.core.storage.paths import configs_dir
    from spotify_engine_assets.datasets.listening import DATASET
    from spotify_engine_assets.defs.chain import comparison_frame

    lake, run = lake_runner
    if not (lake / "artifacts" / "listening" / "graph").exists():
        assert run(DATA_STAGE, run_config("tiny_data.yaml")).success
    variant = DATASET.registry.load(configs_dir() / "listening" / "variants.yaml")["gat_enhanced_multitask"]
    source = PromotionSource(
        family="gat_enhanced",
        study_name="test",
        trial=0,
        objective="valid_recall@10",
        value=0.0,
        storage="none",
        promoted_at="2026-01-01T00:00:00+00:00",
    )
    DATASET.registry.write_promoted(variant, source, lake)
    result = run(
        dg.AssetSelection.assets(["listening", "trained_model"], ["listening", "metric_report"]),
        run_config("tiny_train.yaml"),
        variant.name,
    )
    assert result.success
    store = ArtifactStore(lake / "artifacts")
    artifact = load_torch(store.current(["listening", "trained_model"], variant.name) / "data.pt")
    assert any(key.startswith("task_heads.") for key in artifact["state"])
    report = load_torch(store.current(["listening", "metric_report"], variant.name) / "data.pt")
    assert set(report["tasks"]) == {"complete", "repeat"}
    for values in report["tasks"].values():
        assert values["edges"] > 0 and 0.0 <= values["auc"] <= 1.0
    metadata = result.asset_materializations_for_node("listening__metric_report")[0].metadata
    assert metadata["test_auc/repeat"].value == metric_value(report["tasks"]["repeat"]["auc"])  # as the UI shows it
    row = comparison_frame(DATASET, {variant.name: report}).row(0, named=True)
    assert row["auc_complete"] == pytest.approx(report["tasks"]["complete"]["auc"])
