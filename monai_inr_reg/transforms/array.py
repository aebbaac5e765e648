"""MONAI array transforms: register a pair (:class:`InrRegistration`) and apply a saved field (:class:`ApplyDdf`).

Adapters only: they convert MetaTensors to what :func:`monai_inr_reg.register` takes, delegate, and
pack the result as MetaTensors on the fixed grid. Warping goes through
:meth:`monai_inr_reg.result.RegistrationResult.warp` (``core/sample.py``), never through a second sampler.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from copy import deepcopy

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.inverse import TraceableTransform
from monai.utils import TransformBackends, ensure_tuple_rep
from monai.utils.misc import ImageMetaKey

from ..core.grid import ImageGrid
from ..result import RegistrationResult

__all__ = ["InrRegistration", "ApplyDdf", "MODES"]

MODES = ("bilinear", "nearest")


def _spatial_ndim(image, name: str, caller: str) -> int:
    ndim = getattr(image, "ndim", None)
    if ndim not in (3, 4):
        shape = tuple(getattr(image, "shape", ()))
        raise ValueError(f"{caller}: {name!r} must be channel-first (C, H, W) or (C, H, W, D), got shape {shape}")
    return ndim - 1


def _plain(image) -> torch.Tensor:
    if isinstance(image, MetaTensor):
        return image.as_tensor()
    return torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)


def _check_mode(mode: str, name: str, caller: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{caller}: {name!r} must be one of {MODES}, got {mode!r}")


def _pack(transform: TraceableTransform, data: torch.Tensor, reference, source, extra_info: dict):
    """A MetaTensor on the fixed grid: ``reference``'s meta and affine, ``source``'s file name and history."""
    if not get_track_meta():
        return data
    out = MetaTensor(data)
    if isinstance(reference, MetaTensor):
        out.meta = deepcopy(reference.meta)
    if isinstance(source, MetaTensor):
        # as MONAI's ResampleToMatch: keep the source's name (SaveImaged names files by it) and history
        out.meta[ImageMetaKey.FILENAME_OR_OBJ] = source.meta.get(ImageMetaKey.FILENAME_OR_OBJ, "inr_registration_source")
        out.applied_operations = deepcopy(source.applied_operations)
    orig_size = tuple(int(s) for s in source.shape[1:]) if hasattr(source, "shape") else None
    transform.push_transform(out, orig_size=orig_size, extra_info=extra_info)
    return out


class InrRegistration(TraceableTransform):
    """Register a moving image onto a fixed one; warp it (and other moving-grid images) onto the fixed grid.

    Calls :func:`monai_inr_reg.register` once per call. The moving image and any further images
    given (labels, other channels; all on the **moving** grid) are warped with the found motion;
    intensities with ``mode`` (``"bilinear"``), the extra images with ``label_mode``
    (``"nearest"`` keeps label values exactly).

    Args:
        preset: ``"rigid"``, ``"affine"``, ``"deformable"``, ``"multimodal-rigid"``,
            ``"multimodal-deformable"``, a YAML path or a config dict; checked with
            :func:`monai_inr_reg.config.load_preset` at construction (a typo fails before any work).
        mode: interpolation of the warped moving image, ``"bilinear"`` or ``"nearest"``.
        label_mode: interpolation of the extra images: one value or one per extra image.
        seed: seeds the networks and the point sampling (deterministic on CPU).
        device: torch device for the optimisation; default CUDA when available.
        progress: show a progress bar (default: the preset's ``progress``).
        overrides: merged into the preset, e.g. ``iterations_scale=0.5``; unknown keys raise ``ValueError``.

    Call:
        ``reg(fixed, moving, *images, label_mode=None, fixed_mask=None, moving_mask=None,
        initial_transform=None) -> (warped, ddf, *warped_images)``

        - ``fixed``: ``(C, *S_fixed)`` MetaTensor (RAS affine, as ``LoadImage`` +
          ``EnsureChannelFirst`` make it, MONAI's ``4 x 4`` for 2D included) or tensor / array
          (identity affine); 2D or 3D; a 2D RGB(A) image is registered by its luminance.
        - ``moving``: ``(C, *S_moving)``, same kinds, any grid (size, spacing, orientation).
        - ``fixed_mask`` / ``moving_mask``: optional masks on the fixed / moving grid;
          ``initial_transform``: optional start (matrix or linear ITK / ANTs file); see
          :func:`monai_inr_reg.register`.
        - ``images``: ``(C, *S_moving)`` further moving-grid images to warp.
        - ``warped``: ``(1, *S_fixed)`` float32 MetaTensor; ``warped_images``: ``(C, *S_fixed)``,
          dtype kept for ``nearest``.
        - ``ddf``: ``(D, *S_fixed)`` float32 MetaTensor, MONAI's DDF: voxel units along the fixed
          array axes, fixed voxel ``p`` -> moving point at fixed voxel coordinates ``p + ddf(p)``
          (resampling direction, as ``monai.networks.blocks.Warp``).

        Every output carries the fixed image's meta and affine (a warped image keeps its source's
        ``filename_or_obj`` and ``applied_operations``, as ``ResampleToMatch`` does, so ``SaveImaged``
        names it after the moving file; the ``ddf`` keeps the fixed image's) and
        gains one ``applied_operations`` entry naming this transform, the preset, the motion and
        the loss. The registration is not invertible through MONAI's ``inverse`` (the inverse
        map of a deformable field is not computed).

    Raises:
        ValueError: unknown preset/option (at construction); images of different dimension, an
            extra image not on the moving grid, a bad mode (at call); bad images (NaN, constant,
            multi-channel) as :func:`monai_inr_reg.register` raises them.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, preset: str | dict = "deformable", *, mode: str = "bilinear",
                 label_mode: str | Sequence[str] = "nearest", seed: int = 0, device=None, progress=None,
                 **overrides) -> None:
        from ..config import load_preset

        load_preset(preset, **overrides)  # fail early, before any data is loaded
        _check_mode(mode, "mode", "InrRegistration")
        for m in ensure_tuple_rep(label_mode, 1) if isinstance(label_mode, str) else label_mode:
            _check_mode(m, "label_mode", "InrRegistration")
        self.preset = preset
        self.mode = mode
        self.label_mode = label_mode
        self.seed = seed
        self.device = device
        self.progress = progress
        self.overrides = overrides

    def register(self, fixed, moving, *, fixed_mask=None, moving_mask=None, initial_transform=None) -> RegistrationResult:
        """Run :func:`monai_inr_reg.register` on the two images (and optional masks / initial transform)."""
        from ..register import register

        ndim = _spatial_ndim(fixed, "fixed", "InrRegistration")
        moving_ndim = _spatial_ndim(moving, "moving", "InrRegistration")
        if ndim != moving_ndim:
            raise ValueError(f"InrRegistration: 'fixed' is {ndim}D but 'moving' is {moving_ndim}D; both must have the same dimension")
        return register(fixed, moving, self.preset, fixed_mask=fixed_mask, moving_mask=moving_mask,
                        initial_transform=initial_transform, seed=self.seed, device=self.device,
                        progress=self.progress, **self.overrides)

    def __call__(self, fixed, moving, *images, label_mode: str | Sequence[str] | None = None, fixed_mask=None,
                 moving_mask=None, initial_transform=None):
        label_mode = self.label_mode if label_mode is None else label_mode
        modes = ensure_tuple_rep(label_mode, len(images)) if images else ()
        for m in modes:
            _check_mode(m, "label_mode", "InrRegistration")
        moving_shape = tuple(moving.shape[1:])
        for index, image in enumerate(images):
            if tuple(image.shape[1:]) != moving_shape:
                raise ValueError(
                    f"InrRegistration: extra image {index} must be on the moving grid, spatial shape {moving_shape}, "
                    f"got {tuple(image.shape[1:])}")
        result = self.register(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask,
                               initial_transform=initial_transform)
        info = self.trace_info(result)
        moving_tensor = _plain(moving).to(torch.float32)
        warped = result.warp(moving_tensor, mode=self.mode).as_tensor()
        outputs = [_pack(self, warped, fixed, moving, dict(info, mode=self.mode)),
                   _pack(self, result.ddf.detach().cpu(), fixed, fixed, dict(info, output="ddf"))]
        for image, mode in zip(images, modes):
            data = result.warp(_plain(image), mode=mode).as_tensor()
            outputs.append(_pack(self, data, fixed, image, dict(info, mode=mode)))
        return tuple(outputs)

    def trace_info(self, result: RegistrationResult) -> dict:
        """What this registration did, as collate-friendly values for ``applied_operations``."""
        return {
            "preset": self.preset if isinstance(self.preset, str) else "custom",
            "overrides": json.dumps(self.overrides, sort_keys=True, default=str),
            "seed": int(self.seed),
            "motion": result.motion,
            "parametric": bool(result.parametric),
            "matrix_mm": result.matrix_mm.detach().cpu().numpy(),
            "moving_affine_ras": result.moving_grid.affine_ras.numpy(),
            "seconds": float(result.seconds),
            "final_loss": float(result.loss_history[-1]) if result.loss_history else float("nan"),
            # result.quality's verdicts: "as_placed" when the images shared too little to register
            "returned": result.quality.get("returned", "registration"),
            "suspect": bool(result.quality.get("suspect", False)),
            "weak_evidence": bool(result.quality.get("weak_evidence", False)),
        }


