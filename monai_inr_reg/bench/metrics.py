"""Benchmark-only scores: corner error of a rigid result, end-point error of a field, label centroids.

Dice, HD95 and folding come from :mod:`monai_inr_reg.metrics` / :mod:`monai_inr_reg.core.fields`
(re-exported here for the suites); this module adds only what those do not have.

Every recovered motion is handed over as a map **fixed -> moving** (LPS mm): either a matrix
``(D + 1, D + 1)`` or a displacement ``ddf_mm`` ``(D, *S_fixed)`` (see
:class:`~monai_inr_reg.result.RegistrationResult`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.fields import log_jacobian_std
from ..core.grid import ImageGrid, apply_affine, ddf_voxel_from_ddf_mm
from ..metrics import folding_percent, label_overlap

__all__ = [
    "corner_points_mm",
    "corner_error",
    "SUCCESS_THRESHOLD",
    "endpoint_error",
    "folding_percent_mm",
    "sdlogj_mm",
    "label_overlap",
    "label_centroids_mm",
    "centroid_error_mm",
]

SUCCESS_THRESHOLD = 0.02  # mean corner error / width, Lu et al. 2022


def _corner_voxels(grid: ImageGrid) -> torch.Tensor:
    corners = torch.cartesian_prod(*[torch.tensor([0.0, s - 1.0], dtype=torch.float64) for s in grid.shape])
    return corners.reshape(-1, grid.ndim)


def corner_points_mm(grid: ImageGrid, *, matrix_mm: torch.Tensor | None = None,
                     ddf_mm: torch.Tensor | None = None) -> torch.Tensor:
    """Where a fixed -> moving map sends the ``2^D`` corner voxel centres of ``grid``: ``(2^D, D)`` LPS mm.

    Exactly one of ``matrix_mm`` (``(D + 1, D + 1)``) or ``ddf_mm`` (``(D, *S)`` on ``grid``) must be
    given; a field is read at the corner voxels themselves (no fitting).
    """
    if (matrix_mm is None) == (ddf_mm is None):
        raise ValueError("corner_points_mm(): give exactly one of 'matrix_mm' or 'ddf_mm'")
    corners = grid.corners_mm()
    if matrix_mm is not None:
        return apply_affine(torch.as_tensor(matrix_mm, dtype=torch.float64), corners)
    ddf = torch.as_tensor(ddf_mm)
    if tuple(ddf.shape) != (grid.ndim,) + grid.shape:
        raise ValueError(f"corner_points_mm(): 'ddf_mm' must have shape {(grid.ndim,) + grid.shape}, got {tuple(ddf.shape)}")
    idx = _corner_voxels(grid).long()
    disp = torch.stack([ddf[(c,) + tuple(idx.T)] for c in range(grid.ndim)], dim=1).to(torch.float64)
    return corners + disp


def corner_error(grid: ImageGrid, true_matrix_mm: torch.Tensor, *, matrix_mm: torch.Tensor | None = None,
                 ddf_mm: torch.Tensor | None = None) -> dict:
    """Mean corner distance between a recovered and the true fixed -> moving map (Zurich protocol).

    The image width is the size of array axis 1 (PNG columns) times its spacing, in mm.

    Returns:
        ``{"corner_error_mm", "relative_error" (mean / width), "success" (relative < 0.02)}``.
    """
    true = corner_points_mm(grid, matrix_mm=true_matrix_mm)
    est = corner_points_mm(grid, matrix_mm=matrix_mm, ddf_mm=ddf_mm)
    mean = float((est - true).norm(dim=1).mean())
    width = float(grid.shape[1] * grid.spacing[1])
    rel = mean / width
    return {"corner_error_mm": mean, "relative_error": rel, "success": bool(rel < SUCCESS_THRESHOLD)}


def endpoint_error(ddf_mm: torch.Tensor, true_ddf_mm: torch.Tensor, mask=None) -> dict:
    """End-point error ``|ddf - true|`` (mm) at the fixed voxels inside ``mask``.

    Args:
        ddf_mm, true_ddf_mm: ``(D, *S)`` LPS mm on the fixed grid, fixed -> moving.
        mask: ``(*S)`` bool (None: every voxel).

    Returns:
        ``{"epe_median_mm", "epe_p90_mm", "epe_mean_mm", "epe_max_mm"}``.
    """
    est, true = torch.as_tensor(ddf_mm, dtype=torch.float64), torch.as_tensor(true_ddf_mm, dtype=torch.float64)
    if est.shape != true.shape:
        raise ValueError(f"endpoint_error(): 'ddf_mm' must have the shape of 'true_ddf_mm' {tuple(true.shape)}, "
                         f"got {tuple(est.shape)}")
    err = (est - true).norm(dim=0).numpy()
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != err.shape:
            raise ValueError(f"endpoint_error(): 'mask' must have shape {err.shape}, got {mask.shape}")
        err = err[mask]
    if err.size == 0:
        return {k: math.nan for k in ("epe_median_mm", "epe_p90_mm", "epe_mean_mm", "epe_max_mm")}
    return {"epe_median_mm": float(np.median(err)), "epe_p90_mm": float(np.percentile(err, 90)),
            "epe_mean_mm": float(err.mean()), "epe_max_mm": float(err.max())}


def folding_percent_mm(ddf_mm: torch.Tensor, grid: ImageGrid, mask=None) -> float:
    """Percent of fixed voxels (inside ``mask``) where ``x -> x + ddf_mm(x)`` folds (Jacobian det <= 0)."""
    ddf_voxel = ddf_voxel_from_ddf_mm(torch.as_tensor(ddf_mm, dtype=torch.float64), grid.mm_from_voxel)
    return folding_percent(ddf_voxel, mask=None if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool)))


def sdlogj_mm(ddf_mm: torch.Tensor, grid: ImageGrid, mask=None) -> float:
    """Learn2Reg's SDlogJ of ``x -> x + ddf_mm(x)`` on the fixed grid (inside ``mask``); see
    :func:`monai_inr_reg.core.fields.log_jacobian_std` (the determinant is the same in voxel and mm frames)."""
    ddf_voxel = ddf_voxel_from_ddf_mm(torch.as_tensor(ddf_mm, dtype=torch.float64), grid.mm_from_voxel)
    return float(log_jacobian_std(ddf_voxel, mask=None if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool))))


def label_centroids_mm(labels: np.ndarray, grid: ImageGrid) -> dict[int, np.ndarray]:
    """Centroid (LPS mm) of each channel of a ``(C, *S)`` label image with ``C > 1`` (channel k -> id k + 1);
    with ``C == 1`` of each non-zero label id. Empty labels are left out."""
    arr = np.asarray(labels)
    masks = {k + 1: arr[k] > 0.5 for k in range(arr.shape[0])} if arr.shape[0] > 1 else \
        {int(v): np.rint(arr[0]) == v for v in np.unique(np.rint(arr[0])) if v != 0}
    out = {}
    for k, m in masks.items():
        if m.any():
            voxel = torch.as_tensor(np.argwhere(m).mean(0)[None], dtype=torch.float64)
            out[k] = grid.voxel_to_mm(voxel)[0].numpy()
    return out


def centroid_error_mm(fixed_labels: np.ndarray, warped_labels: np.ndarray, grid: ImageGrid, *,
                      skip=(1,)) -> dict[int, float]:
    """Distance (mm) between matching label centroids of two label images on ``grid``.

    ``skip`` leaves out ids (default 1: the prostate gland channel; landmarks are 2, 3, ...).
    Labels missing from either image are left out.
    """
    a, b = label_centroids_mm(fixed_labels, grid), label_centroids_mm(warped_labels, grid)
    return {k: float(np.linalg.norm(a[k] - b[k])) for k in sorted(set(a) & set(b)) if k not in skip}
