"""ITK interface: ``itk.Image`` in, ITK transforms out, and the files ITK, ANTs and elastix read.

Frames (see :mod:`monai_inr_reg.core.grid`): ITK physical space is LPS millimetres, components
(x, y, z); an image tensor here is ``(1, *S)`` with array axes in ITK index order (x, y, z), i.e.
the transpose of ``itk.array_view_from_image`` (which is (z, y, x)). Every transform maps **fixed
points to moving points** (the resampling direction of ``itk.ResampleImageFilter``).

What :func:`transform_from_result` returns for a :class:`~monai_inr_reg.result.RegistrationResult`:

- ``parametric`` and a rotation matrix: ``itk.Euler2DTransform`` / ``itk.Euler3DTransform``;
- ``parametric`` otherwise: ``itk.AffineTransform``;
- a field and an identity matrix stage: ``itk.DisplacementFieldTransform[itk.D, D]``;
- a field and a matrix stage ``A``: ``itk.CompositeTransform`` holding ``[A, field]``. ITK applies
  the LAST added transform first, so a fixed point ``x`` goes ``x -> x + r(x) -> A(x + r(x))``;
  for that to equal ``phi(x) = x + ddf_mm(x)`` the stored field is the residual
  ``r(x) = A_lin^-1 (phi(x) - A x)`` on the fixed grid. This is ANTs' own layout (SyN's
  ``1Warp.nii.gz`` is applied before ``0GenericAffine.mat`` and lives on the fixed grid), keeps the
  matrix stage exact and readable, and is exact at every fixed voxel (where ITK resamples).

The conversion between MONAI's voxel DDF and ITK's physical displacement image lives in one
pair of functions, :func:`field_image_from_ddf` / :func:`ddf_from_field_image`; everything here
calls them. ``itk`` is imported inside functions: its first use costs seconds.
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

from .core.grid import ImageGrid, apply_affine, as_mm_from_voxel, ddf_mm_from_ddf_voxel, ddf_voxel_from_ddf_mm
from .core.sample import sample_image

__all__ = [
    "image_to_tensor",
    "tensor_to_image",
    "register_itk",
    "transform_from_result",
    "field_image_from_ddf",
    "ddf_from_field_image",
    "inverse_ddf_mm",
    "save_result",
    "read_transform",
]

_FORMATS = ("h5", "tfm", "nii")
_ROTATION_TOLERANCE = 1e-6  # max |R^T R - I| for a matrix stage to be written as an Euler transform


# --------------------------------------------------------------------------- images


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
    d = grid.ndim
    linear = grid.mm_from_voxel[:d, :d].numpy()
    spacing = np.linalg.norm(linear, axis=0)
    image.SetOrigin([float(v) for v in grid.mm_from_voxel[:d, d]])
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(linear / spacing[None, :])))


def image_to_tensor(image, *, name: str = "image") -> tuple[torch.Tensor, ImageGrid]:
    """An ITK scalar image -> a ``(1, *S)`` float32 tensor and its grid.

    Args:
        image: ``itk.Image`` of any scalar pixel type, 2D or 3D.
        name: how error messages call the argument (``"fixed"``, ``"moving"``).

    Returns:
        ``(tensor, grid)``: ``tensor`` ``(1, *S)`` float32 with array axes in ITK index order
        (x, y, z), i.e. the transpose of ``itk.array_view_from_image``; ``grid`` its
        :class:`ImageGrid` (LPS mm from origin, spacing and direction).

    Raises:
        TypeError: not an ITK image.
        ValueError: vector / RGB pixels, not 2D or 3D, NaN voxels, bad geometry.
    """
    itk = _itk()
    caller = "image_to_tensor()"
    _check_itk_image(image, caller, name)
    components = int(image.GetNumberOfComponentsPerPixel())
    if components != 1:
        raise ValueError(f"{caller}: '{name}' must be a scalar image, got {components} components per pixel "
                         f"({type(image).__name__}); select or combine channels first")
    grid = grid_from_image(image, name=name, caller=caller)
    array = np.asarray(itk.array_view_from_image(image), dtype=np.float32)
    nan = int(np.isnan(array).sum())
    if nan:
        raise ValueError(f"{caller}: '{name}' has {nan} NaN voxels out of {array.size}")
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose()))[None]
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


# --------------------------------------------------------------------------- fields


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


def _ddf_mm64(result) -> torch.Tensor:
    """``result``'s total displacement ``(D, *S_fixed)`` in LPS mm, float64."""
    return ddf_mm_from_ddf_voxel(result.ddf.detach().cpu().to(torch.float64), result.fixed_grid.mm_from_voxel)