class ApplyDdf(TraceableTransform):
    """Warp a moving-grid image onto the fixed grid with a saved displacement field (MONAI DDF).

    The companion of :class:`InrRegistration` for applying its ``ddf`` later (to other images,
    labels, another channel), e.g. after ``LoadImage`` of the saved ``ddf.nii.gz``. Sampling goes
    through :meth:`RegistrationResult.warp <monai_inr_reg.result.RegistrationResult.warp>`, so the
    output is identical to :class:`InrRegistration`'s for the same image and mode.

    Args:
        mode: ``"bilinear"`` for intensities, ``"nearest"`` for labels.

    Call:
        ``apply(image, ddf, reference=None, mode=None) -> warped``

        - ``image``: ``(C, *S_moving)`` MetaTensor with the moving RAS affine (a plain tensor is
          taken to share the fixed grid's affine).
        - ``ddf``: ``(D, *S_fixed)`` voxel units along the fixed array axes (MONAI DDF), a
          MetaTensor carrying the fixed affine. A 2D field loaded from NIfTI as
          ``(2, H, W, 1)`` is accepted (that is how MONAI reads a 2-component 2D NIfTI).
        - ``reference``: optional MetaTensor on the fixed grid (e.g. the fixed image): gives the
          fixed affine and the output meta when ``ddf`` has none.
        - ``warped``: ``(C, *S_fixed)`` MetaTensor with the fixed affine.

    Raises:
        ValueError: field shape not ``(D, *S)`` matching the image dimension, bad mode.
        TypeError: neither ``ddf`` nor ``reference`` carries the fixed affine.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, *, mode: str = "bilinear") -> None:
        _check_mode(mode, "mode", "ApplyDdf")
        self.mode = mode

    def __call__(self, image, ddf, reference=None, mode: str | None = None):
        mode = self.mode if mode is None else mode
        _check_mode(mode, "mode", "ApplyDdf")
        ndim = _spatial_ndim(image, "image", "ApplyDdf")
        tensor, field = _plain(image), _plain(ddf)
        if ndim == 3 and tensor.shape[-1] == 1 and field.shape[0] == 2:
            tensor, ndim = tensor[..., 0], 2  # a 2D image stored as (C, X, Y, 1) (NIfTI), as its 2D field shows
        if field.ndim == ndim + 2 and field.shape[0] == ndim and field.shape[-1] == 1:
            field = field[..., 0]  # a 2D field read from NIfTI keeps a trailing singleton axis
        if field.ndim != ndim + 1 or field.shape[0] != ndim:
            raise ValueError(
                f"ApplyDdf: 'ddf' must have shape (D, *S_fixed) with D = {ndim} for a {ndim}D image, "
                f"got {tuple(torch.as_tensor(ddf).shape)}")
        grid_source = reference if isinstance(reference, MetaTensor) else ddf
        if not isinstance(grid_source, MetaTensor):
            raise TypeError("ApplyDdf: 'ddf' must be a MetaTensor carrying the fixed affine, or give 'reference' "
                            f"(a MetaTensor on the fixed grid); got {type(ddf).__name__} and {type(reference).__name__}")
        fixed_grid = ImageGrid.from_ras_affine(field.shape[1:], grid_source.affine)
        moving_affine = image.affine if isinstance(image, MetaTensor) else fixed_grid.affine_ras
        moving_grid = ImageGrid.from_ras_affine(tensor.shape[1:], moving_affine)
        result = RegistrationResult(fixed_grid=fixed_grid, moving_grid=moving_grid, ddf=field.to(torch.float32).cpu(),
                                    matrix_mm=torch.eye(ndim + 1, dtype=torch.float64), parametric=False,
                                    motion="deformable", moving_image=tensor)
        data = result.warp(tensor, mode=mode).as_tensor()
        return _pack(self, data, grid_source, image, {"mode": mode})
