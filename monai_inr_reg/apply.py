"""Apply a saved transform later, as ``antsApplyTransforms`` does: a pair's ``ddf.nii.gz`` -> warped image.

Adapter only: it finds and loads the field that :mod:`monai_inr_reg.pipeline` writes per pair
(``monai-inr-reg register``, ``batch``, the bundle), checks it against the image and the reference,
and delegates the warping to :class:`~monai_inr_reg.transforms.ApplyDdf` (hence
:meth:`RegistrationResult.warp <monai_inr_reg.result.RegistrationResult.warp>`): no second sampler.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["apply_transform", "DDF_FILE"]

DDF_FILE = "ddf.nii.gz"  # the pipeline's per-pair MONAI DDF
_MODES = ("bilinear", "nearest")


def _field_path(transform) -> Path:
    """The ``ddf.nii.gz`` of a pair folder, or ``transform`` itself when it is a file."""
    if not isinstance(transform, (str, os.PathLike)):
        raise TypeError("apply_transform(): 'transform' must be a pair output folder or the path of its "
                        f"{DDF_FILE}, got {type(transform).__name__}")
    path = Path(transform)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"apply_transform(): 'transform' {str(path)!r} does not exist")
    field = path / DDF_FILE
    if field.is_file():
        return field
    if (path / "error.json").is_file():
        hint = f"; the pair failed, see {str(path / 'error.json')!r}"
    else:
        pairs = sorted(p.name for p in path.iterdir() if (p / DDF_FILE).is_file())
        hint = (f"; it looks like a run's output folder: give one of its pair folders ({', '.join(pairs[:3])}"
                f"{', ...' if len(pairs) > 3 else ''})" if pairs else "")
    raise FileNotFoundError(f"apply_transform(): 'transform' folder {str(path)!r} holds no {DDF_FILE} (the MONAI "
                            f"DDF that `monai-inr-reg register` writes into each pair folder){hint}")


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
    from monai.data.utils import to_affine_nd

    shape = tuple(reference.shape[1:])
    if reference.ndim != ndim + 1 or shape != grid_shape:
        raise ValueError(f"apply_transform(): 'reference' must be on the field's fixed grid, spatial shape "
                         f"{grid_shape} (from {str(path)!r}), got shape {tuple(reference.shape)}")
    if isinstance(reference, MetaTensor):
        # the DDF is in fixed voxels: on another affine it would map to other moving points
        ref, own = (to_affine_nd(ndim, torch.as_tensor(a.affine, dtype=torch.float64)) for a in (reference, ddf))
        if not torch.allclose(ref, own, rtol=1e-5, atol=1e-3):
            raise ValueError(f"apply_transform(): 'reference' has the field's shape but another RAS affine: the "
                             f"field {str(path)!r} has {own.numpy().round(4).tolist()}, the reference "
                             f"{ref.numpy().round(4).tolist()}")


def apply_transform(transform, image, reference=None, *, mode: str = "bilinear"):
    """Warp a moving-grid image onto the fixed grid with a saved registration (``antsApplyTransforms``).

    Args:
        transform: a pair output folder ``OUT/<pair id>/`` of ``monai-inr-reg register`` / ``batch``
            / the bundle, or the path of its ``ddf.nii.gz``: the MONAI DDF ``(D, *S_fixed)``, voxel
            units along the fixed array axes, fixed voxel ``p`` -> moving point at fixed voxel
            coordinates ``p + ddf(p)``, stored channel-last with the fixed RAS affine.
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
    if mode not in _MODES:
        raise ValueError(f"apply_transform(): 'mode' must be one of {_MODES}, got {mode!r}")
    from .io import load_image
    from .transforms import ApplyDdf

    path = _field_path(transform)
    image = _image(image, "image")
    if image.ndim not in (3, 4):
        raise ValueError(f"apply_transform(): 'image' must be channel-first (C, H, W) or (C, H, W, D), "
                         f"got shape {tuple(image.shape)}")
    ndim = image.ndim - 1
    ddf = load_image(path, name="transform")
    grid_shape = _field_grid_shape(ddf, ndim, path)
    if reference is not None:
        reference = _image(reference, "reference")
        _check_reference(reference, ddf, grid_shape, ndim, path)
    return ApplyDdf(mode=mode)(image, ddf, reference)
