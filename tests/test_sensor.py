"""The landing sensor: unit ticks with build_sensor_context (new file, half-written file,
duplicate, nothing new, unusable files), then end to end: drop a file, tick, execute what the
sensor requested in-process, tick again, and see a new model version and report."""

import json
import os
import random

import dagster as dg
import pytest

from spotify_engine_assets.datasets.playlists import DATASET
from spotify_engine_assets.datasets.playlists.kaggle import KAGGLE_HEADER
from spotify_engine_assets.defs.playlists.sensors import LANDING_TAG, landing_sensor
from spotify_engine_assets.defs.resources import DataLake


def kaggle_csv(rows: list[tuple[str, str, str, str]]) -> str:
    return KAGGLE_HEADER + "\n" + "".join(",".join(row) + "\n" for row in rows)


def playlists_rows(seed: int, users: int = 12, per_user: int = 3, length: int = 8) -> list[tuple[str, str, str, str]]:
    """Playlists drawn from 4 artist clusters of 10 tracks: enough structure to learn from."""
    rng = random.Random(seed)
    rows = []
    for user in range(users):
        for number in range(per_user):
            cluster = rng.randrange(4)
            tracks = rng.sample(range(10), length)
            rows += [
                (f"user{user}", f"Artist {cluster}", f"Song {cluster}-{t}", f"mix {seed}-{number}") for t in tracks
            ]
    return rows


def tick(lake_root, instance, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"lake": DataLake(root=str(lake_root))}
    )
    return landing_sensor(context)


@pytest.fixture()
def landing(tmp_path):
    (tmp_path / "landing").mkdir()
    return tmp_path, tmp_path / "landing", dg.DagsterInstance.ephemeral()


def test_nothing_new_is_a_skip_with_reason(landing):
    root, _, instance = landing
    result = tick(root, instance)
    assert not result.run_requests and "no new complete file" in result.skip_reason.skip_message


def test_half_written_file_waits_until_its_size_is_stable(landing):
    root, folder, instance = landing
    path = folder / "batch.csv"
    path.write_text(kaggle_csv(playlists_rows(1)[:5]))
    first = tick(root, instance)
    assert (
        not first.run_requests
        and "batch.csv" in first.skip_reason.skip_message
        and "waiting" in first.skip_reason.skip_message
    )
    with open(path, "a") as handle:  # still being written
        handle.write("user9,Artist 1,Song 1-1,mix\n")
    second = tick(root, instance, first.cursor)
    assert not second.run_requests and "waiting" in second.skip_reason.skip_message
    third = tick(root, instance, second.cursor)  # unchanged since the last tick: complete
    assert len(third.run_requests) == 1


def test_done_marker_takes_a_file_at_once_and_the_run_key_is_the_content_hash(landing):
    root, folder, instance = landing
    (folder / "new.csv").write_text(kaggle_csv(playlists_rows(2)))
    (folder / "new.csv.done").write_text("")
    result = tick(root, instance)
    (request,) = result.run_requests
    batch = request.partition_key
    assert batch.startswith("new-") and request.tags[LANDING_TAG] == batch
    assert request.run_key.startswith("landing-") and batch[-12:] in request.run_key
    assert request.run_config["ops"]["landed_batch"]["config"]["path"].endswith("new.csv")
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [[batch]]
    assert batch in json.loads(result.cursor)["pending"]


def _finished_data_run(instance, batch: str, succeed: bool) -> None:
    """A run with the data-stage tags of ``batch`` that ends in SUCCESS or FAILURE."""

    @dg.op
    def step():
        if not succeed:
            raise RuntimeError("ingestion failed")

    @dg.job
    def fake_landing_job():
        step()

    fake_landing_job.execute_in_process(
        instance=instance, tags={LANDING_TAG: batch, "spotify_engine/stage": "data"}, raise_on_error=False
    )


