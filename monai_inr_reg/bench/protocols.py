"""Known motions applied to aligned pairs: random rigid levels (Zurich protocol) and smooth warps.

The ground truth is always a map **fixed -> moving** (LPS mm), the resampling direction used by
:class:`~monai_inr_reg.result.RegistrationResult`, ITK, ANTs and elastix:

- rigid: ``matrix_mm`` ``(D + 1, D + 1)``, fixed point ``x`` <-> moving point ``matrix_mm @ x``;
- deformable: ``ddf_mm`` ``(D, *S)`` on the fixed grid, ``x`` <-> ``x + ddf_mm(x)``.

The moving image is made so that this holds: ``moving(phi(x)) = source(x)`` where ``source`` is
aligned with ``fixed``, i.e. ``moving(y) = source(phi^-1(y))`` sampled on the (shared) grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.grid import ImageGrid, apply_affine, ddf_voxel_from_ddf_mm
from ..core.linear import about_center, rotation_matrix
from ..core.sample import sample_image_mm, warp_image_mm

__all__ = [
    "RIGID_LEVELS",
    "RigidCase",
    "sample_rigid_cases",
    "rigid_matrix_mm",
    "move_rigid",
    "random_smooth_ddf_mm",
    "invert_ddf_mm",
    "move_deformable",
]

# (rotation |deg| low, high, translation |px| low, high per 300 px of width), Lu et al. 2022
RIGID_LEVELS = ((0.0, 5.0, 0.0, 7.0), (5.0, 10.0, 7.0, 14.0), (10.0, 15.0, 14.0, 21.0), (15.0, 20.0, 21.0, 28.0))


@dataclass(frozen=True)
class RigidCase:
    """One random rigid motion of the Zurich protocol.

    Attributes:
        level: 1 to 4.
        index: case number within the level.
        angle_deg: signed rotation about the image centre, degrees, counter-clockwise from LPS x to y.
        translation_px: signed ``(tx, ty)`` along LPS x and y, pixels of the fixed grid.
    """

    level: int
    index: int
    angle_deg: float
    translation_px: tuple[float, float]


def sample_rigid_cases(n_per_level: int, width_px: float, *, seed: int = 0,
                       levels=(1, 2, 3, 4)) -> list[RigidCase]:
    """Random rigid cases, ``n_per_level`` per level, random signs, reproducible from ``seed``.

    Rotation ``|angle|`` is uniform in the level's range; ``|tx|`` and ``|ty|`` independently
    uniform in the level's range scaled by ``width_px / 300``. Each level has its own stream, so
    adding cases to one level does not change another.
    """
    if n_per_level < 1:
        raise ValueError(f"sample_rigid_cases(): 'n_per_level' must be >= 1, got {n_per_level}")
    scale = float(width_px) / 300.0
    cases = []
    for level in levels:
        if level not in (1, 2, 3, 4):
            raise ValueError(f"sample_rigid_cases(): 'levels' must be in 1..4, got {level}")
        rot_lo, rot_hi, t_lo, t_hi = RIGID_LEVELS[level - 1]
        rng = np.random.default_rng([seed, level])
        for index in range(n_per_level):
            signs = rng.choice([-1.0, 1.0], size=3)
            angle = signs[0] * rng.uniform(rot_lo, rot_hi)
            t = signs[1:] * rng.uniform(t_lo, t_hi, size=2) * scale
            cases.append(RigidCase(level, index, float(angle), (float(t[0]), float(t[1]))))
    return cases


def rigid_matrix_mm(case: RigidCase, grid: ImageGrid) -> torch.Tensor:
    """The case's fixed -> moving map, ``(3, 3)`` float64 LPS mm: rotation about the grid centre, then shift.

    Translation pixels are converted with the grid's spacing along x and y (1 mm slices: 1 px = 1 mm).
    """
    if grid.ndim != 2:
        raise ValueError(f"rigid_matrix_mm(): 'grid' must be 2D (the rigid levels are a 2D protocol), got {grid.ndim}D")
    angle = torch.tensor([math.radians(case.angle_deg)], dtype=torch.float64)
    shift = torch.tensor(case.translation_px, dtype=torch.float64) * grid.spacing
    return about_center(rotation_matrix(angle, 2), shift, grid.center_mm())


def move_rigid(source: np.ndarray, grid: ImageGrid, matrix_mm: torch.Tensor) -> np.ndarray:
    """The moving image ``moving(y) = source(matrix_mm^-1 y)`` on ``grid`` (zeros outside), float32."""
    points = apply_affine(torch.linalg.inv(matrix_mm.to(torch.float64)), grid.mm_points(dtype=torch.float64))
    out = warp_image_mm(torch.as_tensor(source, dtype=torch.float32)[None], grid, points, grid.shape)
    return out[0].numpy()


def _gaussian_smooth(field: torch.Tensor, sigma_voxel) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(C, *S)`` along each spatial axis (replicate padding)."""
    out = field
    for axis, sigma in enumerate(sigma_voxel):
        if sigma <= 0:
            continue
        radius = max(1, int(math.ceil(3.0 * sigma)))
        x = torch.arange(-radius, radius + 1, dtype=field.dtype)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        moved = out.movedim(axis + 1, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        flat = F.pad(flat, (radius, radius), mode="replicate")
        flat = F.conv1d(flat, kernel.view(1, 1, -1))
        out = flat.reshape(shape).movedim(-1, axis + 1)
    return out


def random_smooth_ddf_mm(grid: ImageGrid, *, rms_mm: float, correlation_mm: float, seed: int = 0,
                         mask: np.ndarray | None = None, min_jacobian: float = 0.2,
                         max_tries: int = 20) -> torch.Tensor:
    """A random smooth invertible displacement (fixed -> moving), ``(D, *S)`` float64 LPS mm.

    A coarse random grid (one control point per ``correlation_mm``, standard normal components)
    is upsampled (linear) to the grid and smoothed with a Gaussian of sigma ``correlation_mm / 4``,
    then scaled so that its root-mean-square length over ``mask`` (whole grid if None) is
    ``rms_mm``. Draws with a Jacobian determinant below ``min_jacobian`` anywhere are rejected
    (redrawn from the next seed), so the map stays well inside the invertible range.

    Raises:
        ValueError: no draw met ``min_jacobian`` in ``max_tries`` (amplitude too large for the
            correlation length).
    """
    from ..core.fields import jacobian_determinant

    spacing = grid.spacing.numpy()
    extent = (np.asarray(grid.shape) - 1) * spacing
    n_ctrl = [max(2, int(math.ceil(e / correlation_mm)) + 1) for e in extent]
    mode = "bilinear" if grid.ndim == 2 else "trilinear"
    weight = None if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool))
    for attempt in range(max_tries):
        gen = torch.Generator().manual_seed(int(seed) * 1009 + attempt)
        coarse = torch.randn((1, grid.ndim, *n_ctrl), generator=gen, dtype=torch.float64)
        dense = F.interpolate(coarse, size=grid.shape, mode=mode, align_corners=True)[0]
        dense = _gaussian_smooth(dense, [correlation_mm / 4.0 / s for s in spacing])
        length2 = dense.pow(2).sum(0)
        rms = float(length2[weight].mean().sqrt()) if weight is not None else float(length2.mean().sqrt())
        ddf_mm = dense * (rms_mm / max(rms, 1e-12))
        det = jacobian_determinant(ddf_voxel_from_ddf_mm(ddf_mm, grid.mm_from_voxel))
        if float(det.min()) >= min_jacobian:
            return ddf_mm
    raise ValueError(
        f"random_smooth_ddf_mm(): no draw kept the Jacobian determinant above {min_jacobian} in {max_tries} tries "
        f"(rms_mm={rms_mm}, correlation_mm={correlation_mm}); lower rms_mm or raise correlation_mm")


