"""Images, masks and initial transforms as MONAI and ITK users hand them -> what the engine takes.

The one place that turns a user's input into a ``(1, *S)`` float32 tensor and its
:class:`~monai_inr_reg.core.grid.ImageGrid` (every entry point calls :func:`as_image_and_grid`):

- a file path (anything MONAI's ``LoadImage`` reads: NIfTI, MHA, NRRD, PNG, JPEG, ...), a
  channel-first MetaTensor (its RAS affine; MONAI's ``4 x 4`` affine of a 2D image is reduced to
  its 2D part, :func:`~monai_inr_reg.core.grid.affine_for_ndim`), a plain tensor or array
  (identity affine), or a tensor with an explicit grid (the ITK adapter);
- a 2D image stored as 3D with one slice, ``(1, X, Y, 1)`` (NIfTI files often are), is registered
  as 2D;
- a 2D colour image (RGB or RGBA, 3 or 4 channels; grey + alpha, 2 channels) is converted to
  luminance with PIL's ``"L"`` weights (0.299 R + 0.587 G + 0.114 B); a 3D image with several
  channels is refused with an error that says how to pick one.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .core.grid import ImageGrid

__all__ = ["as_image_and_grid", "as_mask", "as_initial_matrix", "LUMINANCE_WEIGHTS"]

logger = logging.getLogger(__name__)

# PIL's ITU-R 601-2 luma transform, Image.convert("L")
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)


def _as_tensor(image) -> torch.Tensor:
    if hasattr(image, "as_tensor"):  # MetaTensor
        return image.as_tensor().detach()
    if isinstance(image, torch.Tensor):
        return image.detach()
    return torch.as_tensor(np.asarray(image))


def _load_if_path(image, name: str):
    if isinstance(image, str) or hasattr(image, "__fspath__"):
        from .io import load_image

        return load_image(image, name=name)
    return image


def _drop_singleton_slice(tensor: torch.Tensor, grid: ImageGrid) -> tuple[torch.Tensor, ImageGrid]:
    """``(C, X, Y, 1)`` on a 3D grid -> ``(C, X, Y)`` on the grid's first two axes (a 2D image stored as 3D)."""
    keep = [0, 1, 3]
    return tensor[..., 0], ImageGrid(grid.shape[:2], grid.mm_from_voxel[keep][:, keep])


def _one_channel(tensor: torch.Tensor, name: str, caller: str, quiet: bool) -> torch.Tensor:
    channels, ndim = tensor.shape[0], tensor.ndim - 1
    if channels == 1:
        return tensor
    log = logger.debug if quiet else logger.info
    if ndim == 2 and channels in (3, 4):
        log("%s: '%s' has %d channels (%s); registering its luminance (0.299 R + 0.587 G + 0.114 B)",
                    caller, name, channels, "RGB" if channels == 3 else "RGBA")
        weights = torch.tensor(LUMINANCE_WEIGHTS, dtype=torch.float32)
        return torch.einsum("c,c...->...", weights, tensor[:3].to(torch.float32))[None]
    if ndim == 2 and channels == 2:
        log("%s: '%s' has 2 channels (grey + alpha); registering the grey channel", caller, name)
        return tensor[:1]
    raise ValueError(
        f"{caller}: '{name}' has {channels} channels (shape {tuple(tensor.shape)}); registration takes one: pick it "
        f"first, e.g. image[k:k + 1] in Python or monai.transforms.SplitDim / ITK's VectorIndexSelectionCast")


def as_image_and_grid(image, name: str, *, grid: ImageGrid | None = None, caller: str = "register()",
                      quiet: bool = False) -> tuple[torch.Tensor, ImageGrid]:
    """A user's image -> (float32 ``(1, *S)`` tensor, its :class:`ImageGrid`), validated.

    Args:
        image: a file path, a channel-first ``(C, *S)`` MetaTensor (RAS affine, ``(D + 1)^2`` or
            MONAI's ``4 x 4`` for 2D), a tensor or array ``(C, *S)`` (identity affine), 2D or 3D.
        name: how errors call it (``"fixed"``, ``"moving"``).
        grid: the image's grid when known (LPS mm, e.g. from ITK); then ``image``'s own affine is ignored.
        caller: the public function named in errors.
        quiet: say nothing about a colour conversion (a check before the registration says it).

    Returns:
        ``(tensor, grid)``; array axes of ``tensor`` are ``grid``'s voxel axes.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: unreadable file, not ``(C, *S)`` with 2 or 3 spatial axes, several channels in
            3D, a spatial size below 2, NaN / infinite voxels, a constant image, a bad affine.
    """
    image = _load_if_path(image, name)
    affine = None if grid is not None else getattr(image, "affine", None)
    tensor = _as_tensor(image)
    if tensor.ndim not in (3, 4):
        raise ValueError(f"{caller}: '{name}' must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(tensor.shape)}")
    try:
        if grid is None:
            grid = ImageGrid.from_ras_affine(tensor.shape[1:], affine)
    except ValueError as err:
        raise ValueError(f"{caller}: '{name}' {err}") from None
    if tensor.ndim == 4 and tensor.shape[-1] == 1 and min(tensor.shape[1:3]) > 1:
        tensor, grid = _drop_singleton_slice(tensor, grid)
    tensor = _one_channel(tensor, name, caller, quiet)
    if tensor.numel() == 0 or min(tensor.shape[1:]) < 2:
        raise ValueError(f"{caller}: '{name}' is empty or has a spatial size below 2: shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{caller}: '{name}' has {bad} NaN or infinite voxels")
    if float(tensor.max() - tensor.min()) == 0.0:
        raise ValueError(f"{caller}: '{name}' is constant (all {float(tensor.flatten()[0])}); nothing to register")
    return tensor, grid