def _matrix64(result) -> torch.Tensor:
    return as_mm_from_voxel(result.matrix_mm, result.ndim, name="RegistrationResult.matrix_mm")


def _residual_ddf_mm(result) -> torch.Tensor:
    """The field applied before the matrix stage: ``r(x) = A_lin^-1 (phi(x) - A x)``, ``(D, *S_fixed)`` LPS mm."""
    d = result.ndim
    matrix = _matrix64(result)
    x = result.fixed_grid.mm_points(dtype=torch.float64)
    phi = x + _ddf_mm64(result).reshape(d, -1).T
    residual = (phi - apply_affine(matrix, x)) @ torch.linalg.inv(matrix[:d, :d]).T
    return residual.T.reshape((d,) + result.fixed_grid.shape)


def _is_identity(matrix: torch.Tensor) -> bool:
    return bool(torch.allclose(matrix, torch.eye(matrix.shape[0], dtype=matrix.dtype), rtol=0.0, atol=1e-12))


def _is_rotation(linear: torch.Tensor) -> bool:
    eye = torch.eye(linear.shape[0], dtype=linear.dtype)
    return bool((linear.T @ linear - eye).abs().max() < _ROTATION_TOLERANCE and torch.linalg.det(linear) > 0)


# --------------------------------------------------------------------------- transforms


def _matrix_transform(matrix: torch.Tensor, center_mm: torch.Tensor):
    """A ``(D + 1, D + 1)`` LPS mm map -> ``itk.Euler{2,3}DTransform`` (a rotation) or ``itk.AffineTransform``.

    The centre of rotation is ``center_mm`` (the fixed image centre, for readable parameters);
    the map is the same whatever the centre.
    """
    itk = _itk()
    d = matrix.shape[0] - 1
    linear = matrix[:d, :d].numpy()
    if _is_rotation(matrix[:d, :d]):
        transform = (itk.Euler2DTransform[itk.D] if d == 2 else itk.Euler3DTransform[itk.D]).New()
        transform.SetCenter([float(v) for v in center_mm])
        transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(linear)), _ROTATION_TOLERANCE)
    else:
        transform = itk.AffineTransform[itk.D, d].New()
        transform.SetCenter([float(v) for v in center_mm])
        transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(linear)))
    transform.SetOffset([float(v) for v in matrix[:d, d]])  # last: keeps the centre, sets the translation
    return transform


def _field_transform(ddf_mm: torch.Tensor, grid: ImageGrid):
    itk = _itk()
    transform = itk.DisplacementFieldTransform[itk.D, grid.ndim].New()
    transform.SetDisplacementField(field_image_from_ddf(ddf_voxel_from_ddf_mm(ddf_mm, grid.mm_from_voxel), grid))
    return transform


def transform_from_result(result):
    """The ITK transform of a registration result (fixed LPS mm point -> moving LPS mm point).

    Args:
        result: a :class:`~monai_inr_reg.result.RegistrationResult`.

    Returns:
        ``itk.Euler2DTransform`` / ``itk.Euler3DTransform`` [double] for a parametric rotation,
        ``itk.AffineTransform[itk.D, D]`` for another parametric matrix,
        ``itk.DisplacementFieldTransform[itk.D, D]`` (field on the fixed grid: the fixed image's
        origin, spacing and direction, LPS mm) when there is no matrix stage, and otherwise an
        ``itk.CompositeTransform[itk.D, D]`` ``[matrix, residual field]`` (see the module docstring
        for why the residual is ``A_lin^-1 (phi(x) - A x)``). At every fixed voxel ``x``,
        ``TransformPoint(x)`` equals ``x + result.ddf_mm(x)`` to float64 rounding.
    """
    matrix = _matrix64(result)
    center = result.fixed_grid.center_mm()
    if result.parametric:
        return _matrix_transform(matrix, center)
    if _is_identity(matrix):
        return _field_transform(_ddf_mm64(result), result.fixed_grid)
    itk = _itk()
    composite = itk.CompositeTransform[itk.D, result.ndim].New()
    composite.AddTransform(_matrix_transform(matrix, center))  # applied second
    composite.AddTransform(_field_transform(_residual_ddf_mm(result), result.fixed_grid))  # applied first
    return composite


