"""ITK images <-> tensors and grids, and the one MONAI voxel DDF <-> ITK displacement image conversion."""

from __future__ import annotations

import numpy as np
import torch

from ..core.grid import ImageGrid, as_mm_from_voxel, ddf_mm_from_ddf_voxel, ddf_voxel_from_ddf_mm

__all__ = ["grid_from_image", "image_to_tensor", "tensor_to_image", "field_image_from_ddf", "ddf_from_field_image"]


def _itk():
    import itk  # lazy: the first use of itk costs seconds

    return itk


def _check_itk_image(image, caller: str, name: str) -> None:
    if not (hasattr(image, "GetImageDimension") and hasattr(image, "GetNumberOfComponentsPerPixel")):
        raise TypeError(f"{caller}: '{name}' must be an itk.Image, got {type(image).__name__}")
    ndim = int(image.GetImageDimension())
    if ndim not in (2, 3):
        raise ValueError(f"{caller}: '{name}' must be a 2D or 3D image, got {ndim}D")


def grid_from_image(image, *, name: str = "image", caller: str = "grid_from_image()") -> ImageGrid:
    """The :class:`ImageGrid` of an ITK image (any pixel type): ``mm_from_voxel`` from origin, spacing, direction.

    ``mm_from_voxel = [[direction @ diag(spacing), origin], [0, 1]]``, LPS mm, voxel index in ITK
    order (x, y, z).

    Raises:
        ValueError: non-positive spacing, non-finite geometry or a singular direction matrix.
    """
    itk = _itk()
    ndim = int(image.GetImageDimension())
    size = tuple(int(s) for s in image.GetLargestPossibleRegion().GetSize())
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    direction = np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=np.float64)
    if not (np.isfinite(spacing).all() and np.isfinite(origin).all() and np.isfinite(direction).all()):
        raise ValueError(f"{caller}: '{name}' has non-finite geometry: origin {origin.tolist()}, "
                         f"spacing {spacing.tolist()}, direction {direction.tolist()}")
    if (spacing <= 0).any():
        raise ValueError(f"{caller}: '{name}' must have positive spacing, got {spacing.tolist()}")
    det = float(np.linalg.det(direction))
    if abs(det) < 1e-6:
        raise ValueError(f"{caller}: '{name}' has a singular direction matrix (determinant {det:.3g}): "
                         f"{direction.tolist()}")
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = direction * spacing[None, :]
    matrix[:ndim, ndim] = origin
    return ImageGrid(size, as_mm_from_voxel(torch.from_numpy(matrix), ndim, name=f"'{name}' geometry"))


def _set_geometry(image, grid: ImageGrid) -> None:
    """Give an ITK image the origin, spacing and direction of ``grid``."""
    itk = _itk()
    origin, spacing, direction = grid.itk_geometry()
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))


def image_to_tensor(image, *, name: str = "image") -> tuple[torch.Tensor, ImageGrid]:
    """An ITK image -> a channel-first ``(C, *S)`` float32 tensor and its grid.

    Args:
        image: ``itk.Image`` of any scalar, RGB(A) or vector pixel type, 2D or 3D.
        name: how error messages call the argument (``"fixed"``, ``"moving"``).

    Returns:
        ``(tensor, grid)``: ``tensor`` ``(C, *S)`` float32 (``C`` = components per pixel: 1 for
        scalar images, 3 for RGB) with array axes in ITK index order (x, y, z), i.e. the transpose
        of ``itk.array_view_from_image``; ``grid`` its :class:`ImageGrid` (LPS mm from origin,
        spacing and direction). :func:`monai_inr_reg.inputs.as_image_and_grid` turns colour into
        luminance and refuses several channels in 3D.

    Raises:
        TypeError: not an ITK image.
        ValueError: not 2D or 3D, NaN voxels, bad geometry.
    """
    itk = _itk()
    caller = "image_to_tensor()"
    _check_itk_image(image, caller, name)
    components = int(image.GetNumberOfComponentsPerPixel())
    grid = grid_from_image(image, name=name, caller=caller)
    array = np.asarray(itk.array_view_from_image(image), dtype=np.float32)
    nan = int(np.isnan(array).sum())
    if nan:
        raise ValueError(f"{caller}: '{name}' has {nan} NaN voxels out of {array.size}")
    # (z, y, x[, C]) -> (C, x, y, z)
    array = array.reshape(grid.shape[::-1] + (components,))
    tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0).transpose(0, *range(grid.ndim, 0, -1))))
    return tensor, grid


