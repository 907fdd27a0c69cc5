"""Device names from config resolve to torch devices, with clear errors."""

from __future__ import annotations

import pytest
import torch

from unitablation.devices import describe_device, resolve_device


def test_cpu_and_auto(monkeypatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert describe_device(torch.device("cpu")).startswith("cpu (")


def test_cuda_without_gpu_and_unknown_names(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="asks for device 'cuda' but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
