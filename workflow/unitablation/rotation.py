"""Random-rotation control (RQ4): a seeded Haar-random orthogonal basis of a layer's channels."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

BASIS_PATTERN = re.compile(r"^(unit|rot(\d+))$")


def haar_rotation(channels: int, seed: int) -> np.ndarray:
    """Haar-random orthogonal (C, C) matrix with determinant +1 from a seeded Gaussian.

    QR of a standard Gaussian matrix; each column of Q is multiplied by the sign of the matching
    diagonal entry of R (which makes the distribution Haar); if the determinant is then -1 the
    first row is negated. Row j is the rotated direction r_j.
    """
    if channels < 1:
        raise ValueError(f"a rotation needs at least one channel, got {channels}")
    gaussian = np.random.default_rng(seed).standard_normal((channels, channels))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q = q * signs[None, :]
    if np.linalg.det(q) < 0:
        q[0] = -q[0]
    return q


def parse_basis(basis: str) -> int | None:
    """The rotation seed of a basis name ('rot<seed>'), or None for the unit basis."""
    match = BASIS_PATTERN.match(basis)
    if match is None:
        raise ValueError(f"unknown basis {basis!r}; expected 'unit' or 'rot<seed>'")
    return None if match.group(2) is None else int(match.group(2))


def rotate(maps: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Coordinates z_j = r_j . a of (N, C, ...) maps in the rotated basis, same shape."""
    import torch

    return torch.einsum("jc,nc...->nj...", rotation.to(maps.dtype), maps)