def _sample_extended(field: torch.Tensor, grid: ImageGrid, points_mm: torch.Tensor) -> torch.Tensor:
    """Sample a ``(D, *S)`` field on ``grid`` at ``points_mm`` ``(P, D)``, linear, border value repeated outside.

    Inside the grid this is ``DisplacementFieldTransform``'s linear interpolation. Outside, ITK
    uses zero displacement (from half a voxel beyond the border), which makes the mapping jump
    there; the inversion uses the border value instead, so that it stays continuous and
    invertible. Returns ``(P, D)`` in the field's dtype.
    """
    voxel = grid.mm_to_voxel(points_mm.to(torch.float64))
    return sample_image(field, voxel.to(field.dtype), padding_mode="border")


def inverse_ddf_mm(result, *, iterations: int = 50, tolerance_voxel: float = 1e-3) -> torch.Tensor:
    """The inverse motion on the **moving** grid: moving point ``y`` -> fixed point ``y + psi(y)``.

    Solves ``phi(x) = y`` for every moving voxel centre ``y`` by the fixed-point iteration
    ``x <- A^-1 y - r(x)`` (``phi(x) = A (x + r(x))``, ``r`` the residual field, linearly
    interpolated and continued by its border value outside the fixed grid), which converges when the residual's displacement gradient has norm below 1 (a
    smooth, invertible warp). A parametric result is inverted exactly.

    Accuracy: the iteration stops when no point moves by more than ``tolerance_voxel`` (1e-3 fixed
    voxel by default); at the moving voxels ``|phi(y + psi(y)) - y|`` is then below 2e-3 fixed
    voxel (measured: 2e-4 for a 1.5 mm sinusoidal warp of 30 mm wavelength on a 1 mm grid). Between
    moving voxels ``psi`` is linearly interpolated (as ITK does), which adds interpolation error:
    fixed voxels sent ``p -> T(p) -> T(p) + psi(T(p))`` come back within 0.04 voxel for that
    warp (0.10 voxel on the outermost layer of fixed voxels, where the field is continued by its
    border value). Where the iteration has not converged (folding, or displacement gradients
    >= 1) a ``RuntimeWarning`` gives the worst residual.

    Args:
        result: a :class:`~monai_inr_reg.result.RegistrationResult`.
        iterations: maximum number of fixed-point steps.
        tolerance_voxel: stop when the largest update is below this, in fixed voxels.

    Returns:
        ``(D, *S_moving)`` float64, LPS mm, components (x, y, z).
    """
    d = result.ndim
    matrix = _matrix64(result)
    y = result.moving_grid.mm_points(dtype=torch.float64)
    z = apply_affine(torch.linalg.inv(matrix), y)  # = x + r(x)
    x = z
    if not result.parametric:
        residual = _residual_ddf_mm(result)
        voxel_mm = float(result.fixed_grid.spacing.min())
        change = float("inf")
        for _ in range(iterations):
            x_next = z - _sample_extended(residual, result.fixed_grid, x)
            change = float((x_next - x).norm(dim=1).max()) / voxel_mm
            x = x_next
            if change < tolerance_voxel:
                break
        error = float((x + _sample_extended(residual, result.fixed_grid, x) - z).norm(dim=1).max()) / voxel_mm
        if error > 10 * tolerance_voxel:
            warnings.warn(f"inverse_ddf_mm(): the inverse did not converge in {iterations} iterations: worst "
                          f"residual {error:.3g} fixed voxels (is the field folding?)", RuntimeWarning, stacklevel=2)
    return (x - y).T.reshape((d,) + result.moving_grid.shape)


def _inverse_transform(result):
    """Moving -> fixed ITK transform: the exact inverse matrix, or a field on the moving grid."""
    if result.parametric:
        return _matrix_transform(torch.linalg.inv(_matrix64(result)), result.moving_grid.center_mm())
    return _field_transform(inverse_ddf_mm(result), result.moving_grid)


