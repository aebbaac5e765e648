"""Apply a saved transform later, as ``antsApplyTransforms`` does: a pair's transform -> warped image.

Adapter only: it finds and loads what :mod:`monai_inr_reg.pipeline` writes per pair
(``monai-inr-reg register``, ``batch``, the bundle): the MONAI field ``ddf.nii.gz`` when the pair
wrote one, else the ITK transform ``itk/transform.h5`` (the default output) evaluated on the fixed
grid (the reference's, or that of the pair's ``warped.nii.gz``). It checks the field against the
image and the reference, and delegates the warping to :class:`~monai_inr_reg.transforms.ApplyDdf`
(hence :meth:`RegistrationResult.warp <monai_inr_reg.result.RegistrationResult.warp>`): no second
sampler.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["apply_transform", "DDF_FILE"]

DDF_FILE = "ddf.nii.gz"  # the pipeline's per-pair MONAI DDF (output "ddf")
ITK_FILE = "itk/transform.h5"  # the pipeline's per-pair ITK transform (output "h5", a default)
GRID_FILE = "warped.nii.gz"  # gives the fixed grid when only the ITK transform is there


def _field_path(transform) -> Path:
    """The ``ddf.nii.gz`` (else ``itk/transform.h5``) of a pair folder, or ``transform`` itself when it is a file."""
    if not isinstance(transform, (str, os.PathLike)):
        raise TypeError("apply_transform(): 'transform' must be a pair output folder or the path of its "
                        f"{DDF_FILE}, got {type(transform).__name__}")
    path = Path(transform)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"apply_transform(): 'transform' {str(path)!r} does not exist")
    for name in (DDF_FILE, ITK_FILE):
        if (path / name).is_file():
            return path / name
    if (path / "error.json").is_file():
        hint = f"; the pair failed, see {str(path / 'error.json')!r}"
    else:
        pairs = sorted(p.name for p in path.iterdir() if (p / DDF_FILE).is_file())
        hint = (f"; it looks like a run's output folder: give one of its pair folders ({', '.join(pairs[:3])}"
                f"{', ...' if len(pairs) > 3 else ''})" if pairs else "")
    raise FileNotFoundError(f"apply_transform(): 'transform' folder {str(path)!r} holds neither {DDF_FILE} nor "
                            f"{ITK_FILE} (what `monai-inr-reg register` writes into each pair folder){hint}")


def _image(value, name: str):
    """A ``(C, *S)`` tensor / MetaTensor as given, or a file loaded as a MetaTensor with its RAS affine."""
    if isinstance(value, (str, os.PathLike)):
        from .io import load_image

        return load_image(value, name=name)
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError(f"apply_transform(): {name!r} must be a file path or a channel-first (C, *S) MetaTensor, "
                    f"got {type(value).__name__}")


def _field_grid_shape(ddf, ndim: int, path: Path) -> tuple[int, ...]:
    """``*S_fixed`` of a loaded field ``(D, *S_fixed)`` (2D NIfTI fields read as ``(2, H, W, 1)``)."""
    shape = tuple(ddf.shape)
    if len(shape) == ndim + 2 and shape[0] == ndim and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != ndim + 1 or shape[0] != ndim:
        raise ValueError(f"apply_transform(): the field in 'transform' file {str(path)!r} must have shape "
                         f"(D, *S_fixed) with D = {ndim} for a {ndim}D 'image', got {tuple(ddf.shape)}")
    return shape[1:]


def _check_reference(reference, ddf, grid_shape: tuple[int, ...], ndim: int, path: Path) -> None:
    from monai.data import MetaTensor

    from .core.grid import affine_for_ndim

    shape = tuple(reference.shape[1:])
    if reference.ndim != ndim + 1 or shape != grid_shape:
        raise ValueError(f"apply_transform(): 'reference' must be on the field's fixed grid, spatial shape "
                         f"{grid_shape} (from {str(path)!r}), got shape {tuple(reference.shape)}")
    if isinstance(reference, MetaTensor):
        # the DDF is in fixed voxels: on another affine it would map to other moving points
        ref, own = (affine_for_ndim(a.affine, ndim) for a in (reference, ddf))
        if not torch.allclose(ref, own, rtol=1e-5, atol=1e-3):
            raise ValueError(f"apply_transform(): 'reference' has the field's shape but another RAS affine: the "
                             f"field {str(path)!r} has {own.numpy().round(4).tolist()}, the reference "
                             f"{ref.numpy().round(4).tolist()}")


def _ddf_from_itk_file(path: Path, reference, ndim: int):
    """A MONAI DDF MetaTensor on the fixed grid from an ITK transform file (fixed -> moving points).

    The fixed grid is the reference's, else that of the pair's ``warped.nii.gz`` next to ``itk/``.
    """
    from monai.data import MetaTensor

    from .core.grid import ImageGrid
    from .io import read_transform
    from .itk_bridge import ddf_from_transform

    source = reference if reference is not None else path.parent.parent / GRID_FILE
    if source is None or (not isinstance(source, torch.Tensor) and not Path(source).is_file()):
        raise FileNotFoundError(f"apply_transform(): 'transform' {str(path)!r} is an ITK transform, which has no grid "
                                f"of its own: give 'reference' (the fixed image)")
    grid_image = _image(source, "reference")
    shape = tuple(grid_image.shape[1:])
    if len(shape) == ndim + 1 and shape[-1] == 1:
        shape = shape[:-1]
    affine = getattr(grid_image, "affine", None)
    grid = ImageGrid.from_ras_affine(shape, affine)
    ddf = ddf_from_transform(read_transform(path, name="transform"), grid).to(torch.float32)
    return MetaTensor(ddf, affine=affine if affine is not None else grid.affine_ras)  # MONAI's 4 x 4 kept


def apply_transform(transform, image, reference=None, *, mode: str = "bilinear"):
    """Warp a moving-grid image onto the fixed grid with a saved registration (``antsApplyTransforms``).

    Args:
        transform: a pair output folder ``OUT/<pair id>/`` of ``monai-inr-reg register`` / ``batch``
            / the bundle, the path of its ``ddf.nii.gz`` (the MONAI DDF ``(D, *S_fixed)``, voxel
            units along the fixed array axes, fixed voxel ``p`` -> moving point at fixed voxel
            coordinates ``p + ddf(p)``, stored channel-last with the fixed RAS affine), or of an
            ITK transform file (``.h5``, ``.tfm``, ANTs ``.mat``; fixed -> moving points; then the
            fixed grid comes from ``reference``, or from the pair's ``warped.nii.gz``).
        image: ``(C, *S_moving)`` moving-grid image: a file path (loaded with
            :func:`monai_inr_reg.io.load_image`, float32 as MONAI's ``LoadImage``) or a MetaTensor with
            its RAS affine. Any grid: it is sampled in physical space through the affines, as
            :meth:`RegistrationResult.warp <monai_inr_reg.result.RegistrationResult.warp>` does (a
            plain tensor is taken to share the fixed grid's affine, as in ``ApplyDdf``).
        reference: optional fixed image (path or MetaTensor) whose grid and meta the output takes;
            it must be on the field's grid (same spatial shape and, for a MetaTensor, affine).
            Default: the field's own grid and affine.
        mode: ``"bilinear"`` for intensities, ``"nearest"`` for labels (values and dtype kept).

    Returns:
        MetaTensor ``(C, *S_fixed)`` with the fixed RAS affine (MONAI's 4x4 also for 2D).

    Raises:
        FileNotFoundError: ``transform``, ``image`` or ``reference`` does not exist; a folder
            without ``ddf.nii.gz``.
        ValueError: a bad ``mode``; a field not ``(D, *S)`` for the image's dimension; a
            ``reference`` off the field's grid; an unreadable file.
        TypeError: an argument of the wrong kind.
    """
    from .io import load_image
    from .transforms import ApplyDdf
    from .transforms.array import MODES

    if mode not in MODES:
        raise ValueError(f"apply_transform(): 'mode' must be one of {MODES}, got {mode!r}")

    path = _field_path(transform)
    image = _image(image, "image")
    if image.ndim not in (3, 4):
        raise ValueError(f"apply_transform(): 'image' must be channel-first (C, H, W) or (C, H, W, D), "
                         f"got shape {tuple(image.shape)}")
    ndim = image.ndim - 1
    if path.name.endswith(".nii.gz") or path.name.endswith(".nii"):
        ddf = load_image(path, name="transform")
    else:
        ddf = _ddf_from_itk_file(path, reference, ndim)
    grid_shape = _field_grid_shape(ddf, ndim, path)
    if reference is not None:
        reference = _image(reference, "reference")
        _check_reference(reference, ddf, grid_shape, ndim, path)
    return ApplyDdf(mode=mode)(image, ddf, reference)
