"""Rigid and affine maps as homogeneous matrices (pure functions, differentiable)."""

from __future__ import annotations

import torch

__all__ = ["rotation_matrix", "homogeneous", "about_center"]


def rotation_matrix(rotation: torch.Tensor, ndim: int) -> torch.Tensor:
    """Rotation ``(D, D)`` from parameters: 2D one angle (radians, counter-clockwise from x to y),
    3D a rotation vector (axis times angle, radians) through the matrix exponential."""
    if ndim == 2:
        c, s = torch.cos(rotation[0]), torch.sin(rotation[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    x, y, z = rotation
    zero = torch.zeros_like(x)
    skew = torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])])
    return torch.linalg.matrix_exp(skew)


def homogeneous(linear: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``(D + 1, D + 1)`` homogeneous matrix from a ``(D, D)`` linear part and a ``(D,)`` translation."""
    d = linear.shape[0]
    bottom = torch.zeros(1, d + 1, dtype=linear.dtype, device=linear.device)
    bottom[0, d] = 1.0
    return torch.cat([torch.cat([linear, translation[:, None]], dim=1), bottom])


def about_center(linear: torch.Tensor, translation: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Homogeneous map ``x -> linear (x - center) + center + translation``."""
    return homogeneous(linear, center + translation - linear @ center)
