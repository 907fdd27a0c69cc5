"""Numerical settings of torch devices (which device a job gets is decided in `lease`)."""

from __future__ import annotations

import torch


def use_full_float32() -> None:
    """Turn off TF32 in cuDNN convolutions and CUDA matmuls so GPU maps match the CPU's to ~1e-5.

    PyTorch enables TF32 for convolutions by default on Ampere and later, which perturbs stored
    activations in the third decimal; unit-level measurements need full float32.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