def test_taken_file_is_left_alone_until_its_data_run_ends(landing):
    """Seen live: the daemon ticks again before the queued data run archives the file; that
    tick must not take the file for a duplicate of itself (it did: archive/duplicates)."""
    root, folder, instance = landing
    path = folder / "slow.csv"
    path.write_text(kaggle_csv(playlists_rows(6)))
    (folder / "slow.csv.done").write_text("")
    first = tick(root, instance)
    (request,) = first.run_requests
    second = tick(root, instance, first.cursor)  # the run has not even started
    assert not second.run_requests and "waiting for its data run" in second.skip_reason.skip_message
    assert path.exists() and not (folder / "archive").exists()
    _finished_data_run(instance, request.partition_key, succeed=False)
    third = tick(root, instance, second.cursor)
    assert not third.run_requests and "failed" in third.skip_reason.skip_message
    assert path.exists() and not (folder / "archive").exists()  # kept for a re-execution
    assert "file kept for a re-execution" in json.loads(third.cursor)["skipped"][str(path)][2]
    fourth = tick(root, instance, third.cursor)
    assert not fourth.run_requests and path.exists() and "slow.csv" not in fourth.skip_reason.skip_message


def test_models_are_requested_once_the_data_run_succeeded(landing):
    root, folder, instance = landing
    (folder / "ok.csv").write_text(kaggle_csv(playlists_rows(7)))
    (folder / "ok.csv.done").write_text("")
    first = tick(root, instance)
    (request,) = first.run_requests
    os.replace(folder / "ok.csv", root / "ok-archived.csv")  # what landed_batch's archiving does
    _finished_data_run(instance, request.partition_key, succeed=True)
    second = tick(root, instance, first.cursor)
    assert {r.job_name for r in second.run_requests} == {"playlist_retrain_job"}
    assert {r.partition_key for r in second.run_requests} == set(DATASET.registry.base)
    assert json.loads(second.cursor)["taken"] == {} and json.loads(second.cursor)["pending"] == {}


def test_duplicate_content_is_skipped_and_archived_not_deleted(landing):
    root, folder, instance = landing
    content = kaggle_csv(playlists_rows(3))
    (folder / "a.csv").write_text(content)
    (folder / "a.csv.done").write_text("")
    first = tick(root, instance)
    assert len(first.run_requests) == 1
    os.replace(folder / "a.csv", root / "a_ingested.csv")  # what landed_batch's archiving does
    (folder / "a.csv.done").unlink()
    (folder / "b.csv").write_text(content)  # same bytes, another name
    (folder / "b.csv.done").write_text("")
    second = tick(root, instance, first.cursor)
    assert not second.run_requests and "same content" in second.skip_reason.skip_message
    archived = list((folder / "archive" / "duplicates").glob("*-b.csv"))
    assert len(archived) == 1 and archived[0].read_text() == content


def test_unusable_files_are_recorded_skips(landing):
    root, folder, instance = landing
    (folder / "empty.csv").write_bytes(b"")
    (folder / "garbage.csv").write_bytes(bytes(range(256)) * 4)
    (folder / "notes.txt").write_text("hello")
    for name in ("empty.csv", "garbage.csv", "notes.txt"):
        (folder / f"{name}.done").write_text("")
    result = tick(root, instance)
    message = result.skip_reason.skip_message
    assert "empty.csv" in message and "empty file" in message
    assert "garbage.csv" in message and "NUL bytes" in message
    assert "notes.txt" in message and "unsupported file type" in message
    again = tick(root, instance, result.cursor)  # recorded: not reported again, still there
    assert "empty.csv" not in again.skip_reason.skip_message
    assert (folder / "empty.csv").exists() and (folder / "garbage.csv").exists()


# --- end to end -------------------------------------------------------------------------------