def invert_ddf_mm(ddf_mm: torch.Tensor, grid: ImageGrid, *, iterations: int = 60,
                  tolerance_mm: float = 1e-4) -> tuple[torch.Tensor, float]:
    """Inverse displacement by fixed-point iteration: ``v(y) = -u(y + v(y))``, on the same grid.

    Args:
        ddf_mm: ``u``, ``(D, *S)`` LPS mm, fixed -> moving.

    Returns:
        ``(v, residual_mm)``: ``v`` ``(D, *S)`` float64 LPS mm (moving -> fixed), and the largest
        ``|v(y) + u(y + v(y))|`` over the grid points whose ``y + v(y)`` stays inside the grid.
    """
    ndim = grid.ndim
    points = grid.mm_points(dtype=torch.float64)
    field = ddf_mm.to(torch.float64)
    v = -field.reshape(ndim, -1).T.clone()

    def u_at(p):  # border-clamped, so the iteration is defined everywhere
        return sample_image_mm(field, grid, p, padding_mode="border")

    for _ in range(iterations):
        v_new = -u_at(points + v)
        step = float((v_new - v).norm(dim=1).max())
        v = v_new
        if step < tolerance_mm:
            break
    voxel = grid.mm_to_voxel(points + v)
    inside = ((voxel >= 0) & (voxel <= torch.tensor(grid.shape, dtype=voxel.dtype) - 1)).all(1)
    res = (v + u_at(points + v)).norm(dim=1)
    residual = float(res[inside].max()) if bool(inside.any()) else 0.0
    return v.T.reshape((ndim,) + grid.shape), residual


def move_deformable(source: np.ndarray, grid: ImageGrid, ddf_mm: torch.Tensor) -> tuple[np.ndarray, float]:
    """The moving image for a known fixed -> moving field: ``moving(y) = source(y + v(y))``, ``v = u^-1``.

    Returns:
        ``(moving (*S) float32, inversion residual in mm)``.
    """
    v, residual = invert_ddf_mm(ddf_mm, grid)
    points = grid.mm_points(dtype=torch.float64) + v.reshape(grid.ndim, -1).T
    out = warp_image_mm(torch.as_tensor(source, dtype=torch.float32)[None], grid, points, grid.shape)
    return out[0].numpy(), residual
