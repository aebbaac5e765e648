"""Displacement fields: Jacobian determinant and folding.

Fields follow :mod:`monai_inr_reg.core.grid`: ``ddf_voxel`` is ``(D, *S)``, voxel units along the
grid's array axes, taking voxel ``p`` to ``p + ddf_voxel(p)`` (MONAI's DDF convention).

The Jacobian determinant of ``phi(p) = p + ddf_voxel(p)`` is the same in voxel and in mm
coordinates (``J_mm = A J_voxel A^-1`` for the grid's linear part ``A``), so these functions need
no affine: a value of 1 is volume-preserving, below 1 is shrinking, ``<= 0`` is folding.
"""

from __future__ import annotations

import torch

__all__ = ["jacobian_determinant", "folding_fraction", "log_jacobian_std"]


def _check_ddf(ddf_voxel: torch.Tensor, caller: str) -> int:
    if not isinstance(ddf_voxel, torch.Tensor):
        raise TypeError(f"{caller}(): 'ddf_voxel' must be a torch.Tensor of shape (D, *S), got {type(ddf_voxel).__name__}")
    ndim = ddf_voxel.ndim - 1
    if ndim not in (2, 3) or ddf_voxel.shape[0] != ndim:
        raise ValueError(
            f"{caller}(): 'ddf_voxel' must have shape (D, *S) with D = 2 or 3 components and D spatial axes, "
            f"got {tuple(ddf_voxel.shape)}")
    if min(ddf_voxel.shape[1:]) < 2:
        raise ValueError(
            f"{caller}(): 'ddf_voxel' needs at least 2 voxels along every spatial axis for finite differences, "
            f"got spatial shape {tuple(ddf_voxel.shape[1:])}")
    if not ddf_voxel.is_floating_point():
        raise TypeError(f"{caller}(): 'ddf_voxel' must be a floating-point tensor, got {ddf_voxel.dtype}")
    return ndim


def jacobian_determinant(ddf_voxel: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of ``p -> p + ddf_voxel(p)`` at every voxel, by central differences.

    Interior voxels use central differences ``(u[i + 1] - u[i - 1]) / 2``; the first and last voxel
    along each axis use one-sided differences (``torch.gradient``, ``edge_order=1``).
    Differentiable, pure torch, any device.

    Args:
        ddf_voxel: ``(D, *S)`` float, D = 2 or 3, voxel units along the array axes (MONAI DDF).

    Returns:
        ``(*S)`` determinant, same dtype and device as ``ddf_voxel``; 1 for a translation.

    Raises:
        TypeError: ``ddf_voxel`` is not a floating-point tensor.
        ValueError: shape is not ``(D, *S)`` with D in (2, 3), or an axis has fewer than 2 voxels.
    """
    ndim = _check_ddf(ddf_voxel, "jacobian_determinant")
    dims = tuple(range(ndim))
    # j[c][a] = d phi_c / d p_a = delta_ca + d u_c / d p_a
    j = [list(torch.gradient(ddf_voxel[c], dim=dims)) for c in range(ndim)]
    for c in range(ndim):
        j[c][c] = j[c][c] + 1.0
    if ndim == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


def folding_fraction(ddf_voxel: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of voxels whose Jacobian determinant is not positive (``<= 0``): folding.

    Args:
        ddf_voxel: ``(D, *S)`` float, voxel units (see :func:`jacobian_determinant`).
        mask: optional ``(*S)`` (or ``(1, *S)``) boolean / 0-1 tensor; count only voxels inside it.

    Returns:
        0-d float tensor in ``[0, 1]`` (multiply by 100 for percent); 0 for an empty mask.

    Raises:
        ValueError: ``mask`` does not match the field's spatial shape (and the errors of
            :func:`jacobian_determinant`).
    """
    det = jacobian_determinant(ddf_voxel)
    folded = det <= 0
    if mask is None:
        return folded.to(det.dtype).mean()
    mask = torch.as_tensor(mask, device=det.device)
    if mask.ndim == det.ndim + 1 and mask.shape[0] == 1:
        mask = mask[0]
    if tuple(mask.shape) != tuple(det.shape):
        raise ValueError(
            f"folding_fraction(): 'mask' must have the field's spatial shape {tuple(det.shape)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    count = mask.sum()
    if int(count) == 0:
        return torch.zeros((), dtype=det.dtype, device=det.device)
    return (folded & mask).sum().to(det.dtype) / count.to(det.dtype)


def log_jacobian_std(ddf_voxel: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation of the log Jacobian determinant (Learn2Reg's SDlogJ): how unevenly the
    motion stretches and squeezes; 0 for any affine motion.

    As Learn2Reg computes it: determinants clipped to ``[1e-9, 1e9]`` (so folds count as very
    large squeezes), then the population standard deviation of their logarithm.

    Args:
        ddf_voxel: ``(D, *S)`` float, voxel units (see :func:`jacobian_determinant`).
        mask: optional ``(*S)`` (or ``(1, *S)``) boolean / 0-1 tensor; only voxels inside count.

    Returns:
        0-d float tensor (dimensionless); NaN for an empty mask.
    """
    det = jacobian_determinant(ddf_voxel)
    values = torch.log(det.clamp(1e-9, 1e9))
    if mask is not None:
        mask = torch.as_tensor(mask, device=det.device)
        if mask.ndim == det.ndim + 1 and mask.shape[0] == 1:
            mask = mask[0]
        if tuple(mask.shape) != tuple(det.shape):
            raise ValueError(f"log_jacobian_std(): 'mask' must have the field's spatial shape {tuple(det.shape)}, "
                             f"got {tuple(mask.shape)}")
        values = values[mask.bool()]
    if values.numel() == 0:
        return torch.full((), float("nan"), dtype=det.dtype, device=det.device)
    return values.std(correction=0)
