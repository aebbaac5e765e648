"""``register_itk``: ITK images in, an ITK transform and the warped ITK image out (delegates to ``register``)."""

from __future__ import annotations

from .images import _check_itk_image, image_to_tensor, tensor_to_image
from .transforms import transform_from_result

__all__ = ["register_itk"]


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
    from ..config import load_preset
    from ..register import register_on_grids

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
