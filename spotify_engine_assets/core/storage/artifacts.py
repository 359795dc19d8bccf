"""Versioned, atomically written artifacts.

Layout under a root folder::

    <root>/<asset key parts...>/<partition or "_">/<version>/<files>
    <root>/<asset key parts...>/<partition or "_">/CURRENT      # name of the live version

A version is written completely into a hidden temporary folder, then renamed into place,
and only then is ``CURRENT`` swapped (``os.replace``, atomic on POSIX). A run that fails or
is killed half-way leaves the previous version untouched and still current. Old versions
are kept (they are small) so any recorded version stays loadable.

Every version folder holds ``SHA256SUMS`` (the ``sha256sum`` format: ``<hex>  <file>``, so
``sha256sum -c SHA256SUMS`` checks it by hand too), written before the folder is published.
:func:`load_torch` and :func:`verify_artifact` hash a file once per load and compare: a flipped
byte is an :class:`ArtifactCorruptError` naming the file, never a model with wrong scores. A
version written before the hashes were stored has no ``SHA256SUMS``: it still loads, with a
warning (once per folder) that it is unverified; re-materializing it adds the hashes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch

from .paths import safe_name

UNPARTITIONED = "_"
POINTER = "CURRENT"
# Tests only (never set in production): "<point>=<marker file>" makes :func:`pause_point` of that
# point create the marker and sleep, so a test can SIGKILL the process exactly there (see
# tests/test_reliability_kill.py). Points: "publish:<asset key path>" (a finished artifact not yet
# renamed into place) and "commit:<schema.table>" (a SQL model built, its transaction not committed).
PAUSE_ENV = "SPOTIFY_ENGINE_TEST_PAUSE"
PAUSE_SECONDS = 120


MANIFEST = "SHA256SUMS"
_log = logging.getLogger(__name__)
_UNVERIFIED_WARNED: set[Path] = set()


class ArtifactNotFoundError(FileNotFoundError):
    """No materialized version exists for an asset (partition)."""


class ArtifactCorruptError(ValueError):
    """A stored file's content no longer matches the hash written with it (bit rot, a partial copy, an edit)."""


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(folder: Path) -> Path:
    """``folder/SHA256SUMS``: the sha256 of every file below ``folder`` (before it is published)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    lines = [f"{file_sha256(path)}  {path.relative_to(folder).as_posix()}\n" for path in files]
    manifest = folder / MANIFEST
    manifest.write_text("".join(lines))
    return manifest


def _read_manifest(manifest: Path) -> dict[str, str]:
    hashes = {}
    for number, line in enumerate(manifest.read_text(errors="replace").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise ArtifactCorruptError(
                f"{manifest}: line {number} is not '<sha256>  <file>' (the hash list is corrupt)"
            )
        hashes[name] = digest
    return hashes


def verify_artifact(path: Path) -> bool:
    """Check ``path`` against its folder's ``SHA256SUMS``: True when it matches, False when the
    folder has no hashes (a version from before they were stored: loaded unverified, with a
    warning once per folder); an :class:`ArtifactCorruptError` naming the file on a mismatch."""
    path = Path(path)
    manifest = path.parent / MANIFEST
    if not manifest.exists():
        # a version folder of a store (its slot has CURRENT) written before hashes; other files
        # loaded with load_torch (training checkpoints) carry no hashes of their own
        if (path.parent.parent / POINTER).exists() and path.parent not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(path.parent)
            _log.warning(
                f"{path.parent}: no {MANIFEST} (written before content hashes were stored): loaded "
                "unverified; re-materialize it to store its hashes"
            )
        return False
    expected = _read_manifest(manifest).get(path.name)
    if expected is None:
        raise ArtifactCorruptError(f"{path}: not listed in {manifest}: not a file this version was written with")
    actual = file_sha256(path)
    if actual != expected:
        raise ArtifactCorruptError(
            f"{path}: content hash mismatch (sha256 {actual[:16]}..., {MANIFEST} has {expected[:16]}...): the file "
            "is corrupt; re-materialize the asset (its other versions stay loadable)"
        )
    return True


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
    """Load a torch artifact safely (``weights_only=True``: tensors and plain containers only),
    checked against its folder's content hashes (:func:`verify_artifact`)."""
    try:
        verify_artifact(path)
    except OSError as error:
        raise ValueError(f"{path}: cannot load torch artifact ({type(error).__name__}: {error})") from error
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise ValueError(f"{path}: cannot load torch artifact ({type(error).__name__}: {error})") from error


def first_non_finite(obj: Any, where: str = "") -> str | None:
    """The path (``state.user_emb.weight``) of the first NaN or infinite float in ``obj`` - a
    tensor, a float, or dicts, lists and tuples of them - or None when every one is finite. A
    model with such a value scores nothing; it must never become a current artifact."""
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:  # sparse: its stored values
            obj = obj.coalesce().values() if obj.layout == torch.sparse_coo else obj.values()
        finite = not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        return None if finite else where or "value"
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where or "value"
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


class ArtifactStore:
    """Versioned folders per asset key and partition, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def slot(self, key: Sequence[str], partition: str | None = None) -> Path:
        """Folder holding every version of one asset (partition); the key's parts and the
        partition must be safe names (``paths.safe_name``: no '/', '..' or leading '.')."""
        for part in key:
            safe_name(part, "asset key part")
        if partition:
            safe_name(partition, f"partition key of {'/'.join(key)}")
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
            write_manifest(staging)
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
        return slot / safe_name(pointer.read_text().strip(), f"version named by {pointer}")

    def versions(self, key: Sequence[str], partition: str | None = None) -> list[Path]:
        """All published versions, oldest first."""
        slot = self.slot(key, partition)
        if not slot.exists():
            return []
        return sorted(p for p in slot.iterdir() if p.is_dir() and not p.name.startswith("."))


def write_frame(frame: pl.DataFrame, path: Path) -> None:
    """Parquet writer used inside a staging folder (the folder itself is published atomically)."""
    frame.write_parquet(path)