def as_mask(mask, name: str, image_grid: ImageGrid, image_name: str, *, grid: ImageGrid | None = None,
            caller: str = "register()") -> torch.Tensor | None:
    """A mask of the image ``image_name`` -> bool ``(*S)`` on ``image_grid`` (``None`` stays ``None``).

    Nonzero voxels are inside. The mask must lie on its image's grid: same spatial size and the same
    voxel -> mm matrix (to 1e-3 mm); a label map with several labels counts every nonzero label.

    Args:
        mask: path, MetaTensor, tensor or array ``(1, *S)`` or ``(*S)``, as for :func:`as_image_and_grid`.
        name: how errors call it (``"fixed_mask"``).
        image_grid: the grid of its image.
        image_name: the image it belongs to (``"fixed"``).
        grid: the mask's grid when known (ITK); otherwise from its affine (none: the image's grid).

    Raises:
        ValueError: another dimension or grid than its image, several channels, no voxel inside.
    """
    if mask is None:
        return None
    mask = _load_if_path(mask, name)
    tensor = _as_tensor(mask)
    if tensor.ndim == image_grid.ndim:
        tensor = tensor[None]
    if tensor.ndim not in (3, 4) or tensor.shape[0] != 1:
        raise ValueError(f"{caller}: '{name}' must be a one-channel {image_grid.ndim}D mask like '{image_name}' "
                         f"(spatial shape {image_grid.shape}), got shape {tuple(tensor.shape)}")
    if grid is None and getattr(mask, "affine", None) is not None:
        try:
            grid = ImageGrid.from_ras_affine(tensor.shape[1:], mask.affine)
        except ValueError as err:
            raise ValueError(f"{caller}: '{name}' {err}") from None
    if tensor.ndim == 4 and image_grid.ndim == 2 and tensor.shape[-1] == 1:
        tensor, grid = _drop_singleton_slice(tensor, grid) if grid is not None else (tensor[..., 0], None)
    if tensor.ndim != image_grid.ndim + 1:
        raise ValueError(f"{caller}: '{name}' is {tensor.ndim - 1}D but '{image_name}' is {image_grid.ndim}D; "
                         f"a mask must be on its image's grid")
    if tuple(tensor.shape[1:]) != image_grid.shape:
        raise ValueError(f"{caller}: '{name}' must be on the grid of '{image_name}' (spatial shape {image_grid.shape}), "
                         f"got spatial shape {tuple(tensor.shape[1:])}")
    if grid is not None:
        gap = float((grid.mm_from_voxel - image_grid.mm_from_voxel).abs().max())
        if gap > 1e-3:
            raise ValueError(f"{caller}: '{name}' must be on the grid of '{image_name}': its voxel -> mm matrix differs "
                             f"by up to {gap:.3g} mm (resample the mask onto the image first)")
    inside = tensor[0] != 0
    if not bool(inside.any()):
        raise ValueError(f"{caller}: '{name}' has no voxel inside (all zero)")
    return inside


def as_initial_matrix(initial, ndim: int, *, caller: str = "register()") -> torch.Tensor | None:
    """An initial transform -> ``(D + 1, D + 1)`` float64, fixed LPS mm -> moving LPS mm (``None`` stays ``None``).

    Args:
        initial: a ``(D + 1, D + 1)`` matrix (fixed LPS mm -> moving LPS mm, the resampling
            direction, as ITK transforms map points), or the path of a linear transform file ITK
            reads: ``.h5`` / ``.tfm`` / ``.txt`` (ITK) or ``.mat`` (ANTs ``antsRegistration``
            output, e.g. ``0GenericAffine.mat``), read by :func:`monai_inr_reg.io.read_linear_transform`.
        ndim: the images' spatial dimension.

    Raises:
        ValueError: wrong shape, non-finite, singular, or a file ITK cannot read as one linear transform.
    """
    if initial is None:
        return None
    if isinstance(initial, str) or hasattr(initial, "__fspath__"):
        from .io import read_linear_transform

        initial = read_linear_transform(initial, ndim, name="initial_transform")
    matrix = torch.as_tensor(np.asarray(initial, dtype=np.float64) if not isinstance(initial, torch.Tensor)
                             else initial.detach().cpu().to(torch.float64))
    if matrix.shape != (ndim + 1, ndim + 1):
        raise ValueError(f"{caller}: 'initial_transform' must be a ({ndim + 1}, {ndim + 1}) homogeneous matrix "
                         f"(fixed LPS mm -> moving LPS mm) for {ndim}D images, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all() or abs(float(torch.linalg.det(matrix[:ndim, :ndim]))) < 1e-12:
        raise ValueError(f"{caller}: 'initial_transform' must be finite and invertible, got {matrix.tolist()}")
    return matrix

