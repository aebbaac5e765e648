"""Evaluation metrics for a registered pair: label overlap (Dice), surface distance (HD95, mm), folding.

Label images are ``(C, *S)`` on one grid (the fixed one). With ``C == 1`` the voxel values are
label ids (0 is background); with ``C > 1`` channel ``k`` is the binary mask of label ``k + 1``
(one-hot or multi-label, as DeepReg-style 4-D label volumes are stored).

HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95)``: surface voxels are those of
the mask not in its erosion; the result is the larger of the two directed 95th percentiles of
surface-to-surface distances, in mm through the grid's voxel spacing (exact for any rotation of
the axes; for sheared grids the per-axis spacing is an approximation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .core.fields import folding_fraction

__all__ = ["label_masks", "dice", "hd95_mm", "label_overlap", "folding_percent"]


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def label_masks(label, *, name: str = "label") -> dict[int, np.ndarray]:
    """Split a label image ``(C, *S)`` into boolean masks ``{label id: (*S)}`` (background excluded).

    Raises:
        ValueError: ``label`` has fewer than 2 dimensions.
    """
    arr = _as_numpy(label)
    if arr.ndim < 3:
        raise ValueError(f"label_masks(): {name!r} must be channel-first (C, *S) with 2 or 3 spatial axes, got shape {arr.shape}")
    if arr.shape[0] == 1:
        values = np.rint(arr[0]).astype(np.int64)
        return {int(v): values == v for v in np.unique(values) if v != 0}
    return {k + 1: arr[k] > 0.5 for k in range(arr.shape[0])}


def dice(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; NaN when both are empty."""
    total = int(mask_a.sum()) + int(mask_b.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(mask_a, mask_b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def hd95_mm(mask_a: np.ndarray, mask_b: np.ndarray, spacing_mm) -> float:
    """95th-percentile Hausdorff distance between two boolean masks, in mm.

    Args:
        mask_a, mask_b: boolean ``(*S)`` masks on one grid.
        spacing_mm: voxel size along each array axis, mm, length D.

    Returns:
        The larger of the two directed 95th percentiles; NaN when both masks are empty,
        ``inf`` when exactly one is.
    """
    from scipy.ndimage import distance_transform_edt

    a, b = mask_a.astype(bool), mask_b.astype(bool)
    if not a.any() and not b.any():
        return math.nan
    if not a.any() or not b.any():
        return math.inf
    # crop to the union's bounding box plus one voxel: every surface voxel (and every nearest one)
    # lies inside, and the margin keeps the erosion identical; 3D label sets get much cheaper
    where = np.argwhere(a | b)
    low = np.maximum(where.min(0) - 1, 0)
    high = where.max(0) + 2
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high))
    a, b = np.pad(a[box], 1), np.pad(b[box], 1)
    sa, sb = _surface(a), _surface(b)
    sampling = [float(s) for s in spacing_mm]
    to_b = distance_transform_edt(~sb, sampling=sampling)[sa]
    to_a = distance_transform_edt(~sa, sampling=sampling)[sb]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))


def label_overlap(fixed_label, warped_label, spacing_mm, *, hd95: bool = True) -> dict:
    """Dice and HD95 per label and their means, for labels present in either image.

    Args:
        fixed_label: ``(C, *S)`` label image on the fixed grid.
        warped_label: ``(C, *S)`` moving label warped onto the fixed grid (same shape).
        spacing_mm: fixed voxel size along each array axis, mm.
        hd95: also compute HD95 (slower: two distance transforms per label).

    Returns:
        ``{"dice": mean Dice, "hd95_mm": mean HD95 over labels present in both (NaN if none),
        "per_label": {label id: {"dice": ..., "hd95_mm": ...}}}``.

    Raises:
        ValueError: the two label images differ in shape.
    """
    fixed_arr, warped_arr = _as_numpy(fixed_label), _as_numpy(warped_label)
    if fixed_arr.shape != warped_arr.shape:
        raise ValueError(
            f"label_overlap(): 'warped_label' must have the shape of 'fixed_label' {fixed_arr.shape}, got {warped_arr.shape}")
    fixed_masks = label_masks(fixed_arr, name="fixed_label")
    warped_masks = label_masks(warped_arr, name="warped_label")
    empty = np.zeros(fixed_arr.shape[1:], dtype=bool)
    per_label = {}
    for k in sorted(set(fixed_masks) | set(warped_masks)):
        a, b = fixed_masks.get(k, empty), warped_masks.get(k, empty)
        entry = {"dice": dice(a, b)}
        if hd95:
            entry["hd95_mm"] = hd95_mm(a, b, spacing_mm)
        per_label[k] = entry
    dices = [v["dice"] for v in per_label.values() if not math.isnan(v["dice"])]
    out = {"dice": float(np.mean(dices)) if dices else math.nan, "per_label": per_label}
    if hd95:
        hds = [v["hd95_mm"] for v in per_label.values() if math.isfinite(v["hd95_mm"])]
        out["hd95_mm"] = float(np.mean(hds)) if hds else math.nan
    return out


def folding_percent(ddf_voxel: torch.Tensor, *, mask=None) -> float:
    """Percentage (0-100) of voxels with a non-positive Jacobian determinant; see
    :func:`monai_inr_reg.core.fields.folding_fraction`."""
    return 100.0 * float(folding_fraction(torch.as_tensor(ddf_voxel), mask=mask))
