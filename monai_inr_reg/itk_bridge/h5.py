"""ITK's HDF5 transform file (``.h5``) written directly with h5py, without loading ITK.

Loading ITK's transform and IO modules costs 7-9 s per process (measured: 2.4 s for the first
transform type, 5.7 s for the first ``itk.transformwrite``), longer than a 2D registration; this
writer takes milliseconds plus the compression. It writes the layout ``itk.transformwrite`` does
(ITK 5.4: ``/TransformGroup/<i>/TransformType``, ``TransformParameters``,
``TransformFixedParameters``; a composite as group 0 followed by its parts in ITK's order), so
``itk.transformread``, ``antsApplyTransforms`` and ``ants.read_transform`` read it; the tests read
every kind back with ITK and ANTs.

What it holds is :func:`~monai_inr_reg.itk_bridge.transforms.transform_from_result`'s transform:
a matrix stage as an ``AffineTransform`` (its parameters: the matrix row by row, then the
translation; fixed parameters: the centre), a field as a ``DisplacementFieldTransform`` (its
parameters: the LPS mm displacements in ITK's buffer order (z, y, x, component); fixed
parameters: size, origin, spacing, direction row by row), and both as a ``CompositeTransform``
``[matrix, field]`` (ITK applies the field first).
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..core.grid import ImageGrid

__all__ = ["write_transform_h5", "affine_part", "field_part"]


def affine_part(matrix: torch.Tensor, center_mm: torch.Tensor) -> tuple[str, np.ndarray, np.ndarray]:
    """An ``AffineTransform`` part for a ``(D + 1, D + 1)`` LPS mm matrix (fixed -> moving), about ``center_mm``."""
    m = matrix.detach().cpu().to(torch.float64).numpy()
    c = center_mm.detach().cpu().to(torch.float64).numpy()
    d = m.shape[0] - 1
    linear, offset = m[:d, :d], m[:d, d]
    translation = offset - c + linear @ c  # ITK: T(x) = A (x - c) + c + t
    return f"AffineTransform_double_{d}_{d}", np.concatenate([linear.reshape(-1), translation]), c


def field_part(ddf_mm: torch.Tensor, grid: ImageGrid, *, precision: str = "float32") -> tuple[str, np.ndarray, np.ndarray]:
    """A ``DisplacementFieldTransform`` part for a ``(D, *S)`` LPS mm field on ``grid``.

    ``precision="float32"`` rounds the values to single precision (stored as ITK's doubles, they
    then compress to about half: the low bits are zero).
    """
    d = grid.ndim
    if tuple(ddf_mm.shape) != (d,) + grid.shape:
        raise ValueError(f"field_part(): 'ddf_mm' must have shape {(d,) + grid.shape}, got {tuple(ddf_mm.shape)}")
    values = ddf_mm.detach().cpu().to(torch.float64)
    if precision == "float32":
        values = values.to(torch.float32).to(torch.float64)
    elif precision != "float64":
        raise ValueError(f"field_part(): 'precision' must be 'float32' or 'float64', got {precision!r}")
    # (D, x, y, z) -> ITK's buffer (z, y, x, D), flattened
    parameters = values.permute(*range(d, 0, -1), 0).contiguous().numpy().reshape(-1)
    linear = grid.mm_from_voxel[:d, :d].numpy()
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing[None, :]
    fixed = np.concatenate([np.asarray(grid.shape, dtype=np.float64), grid.mm_from_voxel[:d, d].numpy(), spacing,
                            direction.reshape(-1)])
    return f"DisplacementFieldTransform_double_{d}_{d}", parameters, fixed


def write_transform_h5(path, parts: list[tuple[str, np.ndarray, np.ndarray]], *, compression: bool = True) -> Path:
    """Write ``parts`` (``(type name, parameters, fixed parameters)``, in ITK's order) as one ITK ``.h5``
    transform: the part itself, or a ``CompositeTransform`` of them when there are several.

    Large parameter arrays are chunked, byte-shuffled and gzip-compressed when ``compression``.
    """
    import h5py

    d = int(parts[0][0].rsplit("_", 1)[-1])
    strings = h5py.string_dtype(encoding="ascii")
    entries = ([(f"CompositeTransform_double_{d}_{d}", None, None)] if len(parts) > 1 else []) + list(parts)
    with h5py.File(path, "w") as h5:
        for name, text in (("HDFVersion", f"HDF5 library version: {h5py.version.hdf5_version}"),
                           ("ITKVersion", f"monai_inr_reg {__version__}, ITK 5.4 layout"), ("OSName", platform.system()),
                           ("OSVersion", platform.release())):
            h5.create_dataset(name, data=np.array([text.encode()], dtype=object), dtype=strings)
        for index, (kind, parameters, fixed) in enumerate(entries):
            group = h5.create_group(f"TransformGroup/{index}")
            group.create_dataset("TransformType", data=np.array([kind.encode()], dtype=object), dtype=strings)
            if parameters is None:
                continue
            group.create_dataset("TransformFixedParameters", data=np.asarray(fixed, dtype=np.float64))
            big = compression and parameters.size > 4096
            # byte shuffle + gzip level 1: a brain-sized float32-rounded field in 1.7 s to 56 MB
            # (gzip 5 without shuffle, ITK's choice: 4.1 s, 73 MB); both are HDF5 built-ins ITK reads
            group.create_dataset("TransformParameters", data=np.asarray(parameters, dtype=np.float64),
                                 chunks=(min(parameters.size, 1 << 20),) if big else None, shuffle=big,
                                 compression="gzip" if big else None, compression_opts=1 if big else None)
    return Path(path)