def test_landed_file_retrains_models_end_to_end(tmp_path, data_lake):
    from spotify_engine_assets.core.data.graph import from_payload
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.defs import playlists
    from spotify_engine_assets.defs.chain import register_configs
    from spotify_engine_assets.runner import run_config

    (tmp_path / "kaggle").mkdir()
    (tmp_path / "kaggle" / "spotify_dataset.csv").write_text(kaggle_csv(playlists_rows(10)))
    instance = dg.DagsterInstance.ephemeral()
    assets = [*defs.assets, *defs.asset_checks]
    small = {
        "ops": {"playlists__graph": {"config": {"min_playlist_size": 5, "min_track_playlists": 1}}},
        **run_config(),
    }
    base = dg.AssetSelection.groups("playlists_ingest", "playlists_sql", "playlists_graph") - dg.AssetSelection.assets(
        ["kaggle_raw", "landed_entries"], ["kaggle_raw", "landed_rejects"]
    )
    assert dg.materialize(assets, selection=base, run_config=small, instance=instance, resources=defs.resources).success
    store = ArtifactStore(tmp_path / "artifacts")
    register_configs(playlists.CHAIN, instance, tmp_path)  # the playlists_configs partitions (dynamic)
    for name in ("most_popular", "itemknn"):
        assert dg.materialize(
            assets,
            selection=dg.AssetSelection.assets(["playlists", "trained_model"], ["playlists", "metric_report"]),
            partition_key=name,
            run_config=run_config(),
            instance=instance,
            resources=defs.resources,
        ).success
    before = {name: store.versions(["playlists", "trained_model"], name) for name in ("most_popular", "itemknn")}
    playlists_before = from_payload(load_torch(store.current(["playlists", "graph"]) / "data.pt"))["playlist"].num_nodes

    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "drop.csv").write_text(kaggle_csv(playlists_rows(11, users=6)))
    (landing / "drop.csv.done").write_text("")
    first = tick(tmp_path, instance)
    (request,) = first.run_requests
    instance.add_dynamic_partitions("landing_batches", first.dynamic_partitions_requests[0].partition_keys)
    config = {**small, "ops": {**small["ops"], **request.run_config["ops"]}}
    data_run = defs.resolve_job_def(request.job_name).execute_in_process(
        run_config=config,
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
    )
    assert data_run.success and request.job_name == "playlist_landing_job"
    assert not (landing / "drop.csv").exists()
    assert (landing / "archive" / request.partition_key / "drop.csv").exists()
    assert (
        from_payload(load_torch(store.current(["playlists", "graph"]) / "data.pt"))["playlist"].num_nodes
        > playlists_before
    )

    second = tick(tmp_path, instance, first.cursor)
    model_requests = {r.partition_key: r for r in second.run_requests}
    assert {"most_popular", "itemknn", "lightgcn", "playlist_gat"} <= set(model_requests)
    for name in ("most_popular", "itemknn"):
        r = model_requests[name]
        assert r.run_key.endswith(f"model-{name}") and r.tags[LANDING_TAG] == request.partition_key
        assert (
            defs.resolve_job_def(r.job_name)
            .execute_in_process(
                run_config=run_config(),
                instance=instance,
                partition_key=name,
                tags=r.tags,
            )
            .success
        )
        assert len(store.versions(["playlists", "trained_model"], name)) == len(before[name]) + 1
        report = load_torch(store.current(["playlists", "metric_report"], name) / "data.pt")
        assert report["config"] == name and 0 <= report["metrics"]["r_precision"] <= 1
    assert (tmp_path / "reports" / "playlists" / "model_comparison.md").exists()
    third = tick(tmp_path, instance, second.cursor)
    assert not third.run_requests  # the same file never retrains twice


def test_session_files_are_taken_as_sessions(landing):
    import polars as pl

    root, folder, instance = landing
    plays = pl.DataFrame(
        {"user_id": [1, 2], "song_id": [3, 4], "played_at": ["2024-01-01 10:00:00", "2024-01-02 10:00:00"]}
    )
    plays.write_parquet(folder / "plays.parquet")
    plays.write_csv(folder / "plays.csv")
    (folder / "broken.parquet").write_bytes(b"PAR1 not really")
    for name in ("plays.parquet", "plays.csv", "broken.parquet"):
        (folder / f"{name}.done").write_text("")
    result = tick(root, instance)
    kinds = {
        r.tags["spotify_engine/file"]: r.run_config["ops"]["landed_batch"]["config"]["kind"]
        for r in result.run_requests
    }
    assert kinds == {"plays.parquet": "sessions", "plays.csv": "sessions"}
    assert "broken.parquet" in json.loads(result.cursor)["skipped"].__str__()


