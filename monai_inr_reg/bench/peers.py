"""The training-free peers a user would weigh against us: ConvexAdam and FireANTs, maps in our convention.

Both return the whole fixed -> moving map as ``ddf_mm`` ``(D, *S_fixed)`` float64, LPS mm, on the
fixed grid (as :func:`~monai_inr_reg.bench.baselines.ants_syn`).

- **ConvexAdam** (``convexadam`` 0.2.0, ``convex_adam_pt`` with its library defaults: MIND-SSC
  radius 1 / dilation 2, grid spacing 6, search radius 4, coupled convex optimisation with inverse
  consistency, 80 Adam iterations at lambda 1.25, float32 on the CPU). It works on two arrays of one
  shape and ignores their geometry, so the moving image is first resampled onto the fixed grid
  through the start our presets take (the centres of mass, :func:`start_matrix`); its voxel
  displacement is then mapped back through that start. 2D pairs: the slice is repeated into a slab
  of ``SLAB`` slices (its MIND and pooling are 3D) and the in-plane displacement of the middle slice
  is kept.
- **FireANTs** (``fireants`` 1.5.0, the authors' brain schedule, ``scripts/pairwise/test_ibsr.py``
  and the template README): moments (scale 4, first order) -> affine (scales 8, 4, 2, 1; 200, 100,
  50, 20 iterations; Adam lr 3e-4) -> greedy (scales 4, 2, 1; 200, 100, 25 iterations; Adam lr 0.5,
  compositive, gradient smoothing 1). CC (kernel 5) single-modal, its MI (Gaussian Parzen window)
  multi-modal. Its MI expects intensities in [0, 1], so both images are min-max scaled for every
  run. Images are SimpleITK images with our grid's voxel -> LPS mm geometry, so its physical space
  is our LPS mm.

``convexAdam``, ``fireants`` and ``SimpleITK`` are imported inside the functions (extra ``bench``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging

import numpy as np
import torch

from ..config import load_preset
from ..core.grid import ImageGrid, apply_affine
from ..core.sample import warp_image_mm
from ..pair import initial_matrix, prepare_pair

__all__ = ["convexadam_available", "fireants_available", "convexadam", "fireants", "start_matrix", "PEER_SETTINGS",
           "SLAB"]

SLAB = 18  # slices a 2D pair is repeated into for ConvexAdam: three of its 6-voxel feature cells (its 3-wide pooling)

PEER_SETTINGS = {
    "convexadam": "convexAdam.convex_adam_pt(fixed, moving, dtype=float32)  # library defaults (MIND-SSC, grid 6, "
                  "80 Adam its); moving resampled onto the fixed grid through the centre-of-mass start",
    "fireants": "FireANTs 1.5.0: Moments(scale 4) -> Affine([8,4,2,1], [200,100,50,20], lr 3e-4) -> "
                "Greedy([4,2,1], [200,100,25], lr 0.5, smooth_grad_sigma 1); CC kernel 5 / MI; images min-max "
                "scaled to [0, 1]",
}


def convexadam_available() -> bool:
    return importlib.util.find_spec("convexAdam") is not None


def fireants_available() -> bool:
    # found, not imported: importing it prints (no fused CUDA ops)
    return all(importlib.util.find_spec(name) is not None for name in ("fireants", "SimpleITK"))


def start_matrix(fixed: np.ndarray, fixed_grid: ImageGrid, moving: np.ndarray, moving_grid: ImageGrid,
                 preset: str) -> torch.Tensor:
    """The centre-of-mass start of ``preset`` (its intensity normalisation), ``(D + 1, D + 1)`` float64
    fixed LPS mm -> moving LPS mm: what our first stage starts from."""
    config = load_preset(preset)
    pair = prepare_pair(torch.as_tensor(np.ascontiguousarray(fixed), dtype=torch.float32)[None], fixed_grid,
                        torch.as_tensor(np.ascontiguousarray(moving), dtype=torch.float32)[None], moving_grid,
                        config, "cpu")
    return initial_matrix(pair, fixed_grid, moving_grid, "center_of_mass")


def convexadam(fixed: np.ndarray, fixed_grid: ImageGrid, moving: np.ndarray, moving_grid: ImageGrid, *,
               start_mm: torch.Tensor) -> torch.Tensor:
    """ConvexAdam from ``start_mm`` (fixed LPS mm -> moving LPS mm); returns ``ddf_mm`` ``(D, *S_fixed)``."""
    from convexAdam.convex_adam_MIND import convex_adam_pt

    ndim = fixed_grid.ndim
    points = fixed_grid.mm_points(dtype=torch.float64)
    start_mm = torch.as_tensor(start_mm, dtype=torch.float64)
    moving_on_fixed = warp_image_mm(torch.as_tensor(moving, dtype=torch.float32)[None], moving_grid,
                                    apply_affine(start_mm, points), fixed_grid.shape)[0].numpy()
    fixed_arr = np.asarray(fixed, dtype=np.float32)
    if ndim == 2:
        fixed_arr, moving_on_fixed = (np.repeat(a[..., None], SLAB, axis=2) for a in (fixed_arr, moving_on_fixed))
    with contextlib.redirect_stdout(io.StringIO()):
        disp = convex_adam_pt(fixed_arr, moving_on_fixed, dtype=torch.float32, device=torch.device("cpu"))
    if ndim == 2:
        disp = disp[:, :, SLAB // 2, :2]
    # its displacement: fixed voxel p samples the (resampled) moving array at p + disp(p), array axes
    voxel = fixed_grid.mm_to_voxel(points) + torch.as_tensor(disp, dtype=torch.float64).reshape(-1, ndim)
    mapped = apply_affine(start_mm, fixed_grid.voxel_to_mm(voxel))
    return (mapped - points).T.reshape((ndim,) + fixed_grid.shape)


def _fireants_image(array: np.ndarray, grid: ImageGrid):
    import SimpleITK as sitk
    from fireants.io.image import BatchedImages, Image

    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    # SimpleITK arrays are in reverse (z, y, x) order: transpose so ITK index (i, j, k) = array[i, j, k]
    image = sitk.GetImageFromArray(np.ascontiguousarray(scaled.T, dtype=np.float32))
    origin, spacing, direction = grid.itk_geometry()
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in direction.reshape(-1)))
    return BatchedImages([Image(image, device="cpu")])


def fireants(fixed: np.ndarray, fixed_grid: ImageGrid, moving: np.ndarray, moving_grid: ImageGrid, *,
             multimodal: bool) -> torch.Tensor:
    """FireANTs moments -> affine -> greedy (module docstring); returns ``ddf_mm`` ``(D, *S_fixed)``."""
    ndim = fixed_grid.ndim
    loss = {"loss_type": "mi"} if multimodal else {"loss_type": "cc", "cc_kernel_size": 5}
    # it prints and warns on import (no fused CUDA ops) and around every image it reads
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from fireants.registration.affine import AffineRegistration
        from fireants.registration.greedy import GreedyRegistration
        from fireants.registration.moments import MomentsRegistration

        for name in list(logging.root.manager.loggerDict):  # its modules log every level at INFO
            if name.startswith("fireants"):
                logging.getLogger(name).setLevel(logging.ERROR)
        fixed_img, moving_img = _fireants_image(fixed, fixed_grid), _fireants_image(moving, moving_grid)
        moments = MomentsRegistration(4, fixed_img, moving_img, moments=1, progress_bar=False, **loss)
        moments.optimize()
        affine = AffineRegistration([8, 4, 2, 1], [200, 100, 50, 20], fixed_img, moving_img, optimizer="Adam",
                                    optimizer_lr=3e-4, init_rigid=moments.get_affine_init(), progress_bar=False,
                                    **loss)
        affine.optimize()
        greedy = GreedyRegistration(scales=[4, 2, 1], iterations=[200, 100, 25], fixed_images=fixed_img,
                                    moving_images=moving_img, deformation_type="compositive", smooth_grad_sigma=1,
                                    optimizer="adam", optimizer_lr=0.5, init_affine=affine.get_affine_matrix().detach(),
                                    progress_bar=False, **loss)
        greedy.optimize()
        with torch.no_grad():
            coords = greedy.get_warped_coordinates(fixed_img, moving_img)[0]  # (*S reversed, D), moving [-1, 1]
            torch2phy = moving_img.get_torch2phy()[0].to(torch.float64)
    # back to our array order: spatial axes reversed, components already (i, j, k)
    coords = coords.permute(*reversed(range(ndim)), ndim).reshape(-1, ndim).to(torch.float64)
    mapped = apply_affine(torch2phy, coords)
    points = fixed_grid.mm_points(dtype=torch.float64)
    return (mapped - points).T.reshape((ndim,) + fixed_grid.shape)
