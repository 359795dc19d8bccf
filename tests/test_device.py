"""The torch_runtime resource's device setting (tests run on the CPU; a GPU run is the benchmark's)."""

from __future__ import annotations

import pytest
import torch

from spotify_engine_assets.core.device import resolve_device
from spotify_engine_assets.defs.resources import TorchRuntime


def test_auto_picks_cuda_only_when_present():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error_naming_the_resource():
    with pytest.raises(
        ValueError, match=r"resource torch_runtime, setting device: device 'cuda:1': CUDA is not available"
    ):
        TorchRuntime(device="cuda:1").torch_device()


@pytest.mark.parametrize("setting", ["tpu", "gpu0", "mps"])
def test_unknown_devices_are_refused(setting):
    with pytest.raises(ValueError, match=f"device '{setting}'"):
        resolve_device(setting)