def test_two_files_with_the_same_name_in_turn(landing):
    root, folder, instance = landing
    path, marker = folder / "daily.csv", folder / "daily.csv.done"
    first_content = kaggle_csv(playlists_rows(4))
    path.write_text(first_content)
    marker.write_text("")
    first = tick(root, instance)
    os.replace(path, root / "archived-1.csv")  # landed_batch archives it
    marker.unlink()
    path.write_text(kaggle_csv(playlists_rows(5)))  # same name, new content
    marker.write_text("")
    second = tick(root, instance, first.cursor)
    assert len(second.run_requests) == 1
    assert second.run_requests[0].partition_key != first.run_requests[0].partition_key
    os.replace(path, root / "archived-2.csv")
    marker.unlink()
    path.write_text(first_content)  # same name, first content again
    marker.write_text("")
    third = tick(root, instance, second.cursor)
    assert not third.run_requests and "same content" in third.skip_reason.skip_message


def test_sensor_interval_is_30s_unless_overridden(monkeypatch):
    from spotify_engine_assets.defs.playlists.sensors import INTERVAL_ENV, sensor_interval

    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert sensor_interval() == 30
    monkeypatch.setenv(INTERVAL_ENV, "2")
    assert sensor_interval() == 2
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        sensor_interval()


def test_symbolic_links_are_refused_and_named(landing):
    """A link in landing/ could point anywhere on the machine: never taken, named in the skip."""
    root, folder, instance = landing
    outside = root / "outside.csv"
    outside.write_text(kaggle_csv(playlists_rows(seed=3)))
    (folder / "linked.csv").symlink_to(outside)
    (folder / "linked.csv.done").touch()
    result = tick(root, instance)
    assert not result.run_requests
    assert "refused linked.csv: a symbolic link" in result.skip_reason.skip_message
    assert outside.exists() and (folder / "linked.csv").is_symlink()  # nothing moved or deleted


# --- issue 19: completion, empty batches, failed content, a blocked archive -------------------


def test_a_file_still_open_for_writing_is_not_taken_after_a_pause(landing):
    """A writer that pauses longer than a tick used to get its file taken half-way."""
    root, folder, instance = landing
    path = folder / "slow_writer.csv"
    rows = playlists_rows(8)
    with open(path, "w") as writer:
        writer.write(kaggle_csv(rows[:60]))
        writer.flush()
        cursor = None
        for _ in range(3):  # the size holds for several ticks, the writer keeps it open
            result = tick(root, instance, cursor)
            cursor = result.cursor
            assert not result.run_requests
        assert f"still open for writing by process(es) [{os.getpid()}]" in result.skip_reason.skip_message
        writer.write("".join(",".join(row) + "\n" for row in rows[60:]))
    result = tick(root, instance, tick(root, instance, cursor).cursor)  # closed and stable: taken, whole
    (request,) = result.run_requests
    from spotify_engine_assets.defs.playlists.ingestion import file_sha256

    assert request.run_config["ops"]["landed_batch"]["config"]["sha256"] == file_sha256(path)


def test_marker_rule_waits_for_the_marker_even_when_closed(landing, monkeypatch):
    root, folder, instance = landing
    monkeypatch.setenv("SPOTIFY_ENGINE_LANDING_COMPLETE", "marker")
    (folder / "m.csv").write_text(kaggle_csv(playlists_rows(9)))
    first = tick(root, instance)
    second = tick(root, instance, first.cursor)
    assert not second.run_requests and "m.csv.done" in second.skip_reason.skip_message
    (folder / "m.csv.done").touch()
    assert len(tick(root, instance, second.cursor).run_requests) == 1
    monkeypatch.setenv("SPOTIFY_ENGINE_LANDING_COMPLETE", "sometimes")
    with pytest.raises(ValueError, match="SPOTIFY_ENGINE_LANDING_COMPLETE='sometimes'"):
        tick(root, instance)


