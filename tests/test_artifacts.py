"""Tests of the versioned, atomically written artifact store and the safe torch loader."""

from __future__ import annotations

import calendar
import os
import pickle
import stat
import time as real_time
from pathlib import Path

import polars as pl
import pytest
import torch

from spotify_engine_assets.core.storage import artifacts
from spotify_engine_assets.core.storage.artifacts import (
    POINTER,
    ArtifactNotFoundError,
    ArtifactStore,
    atomic_write_bytes,
    load_torch,
    save_torch,
    write_frame,
)

torch.set_num_threads(1)

KEY = ("models", "trained")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _write_text(text: str):
    def fill(folder: Path) -> None:
        (folder / "payload.txt").write_text(text)

    return fill


class Boom(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- store


def test_write_publishes_version_and_current(tmp_path):
    store = ArtifactStore(tmp_path)
    version = store.write(KEY, "gat_basic", _write_text("v1"))
    slot = tmp_path / "models" / "trained" / "gat_basic"
    assert version.parent == slot
    assert version.is_dir()
    assert (version / "payload.txt").read_text() == "v1"
    assert (slot / POINTER).read_text().strip() == version.name
    assert store.current(KEY, "gat_basic") == version
    assert store.versions(KEY, "gat_basic") == [version]
    assert _hidden(slot) == []


def test_unpartitioned_slot(tmp_path):
    store = ArtifactStore(tmp_path)
    version = store.write(KEY, None, _write_text("x"))
    assert version.parent == tmp_path / "models" / "trained" / "_"
    assert store.current(KEY) == version


def test_tag_is_part_of_the_version_name(tmp_path):
    version = ArtifactStore(tmp_path).write(KEY, None, _write_text("x"), tag="abcdef123456")
    assert version.name.endswith("-abcdef12")


def test_current_before_any_write_names_the_asset(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactNotFoundError, match=r"models/trained \[partition p1\]"):
        store.current(KEY, "p1")
    assert issubclass(ArtifactNotFoundError, FileNotFoundError)
    assert store.versions(KEY, "p1") == []


def test_failing_fill_keeps_previous_version_current(tmp_path):
    store = ArtifactStore(tmp_path)
    first = store.write(KEY, "p", _write_text("good"))

    def bad_fill(folder: Path) -> None:
        (folder / "payload.txt").write_text("half written")
        raise Boom("killed half-way")

    with pytest.raises(Boom):
        store.write(KEY, "p", bad_fill)
    slot = store.slot(KEY, "p")
    assert store.current(KEY, "p") == first
    assert (store.current(KEY, "p") / "payload.txt").read_text() == "good"
    assert store.versions(KEY, "p") == [first]
    assert _hidden(slot) == []  # no staging folder left behind
    assert sorted(p.name for p in slot.iterdir()) == sorted([first.name, POINTER])


def test_failing_first_write_leaves_nothing_current(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        store.write(KEY, "p", lambda folder: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(ArtifactNotFoundError):
        store.current(KEY, "p")
    assert store.versions(KEY, "p") == []
    assert _hidden(store.slot(KEY, "p")) == []


def test_versions_are_oldest_first_and_old_ones_stay_loadable(tmp_path):
    store = ArtifactStore(tmp_path)
    written = [store.write(KEY, "p", _write_text(f"v{i}")) for i in range(4)]
    assert len({v.name for v in written}) == 4
    assert store.versions(KEY, "p") == written
    assert store.current(KEY, "p") == written[-1]
    for i, version in enumerate(written):
        assert (version / "payload.txt").read_text() == f"v{i}"


class _FakeClock:
    """Stands in for the ``time`` module of artifacts.py: a clock that moves on every reading."""

    def __init__(self, start_ns: int, step_ns: int) -> None:
        self.now_ns = start_ns
        self.step_ns = step_ns

    def _tick(self) -> int:
        self.now_ns += self.step_ns
        return self.now_ns

    def time_ns(self) -> int:
        return self._tick()

    def time(self) -> float:
        return self._tick() / 1e9

    def gmtime(self, seconds: float | None = None):
        return real_time.gmtime(self._tick() / 1e9 if seconds is None else seconds)

    strftime = staticmethod(real_time.strftime)


def test_versions_order_across_a_second_boundary(tmp_path, monkeypatch):
    """Two writes 0.3 ms apart, just before a second ticks over, must still list oldest first."""
    start = calendar.timegm((2024, 5, 1, 12, 0, 0, 0, 0, 0)) * 10**9 + 999_400_000
    monkeypatch.setattr(artifacts, "time", _FakeClock(start_ns=start, step_ns=150_000))
    store = ArtifactStore(tmp_path)
    first = store.write(KEY, "p", _write_text("first"))
    second = store.write(KEY, "p", _write_text("second"))
    assert store.current(KEY, "p") == second
    assert store.versions(KEY, "p") == [first, second], [p.name for p in store.versions(KEY, "p")]


def test_store_slot_layout(tmp_path):
    store = ArtifactStore(tmp_path)
    assert store.slot(("a", "b", "c"), "part") == tmp_path / "a" / "b" / "c" / "part"
    assert store.slot(("a",)) == tmp_path / "a" / "_"


# ---------------------------------------------------------------------------------- atomic writes


def test_atomic_write_bytes_writes_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "deep" / "folder" / "file.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_published_files_and_versions_get_the_umask_permissions(tmp_path):
    """Atomic writes must not leave reports and versions owner-only (mkstemp/mkdtemp's 0600/0700):
    a data lake on a shared mount is read by other users' runs and tools."""
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "report.md", b"x")
        version = ArtifactStore(tmp_path / "lake").write(KEY, "p", _write_text("y"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
    assert stat.S_IMODE(version.stat().st_mode) == 0o755


def test_atomic_write_bytes_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_save_and_load_torch_round_trip(tmp_path):
    obj = {"weights": torch.arange(6.0).view(2, 3), "meta": {"epoch": 3, "name": "gat"}, "list": [1, 2.5]}
    path = tmp_path / "model.pt"
    save_torch(obj, path)
    loaded = load_torch(path)
    assert torch.equal(loaded["weights"], obj["weights"])
    assert loaded["meta"] == obj["meta"] and loaded["list"] == obj["list"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_load_torch_corrupted_file_names_the_file(tmp_path):
    path = tmp_path / "broken.pt"
    save_torch({"w": torch.ones(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="broken.pt"):
        load_torch(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a torch file at all")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_torch(garbage)


def test_load_torch_missing_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.pt"):
        load_torch(tmp_path / "missing.pt")


class Arbitrary:
    """A plain Python object: not allowed in a weights-only artifact."""

    def __init__(self) -> None:
        self.value = 42


class _Exploit:
    marker: Path | None = None

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_torch_refuses_arbitrary_python_objects(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"obj": Arbitrary()}, path)
    with pytest.raises(ValueError, match="object.pt"):
        load_torch(path)


def test_load_torch_does_not_execute_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    path = tmp_path / "exploit.pt"
    with path.open("wb") as handle:
        pickle.dump(exploit, handle, protocol=2)
    assert not marker.exists()
    with pytest.raises(ValueError, match="exploit.pt"):
        load_torch(path)
    assert not marker.exists()


def test_write_frame_inside_store(tmp_path):
    store = ArtifactStore(tmp_path)
    frame = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    version = store.write(("tables", "t"), None, lambda folder: write_frame(frame, folder / "data.parquet"))
    assert pl.read_parquet(version / "data.parquet").equals(frame)
