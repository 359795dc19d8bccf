"""Kill a child process at a known point: shared by the resume and reliability tests."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(process: subprocess.Popen, ready: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``ready()`` until it returns something truthy, then SIGKILL ``process`` and return
    that value. Fails (with the child's last output) if the child ends first or ``timeout``
    seconds pass; the child is always reaped."""
    deadline = time.monotonic() + timeout
    try:
        while not (found := ready()):
            if process.poll() is not None:
                output = b"".join(part or b"" for part in process.communicate())
                raise AssertionError(f"{what}: the child ended before the kill:\n{output.decode()[-3000:]}")
            assert time.monotonic() < deadline, f"{what}: not reached within {timeout} s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL, f"{what}: the child exited with {process.returncode}, not SIGKILL"
    return found
