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
  matrix stage exact and readable, and is exact at every fixed voxel (where ITK resamples); as
  ``A`` is linear, between voxels it also equals the linearly interpolated total field.

The conversion between MONAI's voxel DDF and ITK's physical displacement image lives in one
pair of functions, :func:`field_image_from_ddf` / :func:`ddf_from_field_image`; everything here
calls them (they call :func:`monai_inr_reg.core.grid.ddf_mm_from_ddf_voxel` and its inverse).
``monai.data.itk_torch_bridge.monai_to_itk_ddf`` is not used: it wants ITK array order, mutates
its input and returns float vectors, while ``DisplacementFieldTransform[itk.D, D]`` (what
``ResampleImageFilter`` takes) needs double; ``itk.image_from_array`` cannot build double-vector
images either, so the field buffer is allocated by ITK and filled in place.
``itk`` is imported inside functions: its first use costs seconds.
"""

from __future__ import annotations

from .files import read_transform, save_result
from .images import ddf_from_field_image, field_image_from_ddf, grid_from_image, image_to_tensor, tensor_to_image
from .transforms import ddf_from_transform, inverse_ddf_mm, transform_from_result

__all__ = [
    "image_to_tensor",
    "tensor_to_image",
    "grid_from_image",
    "transform_from_result",
    "field_image_from_ddf",
    "ddf_from_field_image",
    "inverse_ddf_mm",
    "ddf_from_transform",
    "save_result",
    "read_transform",
]
