"""Transform files for ITK (.h5, .tfm), ANTs (displacement NIfTI, .mat) and elastix (parameter files)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..core.grid import ImageGrid, ddf_voxel_from_ddf_mm
from ..io import read_transform
from .h5 import affine_part, field_part, write_transform_h5
from .images import _itk, field_image_from_ddf
from .transforms import (_ddf_mm64, _field_transform, _is_identity, _matrix64, _matrix_transform, _residual_ddf_mm,
                         inverse_ddf_mm, transform_from_result)

__all__ = ["read_transform", "save_result"]

_FORMATS = ("h5", "tfm", "nii", "elastix")


class _StagedFiles:
    """Several files written as one: each to its own :func:`~monai_inr_reg.atomic.atomic_path`, all
    renamed into place when the block succeeds, all removed on any error (no final file touched)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.stack = ExitStack()
        self.staged: dict[str, tuple[Path, Path]] = {}

    def path(self, key: str, filename: str) -> str:
        final = self.directory / filename
        self.staged[key] = (self.stack.enter_context(atomic_path(final)), final)
        return str(self.staged[key][0])

    def __enter__(self):
        self.stack.__enter__()
        return self

    def __exit__(self, kind, error, trace):
        return self.stack.__exit__(kind, error, trace)

    def final(self, key: str) -> Path:
        return self.staged[key][1]

    def result(self) -> dict[str, Path]:
        return {key: final for key, (_, final) in self.staged.items()}


def _elastix_grid(grid: ImageGrid) -> dict[str, list[str]]:
    """The output-grid entries of an elastix parameter map (``Direction`` is column by column)."""
    d = grid.ndim
    linear = grid.mm_from_voxel[:d, :d].numpy()
    spacing = np.linalg.norm(linear, axis=0)
    numbers = lambda values: [repr(float(v)) for v in values]  # noqa: E731
    return {
        "FixedImageDimension": [str(d)], "MovingImageDimension": [str(d)],
        "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
        "Size": [str(s) for s in grid.shape], "Index": ["0"] * d, "Spacing": numbers(spacing),
        "Origin": numbers(grid.mm_from_voxel[:d, d]), "Direction": numbers((linear / spacing[None, :]).T.reshape(-1)),
        "UseDirectionCosines": ["true"], "ResampleInterpolator": ["FinalLinearInterpolator"],
        "FinalBSplineInterpolationOrder": ["1"], "Resampler": ["DefaultResampler"], "DefaultPixelValue": ["0"],
        "ResultImagePixelType": ["float"], "HowToCombineTransforms": ["Compose"],
    }


def _write_parameter_file(parameters: dict[str, list[str]], path: str) -> None:
    """Write an elastix parameter map as text: ``(Key value ...)``, strings quoted, numbers not."""
    def word(value: str) -> str:
        try:
            float(value)
            return value
        except ValueError:
            return f'"{value}"'

    with open(path, "w", encoding="utf-8") as handle:
        for key, values in parameters.items():
            handle.write(f"({key} {' '.join(word(v) for v in values)})\n")


def _write_elastix_parameters(result, matrix: torch.Tensor, files: "_StagedFiles", prefix: str) -> None:
    """Transformix parameter files: a ``DeformationFieldTransform`` on ``warp.nii.gz``, then the matrix stage.

    Elastix applies the initial transform (``TransformParameters.0.txt``) to the points first,
    like the composite transform; the file names inside are absolute final paths.
    """
    d = result.ndim
    common = _elastix_grid(result.fixed_grid)
    maps = []
    if not result.parametric:
        warp = files.final("warp_nii").resolve()
        maps.append(dict(common, Transform=["DeformationFieldTransform"], NumberOfParameters=["0"],
                         DeformationFieldFileName=[str(warp)], DeformationFieldInterpolationOrder=["1"]))
    if result.parametric or not _is_identity(matrix):
        values = list(matrix[:d, :d].reshape(-1)) + list(matrix[:d, d])  # row-major matrix, then offset
        maps.append(dict(common, Transform=["AffineTransform"], NumberOfParameters=[str(d * d + d)],
                         TransformParameters=[repr(float(v)) for v in values], CenterOfRotationPoint=["0"] * d))
    initial = "NoInitialTransform"
    for index, parameters in enumerate(maps):
        key = "elastix" if index == len(maps) - 1 else "elastix_initial"
        path = files.path(key, f"{prefix}TransformParameters.{index}.txt")
        _write_parameter_file(dict(parameters, InitialTransformParametersFileName=[initial]), path)
        initial = str(files.final(key).resolve())