# --------------------------------------------------------------------------- registration


def register_itk(fixed, moving, preset: str = "deformable", *, seed: int = 0, device=None, progress=None,
                 **overrides):
    """Register two ITK images; same keywords as :func:`monai_inr_reg.register`.

    Args:
        fixed: scalar ``itk.Image`` (2D or 3D, any spacing, origin, direction): the reference grid.
        moving: scalar ``itk.Image`` of the same dimension, on any grid.
        preset: ``"rigid"``, ``"affine"``, ``"deformable"``, ``"multimodal-rigid"`` or
            ``"multimodal-deformable"``.
        seed, device, progress, overrides: as for :func:`monai_inr_reg.register`.

    Returns:
        ``(transform, warped)``: the ITK transform fixed -> moving (see
        :func:`transform_from_result`) and the moving image warped onto the fixed grid as a
        float32 ``itk.Image`` with the fixed origin, spacing and direction.
        ``itk.resample_image_filter(moving, transform=transform, use_reference_image=True,
        reference_image=fixed)`` reproduces ``warped`` wherever the sample is inside ``moving``.

    Raises:
        ValueError: images of different dimension, vector images, NaN voxels, singular direction,
            unknown preset or override (all before any work).
    """
    from .config import load_preset
    from .register import register_on_grids

    for name, image in (("fixed", fixed), ("moving", moving)):
        _check_itk_image(image, "register_itk()", name)
    if int(fixed.GetImageDimension()) != int(moving.GetImageDimension()):
        raise ValueError(f"register_itk(): 'fixed' and 'moving' must have the same dimension, got "
                         f"{int(fixed.GetImageDimension())}D and {int(moving.GetImageDimension())}D")
    fixed_tensor, fixed_grid = image_to_tensor(fixed, name="fixed")
    moving_tensor, moving_grid = image_to_tensor(moving, name="moving")
    config = load_preset(preset, **overrides)
    result = register_on_grids(fixed_tensor, fixed_grid, moving_tensor, moving_grid, config,
                               seed=seed, device=device, progress=progress)
    return transform_from_result(result), tensor_to_image(result.warped.as_tensor(), result.fixed_grid,
                                                          name="warped")


# --------------------------------------------------------------------------- files


def read_transform(path):
    """Read one ITK transform file (``.h5``, ``.tfm``, ``.mat``, ``.txt``) written by :func:`save_result`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a transform ITK can read, or holds more than one transform.
    """
    itk = _itk()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_transform(): 'path' {str(path)!r} does not exist")
    try:
        transforms = itk.transformread(str(path))
    except Exception as error:  # ITK raises RuntimeError with a C++ trace
        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(f"read_transform(): {str(path)!r} is not a transform file ITK can read ({first})") from None
    if len(transforms) != 1:
        raise ValueError(f"read_transform(): {str(path)!r} holds {len(transforms)} transforms, expected 1; "
                         f"use itk.transformread for a list")
    return transforms[0]


