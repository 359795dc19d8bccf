"""Issue 19: data that failed a gate never becomes current. A blocking gate is checked inside the
ingestion's transaction (stage, check, then swap), so a failed base file leaves the previous
``kaggle_raw`` tables current and a failed landed batch commits no row and stays in ``landing/``;
a landed file still open for writing, changed while read, or with a regular file named
``archive`` in its way fails before anything is committed."""

import dagster as dg
import duckdb
import pytest

from spotify_engine_assets.datasets.playlists import kaggle as kaggle_lib
from spotify_engine_assets.datasets.playlists.kaggle import KAGGLE_HEADER
from spotify_engine_assets.runner import run_config

BASE = dg.AssetSelection.groups("playlists_ingest", "playlists_sql") - dg.AssetSelection.assets(
    ["kaggle_raw", "landed_entries"], ["kaggle_raw", "landed_rejects"]
)
LANDED = dg.AssetSelection.assets(["kaggle_raw", "landed_entries"], ["kaggle_raw", "landed_rejects"])
SQL = dg.AssetSelection.groups("playlists_sql")


@pytest.fixture(scope="module")
def data(lake_runner):
    lake, run = lake_runner
    result = run(dg.AssetSelection.groups("listening_ingest") | BASE, run_config("tiny_data.yaml"))
    assert result.success
    (lake / "landing").mkdir(exist_ok=True)
    yield lake, run


def _failure(result) -> str:
    return " | ".join(
        f"{e.message} {e.step_failure_data.error.message if e.step_failure_data.error else ''}"
        f"{e.step_failure_data.user_failure_data.description if e.step_failure_data.user_failure_data else ''}"
        for e in result.all_events
        if e.is_step_failure
    )


def _count(lake, table, where="true") -> int:
    with duckdb.connect(str(lake / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(f"SELECT count(*) FROM {table} WHERE {where}").fetchall()[0][0]


def _rows(good: int, bad: int = 0) -> str:
    return (
        KAGGLE_HEADER
        + "\n"
        + "".join(f"lu{i},Artist {i % 3},Song {i},mix {i % 4}\n" for i in range(good))
        + "u,bad\n" * bad
    )


def _land(lake, path, batch, **config):
    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.defs.playlists.ingestion import file_sha256

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("landing_batches", [batch])
    settings = {"path": str(path), "sha256": file_sha256(path), **config}
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=LANDED,
        instance=instance,
        resources=defs.resources,
        run_config={**run_config(), "ops": {"landed_batch": {"config": settings}}},
        partition_key=batch,
        raise_on_error=False,
    )


def _gate(result, name="reject_rate_within_threshold"):
    return next(
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == name
    )


def test_a_base_file_failing_its_gate_leaves_the_previous_tables_current(data):
    """Seen: 50% bad lines failed reject_rate_within_threshold, yet kaggle_raw.entries was
    already replaced (5,196 rows -> 100) and a later playlist SQL run built on it."""
    lake, run = data
    entries, rejects, playlist_entries = (
        _count(lake, t) for t in ("kaggle_raw.entries", "kaggle_raw.rejects", "playlists.playlist_entries")
    )
    real = lake / "kaggle" / "spotify_dataset.csv"
    real.write_text(_rows(good=50, bad=50))
    try:
        result = run(BASE)
        assert not result.success
        gate = _gate(result)
        assert not gate.passed and gate.metadata["rejected_rows"].value == 50
        assert "wrong field count" in gate.metadata["first_rejects"].value
        message = _failure(result)
        assert str(real) in message and "reject_rate_within_threshold" in message
        assert "the previous kaggle_raw tables stay current" in message
        assert _count(lake, "kaggle_raw.entries") == entries and _count(lake, "kaggle_raw.rejects") == rejects
        assert _count(lake, "kaggle_raw.entries", "user_id LIKE 'lu%'") == 0
    finally:
        real.unlink()
    assert run(SQL).success  # a later SQL run builds on the previous entries
    assert _count(lake, "playlists.playlist_entries") == playlist_entries


def test_a_landed_batch_failing_its_gate_commits_nothing_and_stays_in_landing(data):
    lake, run = data
    path = lake / "landing" / "half_bad.csv"
    path.write_text(_rows(good=40, bad=40))
    result = _land(lake, path, "half_bad-1")
    assert not result.success and not _gate(result).passed
    message = _failure(result)
    assert str(path) in message and "no row of batch half_bad-1 was committed" in message
    assert _count(lake, "kaggle_raw.landed_entries", "batch = 'half_bad-1'") == 0
    assert _count(lake, "kaggle_raw.landed_rejects", "batch = 'half_bad-1'") == 0
    assert path.exists() and not (lake / "landing" / "archive" / "half_bad-1").exists()

    good = lake / "landing" / "good.csv"
    good.write_text(_rows(good=30).replace("lu", "gu"))
    assert _land(lake, good, "good-1").success
    assert run(SQL).success  # the next successful batch rebuilds playlist_entries without the failed one
    assert _count(lake, "playlists.playlist_entries", "batch = 'half_bad-1'") == 0
    assert _count(lake, "playlists.playlist_entries", "batch = 'good-1'") == 30
    assert (lake / "landing" / "archive" / "good-1" / "good.csv").exists()


def test_a_regular_file_named_archive_fails_before_anything_is_committed(data):
    lake, _ = data
    landing = lake / "landing"
    blocker = landing / "archive"
    moved = None
    if blocker.is_dir():  # an earlier test archived a batch: set its folder aside
        moved = blocker.rename(landing.parent / "archive_aside")
    blocker.write_text("not a folder")
    path = landing / "blocked.csv"
    path.write_text(_rows(good=5))
    try:
        result = _land(lake, path, "blocked-1")
        assert not result.success
        assert f"{blocker} is not a folder" in _failure(result)
        assert _count(lake, "kaggle_raw.landed_entries", "batch = 'blocked-1'") == 0 and path.exists()
    finally:
        blocker.unlink()
        if moved:
            moved.rename(blocker)


def test_a_landed_file_still_open_for_writing_commits_nothing(data):
    lake, _ = data
    path = lake / "landing" / "open.csv"
    with open(path, "w") as writer:
        writer.write(_rows(good=6))
        writer.flush()
        result = _land(lake, path, "open-1")
    assert not result.success and "still open for writing by process(es)" in _failure(result)
    assert _count(lake, "kaggle_raw.landed_entries", "batch = 'open-1'") == 0 and path.exists()


def test_a_landed_file_changed_while_ingested_commits_nothing(data, monkeypatch):
    lake, _ = data
    path = lake / "landing" / "growing.csv"
    path.write_text(_rows(good=6))
    ingest = kaggle_lib.ingest_playlist_csv

    def ingest_then_append(*args, **kwargs):
        stats = ingest(*args, **kwargs)
        with open(path, "a") as writer:  # the writer carries on after the file was read
            writer.write("lu9,Artist 0,Song 9,mix 1\n")
        return stats

    monkeypatch.setattr(kaggle_lib, "ingest_playlist_csv", ingest_then_append)
    result = _land(lake, path, "growing-1")
    assert not result.success and "changed while it was being ingested" in _failure(result)
    assert _count(lake, "kaggle_raw.landed_entries", "batch = 'growing-1'") == 0 and path.exists()