def tensor_to_image(tensor: torch.Tensor, grid: ImageGrid, *, name: str = "tensor"):
    """A ``(1, *S)`` tensor on ``grid`` -> a float32 ``itk.Image`` with the grid's origin, spacing, direction.

    Args:
        tensor: ``(1, *S)`` (or ``(*S)``), array axes in ITK index order (x, y, z).
        grid: its :class:`ImageGrid` (LPS mm).

    Raises:
        ValueError: more than one channel, or a shape that does not match ``grid``.
    """
    itk = _itk()
    data = torch.as_tensor(tensor).detach().cpu()
    if data.ndim == grid.ndim:
        data = data[None]
    if data.ndim != grid.ndim + 1 or data.shape[0] != 1 or tuple(data.shape[1:]) != grid.shape:
        raise ValueError(f"tensor_to_image(): '{name}' must have shape (1, {', '.join(map(str, grid.shape))}) "
                         f"to match the grid, got {tuple(data.shape)}")
    array = np.ascontiguousarray(data[0].to(torch.float32).numpy().transpose())
    image = itk.image_from_array(array)
    _set_geometry(image, grid)
    return image


def field_image_from_ddf(ddf_voxel: torch.Tensor, grid: ImageGrid, *, dtype: str = "float64"):
    """MONAI voxel DDF on ``grid`` -> ITK displacement image (the one conversion; see also the reverse).

    Args:
        ddf_voxel: ``(D, *S)`` voxel units along ``grid``'s array axes (MONAI convention).
        grid: the grid the field lives on (LPS mm).
        dtype: ``"float64"`` (``itk.Image[itk.Vector[itk.D, D], D]``, what
            ``itk.DisplacementFieldTransform[itk.D, D]`` takes) or ``"float32"`` (for NIfTI files).

    Returns:
        ``itk.Image`` of vectors on ``grid`` (its origin, spacing, direction): the displacement in
        LPS mm, components (x, y, z), point ``p`` -> ``p + field(p)``.
    """
    itk = _itk()
    d = grid.ndim
    if tuple(ddf_voxel.shape) != (d,) + grid.shape:
        raise ValueError(f"field_image_from_ddf(): 'ddf_voxel' must have shape {(d,) + grid.shape} to match the grid, "
                         f"got {tuple(ddf_voxel.shape)}")
    component = {"float64": itk.D, "float32": itk.F}[dtype]
    ddf_mm = ddf_mm_from_ddf_voxel(ddf_voxel.detach().cpu().to(torch.float64), grid.mm_from_voxel)
    # (D, x, y, z) -> ITK buffer order (z, y, x, D)
    array = ddf_mm.permute(*range(d, 0, -1), 0).numpy()
    field = itk.Image[itk.Vector[component, d], d].New()
    field.SetRegions([int(s) for s in grid.shape])
    field.Allocate()
    # the buffer is filled in place: itk.image_from_array cannot duplicate double-vector images
    itk.array_view_from_image(field)[...] = array
    _set_geometry(field, grid)
    return field


def ddf_from_field_image(field) -> tuple[torch.Tensor, ImageGrid]:
    """ITK displacement image -> ``(ddf_voxel, grid)``; the inverse of :func:`field_image_from_ddf`.

    Args:
        field: ``itk.Image`` of ``D``-vectors (LPS mm, components (x, y, z)), e.g. read from a
            ``.nii.gz`` / ``.mha`` warp or ``DisplacementFieldTransform.GetDisplacementField()``.

    Returns:
        ``ddf_voxel`` ``(D, *S)`` float64, voxel units along the field grid's array axes, and that grid.
    """
    itk = _itk()
    caller = "ddf_from_field_image()"
    _check_itk_image(field, caller, "field")
    d = int(field.GetImageDimension())
    if int(field.GetNumberOfComponentsPerPixel()) != d:
        raise ValueError(f"{caller}: 'field' must have {d} components per pixel (a {d}D displacement), "
                         f"got {int(field.GetNumberOfComponentsPerPixel())}")
    grid = grid_from_image(field, name="field", caller=caller)
    array = np.asarray(itk.array_view_from_image(field), dtype=np.float64).reshape(grid.shape[::-1] + (d,))
    ddf_mm = torch.from_numpy(np.ascontiguousarray(array)).permute(d, *range(d - 1, -1, -1))
    return ddf_voxel_from_ddf_mm(ddf_mm, grid.mm_from_voxel), grid
