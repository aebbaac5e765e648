"""``register_itk``: ITK images in, an ITK transform and the warped ITK image out (delegates to ``register``)."""

from __future__ import annotations

from .config import load_preset
from .inputs import as_image_and_grid, as_mask
from .io import matrix_from_transform
from .itk_bridge.images import _check_itk_image, image_to_tensor, tensor_to_image
from .itk_bridge.transforms import transform_from_result
from .register import register_on_grids

__all__ = ["register_itk"]


def register_itk(fixed, moving, preset: str = "deformable", *, fixed_mask=None, moving_mask=None,
                 initial_transform=None, seed: int = 0, device=None, progress=None, **overrides):
    """Register two ITK images; same keywords as :func:`monai_inr_reg.register`.

    Args:
        fixed: ``itk.Image`` (2D or 3D, any spacing, origin, direction): the reference grid; a 2D
            RGB(A) image is registered by its luminance.
        moving: ``itk.Image`` of the same dimension, on any grid.
        fixed_mask, moving_mask: optional ``itk.Image`` masks on the fixed / moving image's grid
            (same size, origin, spacing, direction; nonzero = inside), as ANTs' ``-x``.
        initial_transform: optional start: a linear ITK transform (e.g. from ``itk.transformread``;
            fixed -> moving points, as ``ResampleImageFilter`` uses it), a transform file path
            (``.h5``, ``.tfm``, ANTs ``.mat``) or a ``(D + 1, D + 1)`` LPS matrix.
        preset: ``"rigid"``, ``"affine"``, ``"deformable"``, ``"multimodal-rigid"``,
            ``"multimodal-deformable"``, ``"bounded"`` (any name of ``monai-inr-reg presets list``), a
            YAML path or a config dict.
        seed, device, progress, overrides: as for :func:`monai_inr_reg.register`.

    Returns:
        ``(transform, warped)``: the ITK transform fixed -> moving (see
        :func:`transform_from_result`) and the moving image warped onto the fixed grid as a
        float32 ``itk.Image`` with the fixed origin, spacing and direction.
        ``itk.resample_image_filter(moving, transform=transform, use_reference_image=True,
        reference_image=fixed)`` reproduces ``warped`` wherever the sample is inside ``moving``.

    Raises:
        ValueError: images of different dimension, several channels in 3D, NaN voxels, singular
            direction, a mask off its image's grid, a non-linear initial transform, unknown preset
            or override (all before any work).
    """

    for name, image in (("fixed", fixed), ("moving", moving)):
        _check_itk_image(image, "register_itk()", name)
    if int(fixed.GetImageDimension()) != int(moving.GetImageDimension()):
        raise ValueError(f"register_itk(): 'fixed' and 'moving' must have the same dimension, got "
                         f"{int(fixed.GetImageDimension())}D and {int(moving.GetImageDimension())}D")
    tensor, grid = image_to_tensor(fixed, name="fixed")
    fixed_tensor, fixed_grid = as_image_and_grid(tensor, "fixed", grid=grid, caller="register_itk()")
    tensor, grid = image_to_tensor(moving, name="moving")
    moving_tensor, moving_grid = as_image_and_grid(tensor, "moving", grid=grid, caller="register_itk()")
    masks = {}
    for name, mask, image_grid, image_name in (("fixed_mask", fixed_mask, fixed_grid, "fixed"),
                                               ("moving_mask", moving_mask, moving_grid, "moving")):
        if mask is not None:
            _check_itk_image(mask, "register_itk()", name)
            tensor, grid = image_to_tensor(mask, name=name)
            masks[name] = as_mask(tensor, name, image_grid, image_name, grid=grid, caller="register_itk()")
    if initial_transform is not None and hasattr(initial_transform, "TransformPoint"):
        initial_transform = matrix_from_transform(initial_transform, fixed_grid.ndim, name="initial_transform")
    config = load_preset(preset, **overrides)
    result = register_on_grids(fixed_tensor, fixed_grid, moving_tensor, moving_grid, config, **masks,
                               initial_transform=initial_transform, seed=seed, device=device, progress=progress)
    return transform_from_result(result), tensor_to_image(result.warped.as_tensor(), result.fixed_grid,
                                                          name="warped")