class _StagedFiles:
    """Write every file to a temporary name in its final directory, then rename all into place.

    The temporary name keeps the final suffix (ITK picks the file format from it) and starts with
    a dot; on any error all temporaries are removed and no final file is touched.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.token = uuid.uuid4().hex[:8]
        self.staged: dict[str, tuple[Path, Path]] = {}

    def path(self, key: str, filename: str) -> str:
        final = self.directory / filename
        temporary = self.directory / f".partial-{self.token}-{filename}"
        self.staged[key] = (temporary, final)
        return str(temporary)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if error is not None:
            for temporary, _ in self.staged.values():
                temporary.unlink(missing_ok=True)
            return False
        for temporary, final in self.staged.values():
            if not temporary.is_file():
                raise OSError(f"save_result(): writing {final.name!r} produced no file")
            os.replace(temporary, final)
        return False

    def result(self) -> dict[str, Path]:
        return {key: final for key, (_, final) in self.staged.items()}


def save_result(result, directory, *, prefix: str = "", formats=_FORMATS, inverse: bool = True) -> dict[str, Path]:
    """Write a registration result as transform files that ITK, ANTs and elastix read.

    Files (``prefix`` before each name), all fixed -> moving unless called inverse:

    - ``"h5"`` -> ``transform.h5`` and ``"tfm"`` -> ``transform.tfm``: :func:`transform_from_result`
      via ``itk.transformwrite`` (read back with ``itk.transformread`` or :func:`read_transform`;
      ANTs reads the ``.h5`` too). A ``.tfm`` of a field is text, about 20 bytes per component.
    - ``"nii"`` -> the ANTs files: ``warp.nii.gz``, the (residual) field on the fixed grid as an
      ANTs displacement NIfTI (5-D ``(X, Y, Z, 1, 3)``, intent vector (1007), float32, LPS mm
      displacements, the fixed image's affine), and ``affine.mat`` for a matrix stage (ITK's
      Matlab format that ``antsApplyTransforms`` reads). Apply them with
      ``ants.apply_transforms(fixed, moving, transformlist=[affine.mat, warp.nii.gz])``: ANTs
      applies the last listed transform to the points first, like SyN's ``[1Warp, 0GenericAffine]``
      the other way round. A result without a matrix stage writes no ``.mat``, a parametric one no
      warp.
    - ``inverse=True`` (moving -> fixed, to bring fixed points or labels onto the moving image):
      ``inverse.h5`` / ``inverse.tfm`` (and ``inverse_warp.nii.gz`` for ``"nii"``): the exact
      inverse matrix for a parametric result, else the total inverse field on the moving grid
      from :func:`inverse_ddf_mm` (its accuracy is stated there).

    Every file is written to a temporary name in ``directory`` and renamed into place once all are
    written, so a failure leaves no partial output.

    Args:
        result: a :class:`~monai_inr_reg.result.RegistrationResult`.
        directory: output folder (created if missing).
        prefix: prepended to every file name.
        formats: any of ``"h5"``, ``"tfm"``, ``"nii"``.
        inverse: also write the inverse transform.

    Returns:
        ``{key: path}`` with keys among ``h5, tfm, warp_nii, affine_mat, inverse_h5, inverse_tfm,
        inverse_warp_nii``.
    """
    itk = _itk()
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in _FORMATS]
    if unknown or not formats:
        raise ValueError(f"save_result(): 'formats' must be a non-empty selection of {_FORMATS}, got {formats!r}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"save_result(): 'directory' {str(directory)!r} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)

    transform = transform_from_result(result)
    inverse_transform = _inverse_transform(result) if inverse else None
    matrix = _matrix64(result)
    with _StagedFiles(directory) as files:
        for ext in ("h5", "tfm"):
            if ext in formats:
                itk.transformwrite([transform], files.path(ext, f"{prefix}transform.{ext}"))
                if inverse_transform is not None:
                    itk.transformwrite([inverse_transform], files.path(f"inverse_{ext}", f"{prefix}inverse.{ext}"))
        if "nii" in formats:
            if result.parametric or not _is_identity(matrix):
                affine = itk.AffineTransform[itk.D, result.ndim].New()  # ANTs reads AffineTransform_double_D_D
                affine.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(matrix[:-1, :-1].numpy())))
                affine.SetOffset([float(v) for v in matrix[:-1, -1]])
                itk.transformwrite([affine], files.path("affine_mat", f"{prefix}affine.mat"))
            if not result.parametric:
                grid = result.fixed_grid
                warp = _residual_ddf_mm(result) if not _is_identity(matrix) else _ddf_mm64(result)
                field = field_image_from_ddf(ddf_voxel_from_ddf_mm(warp, grid.mm_from_voxel), grid, dtype="float32")
                itk.imwrite(field, files.path("warp_nii", f"{prefix}warp.nii.gz"))
                if inverse:
                    grid = result.moving_grid
                    # the inverse field of the h5 transform, written as float32 NIfTI
                    inverse_field = inverse_transform.GetDisplacementField()
                    ddf_voxel, _ = ddf_from_field_image(inverse_field)
                    itk.imwrite(field_image_from_ddf(ddf_voxel, grid, dtype="float32"),
                                files.path("inverse_warp_nii", f"{prefix}inverse_warp.nii.gz"))
    return files.result()
