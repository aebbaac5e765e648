"""Rigid and affine maps as homogeneous matrices (pure functions, differentiable)."""

from __future__ import annotations

import torch

__all__ = ["rotation_matrix", "homogeneous", "about_center", "nearest_rotation", "rotation_parameters"]


_SMALL_ANGLE_SQUARED = 1e-3  # below it (about 1.8 degrees) Rodrigues' coefficients come from their series


def rotation_matrix(rotation: torch.Tensor, ndim: int) -> torch.Tensor:
    """Rotation ``(D, D)`` from parameters: 2D one angle (radians, counter-clockwise from x to y),
    3D a rotation vector ``v`` (axis times angle, radians): the matrix exponential of its skew matrix
    ``K``, by Rodrigues' formula ``I + sin(t)/t K + (1 - cos(t))/t^2 K^2`` with ``t = |v|``
    (``torch.linalg.matrix_exp`` gives the same matrix, less exactly, in twice the operator calls: 767
    against 347 forward and backward, measured; a rigid fit's step is mostly such calls).
    Differentiable everywhere, ``v = 0`` included."""
    if ndim == 2:
        c, s = torch.cos(rotation[0]), torch.sin(rotation[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    x, y, z = rotation
    zero = torch.zeros_like(x)
    skew = torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])])
    t2 = (rotation * rotation).sum()
    small = t2 < _SMALL_ANGLE_SQUARED
    # series in t^2 (errors below 1e-17 there); the closed forms on a t^2 kept away from 0, so that
    # the branch torch.where does not take has finite gradients
    series_a = 1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0))
    series_b = 0.5 * (1.0 - t2 / 12.0 * (1.0 - t2 / 30.0 * (1.0 - t2 / 56.0)))
    t = torch.where(small, torch.ones_like(t2), t2).sqrt()
    a = torch.where(small, series_a, torch.sin(t) / t)
    b = torch.where(small, series_b, (1.0 - torch.cos(t)) / (t * t))
    return torch.eye(3, dtype=rotation.dtype, device=rotation.device) + a * skew + b * (skew @ skew)


def homogeneous(linear: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``(D + 1, D + 1)`` homogeneous matrix from a ``(D, D)`` linear part and a ``(D,)`` translation."""
    d = linear.shape[0]
    bottom = torch.zeros(1, d + 1, dtype=linear.dtype, device=linear.device)
    bottom[0, d] = 1.0
    return torch.cat([torch.cat([linear, translation[:, None]], dim=1), bottom])


def about_center(linear: torch.Tensor, translation: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Homogeneous map ``x -> linear (x - center) + center + translation``."""
    return homogeneous(linear, center + translation - linear @ center)


def nearest_rotation(linear: torch.Tensor) -> torch.Tensor:
    """The rotation ``(D, D)`` closest to ``linear`` in the Frobenius norm (polar decomposition, det +1)."""
    u, _, vt = torch.linalg.svd(linear)
    d = torch.ones(linear.shape[0], dtype=linear.dtype, device=linear.device)
    d[-1] = torch.sign(torch.linalg.det(u @ vt))
    return u @ torch.diag(d) @ vt


def rotation_parameters(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rotation_matrix`: ``(D, D)`` rotation -> 2D ``(1,)`` angle or 3D ``(3,)`` rotation
    vector (radians). The identity gives exact zeros."""
    r = rotation.to(torch.float64)
    if r.shape[0] == 2:
        return torch.atan2(r[1, 0], r[0, 0])[None]
    cos = ((torch.trace(r) - 1.0) / 2.0).clamp(-1.0, 1.0)
    angle = torch.arccos(cos)
    if float(angle) == 0.0:
        return torch.zeros(3, dtype=torch.float64)
    skew = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])  # 2 sin(angle) axis
    if float(torch.sin(angle)) > 1e-3:
        return skew / (2.0 * torch.sin(angle)) * angle
    # near pi the skew part vanishes: the axis from the symmetric part, (R + I) / 2 ~ a a^T
    sym = ((r + r.T) / 2.0 + torch.eye(3, dtype=torch.float64)) / 2.0
    column = int(torch.argmax(torch.diagonal(sym)))
    axis = sym[:, column] / torch.linalg.norm(sym[:, column])
    return axis * angle * (-1.0 if float(axis @ skew) < 0 else 1.0)
