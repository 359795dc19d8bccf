"""Where torch runs: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

DEVICE_SETTINGS = "auto, cpu, cuda or cuda:N"


def resolve_device(setting: str) -> torch.device:
    """The torch device a ``device`` setting names; a clear error for one this machine lacks."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ValueError(f"device {setting!r} is not a torch device ({DEVICE_SETTINGS})") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {setting!r}: only {DEVICE_SETTINGS} are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {setting!r}: CUDA is not available here (torch {torch.__version__}); use auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {setting!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
