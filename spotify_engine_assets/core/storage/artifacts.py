"""Versioned, atomically written artifacts.

Layout under a root folder::

    <root>/<asset key parts...>/<partition or "_">/<version>/<files>
    <root>/<asset key parts...>/<partition or "_">/CURRENT      # name of the live version

A version is written completely into a hidden temporary folder, then renamed into place,
and only then is ``CURRENT`` swapped (``os.replace``, atomic on POSIX). A run that fails or
is killed half-way leaves the previous version untouched and still current. Old versions
are kept (they are small) so any recorded version stays loadable.
"""

from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch

UNPARTITIONED = "_"
POINTER = "CURRENT"
# Tests only (never set in production): "<point>=<marker file>" makes :func:`pause_point` of that
# point create the marker and sleep, so a test can SIGKILL the process exactly there (see
# tests/test_reliability_kill.py). Points: "publish:<asset key path>" (a finished artifact not yet
# renamed into place) and "commit:<schema.table>" (a SQL model built, its transaction not committed).
PAUSE_ENV = "SPOTIFY_ENGINE_TEST_PAUSE"
PAUSE_SECONDS = 120


class ArtifactNotFoundError(FileNotFoundError):
    """No materialized version exists for an asset (partition)."""


def pause_point(point: str) -> None:
    """A no-op unless ``$SPOTIFY_ENGINE_TEST_PAUSE`` names ``point`` (tests only, see ``PAUSE_ENV``)."""
    wanted, _, marker = os.environ.get(PAUSE_ENV, "").partition("=")
    if wanted and wanted == point and marker:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(PAUSE_SECONDS)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same folder and a rename (the file
    gets the umask's permissions, as a plain write would, not ``mkstemp``'s owner-only ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through an atomic write."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch(path: Path) -> Any:
    """Load a torch artifact safely (``weights_only=True``: tensors and plain containers only)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: cannot load torch artifact ({type(error).__name__}: {error})") from error


class ArtifactStore:
    """Versioned folders per asset key and partition, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def slot(self, key: Sequence[str], partition: str | None = None) -> Path:
        """Folder holding every version of one asset (partition)."""
        return self.root.joinpath(*key, partition or UNPARTITIONED)

    def write(self, key: Sequence[str], partition: str | None, fill: Callable[[Path], None], tag: str = "") -> Path:
        """Create a new version: ``fill(tmp_dir)`` writes the files, then the folder is published.

        Returns the published version folder.
        """
        slot = self.slot(key, partition)
        slot.mkdir(parents=True, exist_ok=True)
        now_ns = time.time_ns()  # one clock read, so names sort in creation order
        version = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns // 10**9)) + f"-{now_ns % 10**9:09d}"
        if tag:
            version += f"-{tag[:8]}"
        staging = slot / f".{version}.{uuid.uuid4().hex[:12]}.tmp"
        staging.mkdir()  # the umask's permissions (mkdtemp's are owner-only), so a shared data lake stays readable
        try:
            fill(staging)
            pause_point("publish:" + "/".join(key))
            final = slot / version
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        atomic_write_bytes(slot / POINTER, version.encode())
        return final

    def current(self, key: Sequence[str], partition: str | None = None) -> Path:
        """The live version folder; raises :class:`ArtifactNotFoundError` naming the asset if none."""
        slot = self.slot(key, partition)
        pointer = slot / POINTER
        if not pointer.exists():
            where = "/".join(key) + (f" [partition {partition}]" if partition else "")
            raise ArtifactNotFoundError(f"asset {where} has not been materialized yet (no {pointer})")
        return slot / pointer.read_text().strip()

    def versions(self, key: Sequence[str], partition: str | None = None) -> list[Path]:
        """All published versions, oldest first."""
        slot = self.slot(key, partition)
        if not slot.exists():
            return []
        return sorted(p for p in slot.iterdir() if p.is_dir() and not p.name.startswith("."))


def write_frame(frame: pl.DataFrame, path: Path) -> None:
    """Parquet writer used inside a staging folder (the folder itself is published atomically)."""
    frame.write_parquet(path)
