"""Choosing the torch device a job runs on, explicitly and with a clear error."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """Map a config device name ('auto', 'cpu', 'cuda' or 'cuda:N') to a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"config asks for device {name!r} but CUDA is not available here")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; expected one of {DEVICE_CHOICES} or 'cuda:N'")


def describe_device(device: torch.device) -> str:
    """One line naming the device, for job logs."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def use_full_float32() -> None:
    """Turn off TF32 in cuDNN convolutions and CUDA matmuls so GPU maps match the CPU's to ~1e-6.

    PyTorch enables TF32 for convolutions by default on Ampere and later, which perturbs stored
    activations in the third decimal; unit-level measurements need full float32.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