def _materialized_batch(instance, batch: str, rows: int) -> None:
    """A succeeded data run of ``batch`` that materialized landed_entries with ``rows`` rows."""

    @dg.op
    def step():
        yield dg.AssetMaterialization(
            asset_key=["kaggle_raw", "landed_entries"],
            partition=batch,
            metadata={
                "dagster/row_count": rows,
                "skipped": "header only: no data rows (recorded skip)" if not rows else "no",
            },
        )
        yield dg.Output(None)

    @dg.job
    def fake_landing_job():
        step()

    instance.add_dynamic_partitions("landing_batches", [batch])
    fake_landing_job.execute_in_process(instance=instance, tags={LANDING_TAG: batch, "spotify_engine/stage": "data"})


def test_a_header_only_batch_retrains_nothing(landing):
    root, folder, instance = landing
    (folder / "empty_rows.csv").write_text(KAGGLE_HEADER + "\n")
    (folder / "empty_rows.csv.done").touch()
    first = tick(root, instance)
    (request,) = first.run_requests
    _materialized_batch(instance, request.partition_key, rows=0)
    second = tick(root, instance, first.cursor)
    assert not second.run_requests
    assert (
        "added no rows (header only" in second.skip_reason.skip_message
        and "not retrained" in second.skip_reason.skip_message
    )
    assert json.loads(second.cursor)["pending"] == {}


def test_same_content_after_a_failed_run_is_taken_again(landing):
    root, folder, instance = landing
    content = kaggle_csv(playlists_rows(10))
    (folder / "first.csv").write_text(content)
    (folder / "first.csv.done").touch()
    first = tick(root, instance)
    (request,) = first.run_requests
    _finished_data_run(instance, request.partition_key, succeed=False)
    second = tick(root, instance, first.cursor)
    assert not second.run_requests and "failed" in second.skip_reason.skip_message
    (folder / "again.csv").write_text(content)  # the same bytes, landed anew
    (folder / "again.csv.done").touch()
    third = tick(root, instance, second.cursor)
    assert "same content" not in (third.skip_reason.skip_message if third.skip_reason else "")
    (retry,) = [
        r for r in third.run_requests if r.run_config["ops"]["landed_batch"]["config"]["path"].endswith("again.csv")
    ]
    assert retry.run_key != request.run_key and retry.run_key.startswith(request.run_key)
    assert not (folder / "archive" / "duplicates").exists()


def test_a_regular_file_named_archive_stops_taking_files(landing):
    root, folder, instance = landing
    (folder / "archive").write_text("not a folder")
    (folder / "ready.csv").write_text(kaggle_csv(playlists_rows(11)))
    (folder / "ready.csv.done").touch()
    result = tick(root, instance)
    assert not result.run_requests
    assert f"no file is taken: {folder / 'archive'} is not a folder" in result.skip_reason.skip_message
    (folder / "archive").unlink()
    assert len(tick(root, instance, result.cursor).run_requests) == 1


def test_a_file_that_grew_after_it_was_taken_retrains_nothing_and_is_named(landing):
    """The rest of a file written after it was taken lands in the archive, never ingested: the
    sensor compares the archived file with what it took and says so instead of retraining."""
    root, folder, instance = landing
    path = folder / "grown.csv"
    path.write_text(kaggle_csv(playlists_rows(12)))
    (folder / "grown.csv.done").touch()
    first = tick(root, instance)
    (request,) = first.run_requests
    batch = request.partition_key
    archived = folder / "archive" / batch / "grown.csv"
    archived.parent.mkdir(parents=True)
    os.replace(path, archived)  # what landed_batch's archiving does; then the writer carries on
    with open(archived, "a") as writer:
        writer.write("user99,Artist 1,Song 1-1,mix late\n")
    _materialized_batch(instance, batch, rows=96)
    second = tick(root, instance, first.cursor)
    assert not second.run_requests
    message = second.skip_reason.skip_message
    assert f"grown.csv changed after it was taken as batch {batch}" in message and "models not retrained" in message
