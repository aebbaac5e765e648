"""Tiny synthetic registration pairs written to disk by the tests (no real data needed).

A scene of two nested ellipsoids (labels 1 and 2, smooth intensities) is sampled on two different
grids (size, spacing, origin); the moving scene is the fixed one shifted by ``shift_mm`` (RAS mm),
so ``moving(x) = scene(x - shift)`` and a registration must find the displacement ``+shift``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def grid_affine(ndim: int, spacing, origin) -> np.ndarray:
    """A 4x4 RAS affine (MONAI/nibabel keep 4x4 also for 2D) with diagonal spacing."""
    affine = np.eye(4)
    for axis in range(ndim):
        affine[axis, axis] = spacing[axis]
        affine[axis, 3] = origin[axis]
    return affine


def scene(points_ras: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Intensity and label of the scene at RAS points ``(..., ndim)``, scene centred on 0."""
    radii_outer = np.array([14.0, 10.0, 9.0][:ndim])
    radii_inner = np.array([6.0, 5.0, 4.0][:ndim])
    centre_inner = np.array([3.0, -2.0, 1.0][:ndim])
    r_outer = np.sqrt((((points_ras) / radii_outer) ** 2).sum(-1))
    r_inner = np.sqrt((((points_ras - centre_inner) / radii_inner) ** 2).sum(-1))
    intensity = 100.0 / (1 + np.exp((r_outer - 1) * 8)) + 80.0 / (1 + np.exp((r_inner - 1) * 8))
    label = np.where(r_inner < 1, 2, np.where(r_outer < 1, 1, 0)).astype(np.uint8)
    return intensity.astype(np.float32), label


def sample(shape, affine: np.ndarray, shift=None) -> tuple[np.ndarray, np.ndarray]:
    ndim = len(shape)
    index = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)
    points = index @ affine[:ndim, :ndim].T + affine[:ndim, 3]
    if shift is not None:
        points = points - np.asarray(shift, dtype=np.float64)
    return scene(points, ndim)


def write_pair(directory, ndim: int = 2, *, shift=(4.0, -3.0, 2.0), prefix: str = "", fixed_shape=None,
               moving_shape=None) -> dict:
    """Write fixed/moving images and labels as NIfTI on different grids; return their paths.

    Fixed: 1.5 mm voxels; moving: 1.25 mm voxels, other size and origin, content shifted by ``shift``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fixed_shape = fixed_shape or ((28, 24) if ndim == 2 else (22, 18, 16))
    moving_shape = moving_shape or ((34, 30) if ndim == 2 else (26, 22, 18))
    fixed_affine = grid_affine(ndim, [1.5] * ndim, [-(s - 1) * 0.75 for s in fixed_shape])
    moving_affine = grid_affine(ndim, [1.25] * ndim, [-(s - 1) * 0.625 + 1.0 for s in moving_shape])
    paths = {}
    for role, shape, affine, move in (("fixed", fixed_shape, fixed_affine, None),
                                      ("moving", moving_shape, moving_affine, shift[:ndim])):
        image, label = sample(shape, affine, move)
        paths[role] = directory / f"{prefix}{role}.nii.gz"
        paths[f"{role}_label"] = directory / f"{prefix}{role}_label.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(paths[role]))
        nib.save(nib.Nifti1Image(label, affine), str(paths[f"{role}_label"]))
    return {k: str(v) for k, v in paths.items()}


def write_datalist(directory, n_pairs: int, ndim: int = 2, **kwargs) -> Path:
    """Write ``n_pairs`` pairs under ``directory/data`` and a datalist with paths relative to ``directory``."""
    directory = Path(directory)
    pairs = []
    for index in range(n_pairs):
        shift = (4.0 - index, -3.0 + 0.5 * index, 2.0)
        paths = write_pair(directory / "data", ndim, shift=shift, prefix=f"case{index}_", **kwargs)
        pairs.append({k: str(Path(v).relative_to(directory)) for k, v in paths.items()})
    datalist = directory / "datalist.json"
    datalist.write_text(json.dumps({"pairs": pairs}, indent=1))
    return datalist