def save_result(result, directory, *, prefix: str = "", formats=("h5",), inverse: bool = False,
                precision: str = "float32", compression: bool = True) -> dict[str, Path]:
    """Write a registration result as transform files that ITK, ANTs and elastix read.

    Files (``prefix`` before each name), all fixed -> moving unless called inverse:

    - ``"h5"`` -> ``transform.h5`` (:mod:`monai_inr_reg.itk_bridge.h5`, without loading ITK; the
      matrix stage as an ``AffineTransform``) and ``"tfm"`` -> ``transform.tfm``
      (:func:`transform_from_result` via ``itk.transformwrite``): read back with
      ``itk.transformread`` or :func:`read_transform`; ANTs reads the ``.h5`` too. A ``.tfm`` of a field is text, about 20 bytes per component
      (382 MB for a 160 x 192 x 224 field): ask for it only when a tool needs text.
    - ``"nii"`` -> the ANTs files: ``warp.nii.gz``, the (residual) field on the fixed grid as an
      ANTs displacement NIfTI (5-D ``(X, Y, Z, 1, 3)``, intent vector (1007), float32, LPS mm
      displacements, the fixed image's affine), and ``affine.mat`` for a matrix stage (ITK's
      Matlab format, ``AffineTransform_double_D_D``, that ``antsApplyTransforms`` reads). Apply
      them as SyN's ``[1Warp, 0GenericAffine]``:
      ``ants.apply_transforms(fixed, moving, transformlist=[warp.nii.gz, affine.mat])``.
      A result without a matrix stage writes no ``.mat``, a parametric one no warp.
    - ``"elastix"`` (not written by default) -> ``TransformParameters.0.txt`` [and ``.1.txt``] for
      transformix: a ``DeformationFieldTransform`` reading ``warp.nii.gz`` (also written), then
      the matrix stage as an ``AffineTransform``; give the last one to ``transformix -tp`` (it
      names the first as its initial transform, by absolute path) or add both, in order, to an
      ``itk.ParameterObject``. The output grid in them is the fixed grid.
    - ``inverse=True`` (moving -> fixed, to bring fixed points or labels onto the moving image):
      ``inverse.h5`` / ``inverse.tfm`` (and ``inverse_warp.nii.gz`` for ``"nii"``): the exact
      inverse matrix for a parametric result (ANTs: invert ``affine.mat`` with ``whichtoinvert``),
      else the total inverse field on the moving grid from :func:`inverse_ddf_mm` (its accuracy is
      stated there), applied alone: ``ants.apply_transforms(moving, fixed, [inverse_warp.nii.gz])``.

    Every file is written to a temporary name in ``directory`` and renamed into place once all are
    written, so a failure leaves no partial output.

    Args:
        result: a :class:`~monai_inr_reg.result.RegistrationResult`.
        directory: output folder (created if missing).
        prefix: prepended to every file name.
        formats: any of ``"h5"``, ``"tfm"``, ``"nii"``, ``"elastix"`` (default: ``.h5`` only).
        inverse: also write the inverse transform (computed only then; default no).
        precision: ``"float32"`` (default) or ``"float64"``: the field values in the ``.h5`` (ITK
            stores doubles; float32-rounded ones compress to about half). Matrices stay exact;
            the ``.tfm`` is float64 and the ANTs warp NIfTI float32 either way.
        compression: compress the ``.h5`` fields (HDF5's shuffle + gzip, which ITK reads).

    Returns:
        ``{key: path}`` with keys among ``h5, tfm, warp_nii, affine_mat, elastix, elastix_initial,
        inverse_h5, inverse_tfm, inverse_warp_nii``.

    Raises:
        ValueError: unknown format, or ``directory`` is a file.
    """
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in _FORMATS]
    if unknown or not formats:
        raise ValueError(f"save_result(): 'formats' must be a non-empty selection of {_FORMATS}, got {formats!r}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"save_result(): 'directory' {str(directory)!r} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)

    matrix = _matrix64(result)
    inverse_ddf = None if (result.parametric or not inverse) else inverse_ddf_mm(result)
    with _StagedFiles(directory) as files:
        if "h5" in formats:  # written without ITK: loading ITK's modules costs more than a 2D registration
            write_transform_h5(files.path("h5", f"{prefix}transform.h5"), _h5_parts(result, matrix, precision),
                               compression=compression)
            if inverse:
                write_transform_h5(files.path("inverse_h5", f"{prefix}inverse.h5"),
                                   _inverse_h5_parts(result, matrix, inverse_ddf, precision), compression=compression)
        if "tfm" in formats:
            itk = _itk()
            itk.transformwrite([transform_from_result(result)], files.path("tfm", f"{prefix}transform.tfm"))
            if inverse:
                inverse_transform = (_matrix_transform(torch.linalg.inv(matrix), result.moving_grid.center_mm())
                                     if result.parametric else _field_transform(inverse_ddf, result.moving_grid))
                itk.transformwrite([inverse_transform], files.path("inverse_tfm", f"{prefix}inverse.tfm"))
        if "nii" in formats and (result.parametric or not _is_identity(matrix)):
            itk = _itk()
            affine = itk.AffineTransform[itk.D, result.ndim].New()  # ANTs reads AffineTransform_double_D_D
            affine.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(matrix[:-1, :-1].numpy())))
            affine.SetOffset([float(v) for v in matrix[:-1, -1]])
            itk.transformwrite([affine], files.path("affine_mat", f"{prefix}affine.mat"))
        if not result.parametric and ("nii" in formats or "elastix" in formats):
            grid = result.fixed_grid
            warp = _ddf_mm64(result) if _is_identity(matrix) else _residual_ddf_mm(result)
            field = field_image_from_ddf(ddf_voxel_from_ddf_mm(warp, grid.mm_from_voxel), grid, dtype="float32")
            _itk().imwrite(field, files.path("warp_nii", f"{prefix}warp.nii.gz"))
            if inverse_ddf is not None and "nii" in formats:
                grid = result.moving_grid
                field = field_image_from_ddf(ddf_voxel_from_ddf_mm(inverse_ddf, grid.mm_from_voxel), grid,
                                             dtype="float32")
                _itk().imwrite(field, files.path("inverse_warp_nii", f"{prefix}inverse_warp.nii.gz"))
        if "elastix" in formats:
            _write_elastix_parameters(result, matrix, files, prefix)
    return files.result()


def _h5_parts(result, matrix: torch.Tensor, precision: str) -> list:
    """The parts of :func:`transform_from_result`'s transform, as :func:`write_transform_h5` takes them."""
    center = result.fixed_grid.center_mm()
    if result.parametric:
        return [affine_part(matrix, center)]
    if _is_identity(matrix):
        return [field_part(_ddf_mm64(result), result.fixed_grid, precision=precision)]
    return [affine_part(matrix, center), field_part(_residual_ddf_mm(result), result.fixed_grid, precision=precision)]


def _inverse_h5_parts(result, matrix: torch.Tensor, inverse_ddf, precision: str) -> list:
    if result.parametric:
        return [affine_part(torch.linalg.inv(matrix), result.moving_grid.center_mm())]
    return [field_part(inverse_ddf, result.moving_grid, precision=precision)]
