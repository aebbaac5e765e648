"""The image pair as the fits see it: normalised intensities, sampling geometry, masks, and the start.

Everything here is computed once per registration; the objectives (:mod:`monai_inr_reg.objectives`)
and the fit loop (:mod:`monai_inr_reg.fit`) only read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .core.grid import ImageGrid, NormalisedBox
from .core.losses import gaussian_smooth, mind_ssc, normalised_patches
from .core.sample import sample_image

__all__ = ["ImagePair", "prepare_pair", "normalise_intensity", "initial_matrix"]


def normalise_intensity(image: torch.Tensor, low_percentile: float, high_percentile: float) -> torch.Tensor:
    """Map the ``low``/``high`` percentiles of ``image`` to 0 and 1 (no clipping)."""
    values = image.flatten()
    if values.numel() > 1_000_000:  # percentiles of a strided subsample are plenty
        values = values[:: values.numel() // 1_000_000]
    low, high = np.percentile(values.cpu().numpy(), [low_percentile, high_percentile])
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return (image - float(low)) / float(high - low)


@dataclass
class ImagePair:
    """The normalised pair on the device, with everything sampling needs precomputed."""

    fixed_values: torch.Tensor    # (N_fixed,) normalised fixed intensities, C order (inside the fixed mask)
    fixed_points_mm: torch.Tensor  # (N_fixed, D) LPS mm of every fixed voxel (inside the fixed mask)
    fixed_index: torch.Tensor | None  # (N_fixed,) C-order indices of the voxels inside the fixed mask; None: all
    moving_mask: torch.Tensor | None  # (1, *S_moving) float 1 inside the moving mask, 0 outside; None: no mask
    moving: torch.Tensor          # (1, *S_moving) normalised moving image
    moving_voxel_from_unit: torch.Tensor  # (D + 1, D + 1) box [0, 1]^D -> moving voxel
    moving_voxel_from_mm: torch.Tensor  # (D + 1, D + 1) LPS mm -> moving voxel
    moving_last_voxel: torch.Tensor  # (D,) float32 largest voxel index per axis (points beyond are outside)
    fixed: torch.Tensor           # (1, *S_fixed) normalised fixed image
    box: NormalisedBox
    center_mm: torch.Tensor       # (D,) float64 fixed image centre
    fixed_spacing_mm: torch.Tensor  # (D,) float64 fixed voxel spacing, array order
    ndim: int
    _smoothed: dict = field(default_factory=dict, repr=False)  # sigma -> (fixed image, kept fixed values, moving)
    _features: dict = field(default_factory=dict, repr=False)  # (kind, sigma, ...) -> features of a level

    def _level(self, sigma_voxels: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(fixed (1, *S_fixed), fixed_values (N_fixed,), moving (1, *S_moving))`` after a Gaussian
        of ``sigma_voxels`` (each image in its own voxels; 0: the images themselves). Computed once
        per sigma and kept: smoothing a 1 mm brain costs about a second per image, and stages (and
        the features below) share their levels."""
        key = float(sigma_voxels)
        if key not in self._smoothed:
            fixed = gaussian_smooth(self.fixed, key)
            self._smoothed[key] = (fixed, self._kept(fixed.reshape(-1)), gaussian_smooth(self.moving, key))
        return self._smoothed[key]

    def _kept(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` ``(N_all, ...)`` of every fixed voxel (C order) -> those of the kept ones (the fixed mask)."""
        return rows if self.fixed_index is None else rows.index_select(0, self.fixed_index)

    def smoothed(self, sigma_voxels: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fixed_values (N_fixed,), moving (1, *S_moving))`` of the level ``sigma_voxels`` (:meth:`_level`)."""
        _, fixed_values, moving = self._level(sigma_voxels)
        return fixed_values, moving

    def mind_features(self, sigma_voxels: float) -> tuple[torch.Tensor, torch.Tensor]:
        """MIND-SSC (:func:`~monai_inr_reg.core.losses.mind_ssc`) of the level ``sigma_voxels``:
        ``(fixed_features (N_fixed, C), moving_features (C, *S_moving))``, computed on the whole
        images (the mask only selects the kept rows), once per level."""
        key = ("mind", float(sigma_voxels))
        if key not in self._features:
            fixed, _, moving = self._level(key[1])
            rows = mind_ssc(fixed).reshape(-1, fixed[0].numel()).T
            self._features[key] = (self._kept(rows).contiguous(), mind_ssc(moving))
        return self._features[key]

    def fixed_windows(self, sigma_voxels: float, radius: int) -> torch.Tensor:
        """The zero-mean, unit-norm window (:func:`~monai_inr_reg.core.losses.normalised_patches`) of
        every kept fixed voxel of the level ``sigma_voxels``: ``(N_fixed, (2 radius + 1)^D)``, once per
        level (27 floats a voxel in 3D at radius 1)."""
        key = ("windows", float(sigma_voxels), int(radius))
        if key not in self._features:
            self._features[key] = self._kept(normalised_patches(self._level(key[1])[0], key[2]))
        return self._features[key]

    def fixed_mask_image(self) -> torch.Tensor | None:
        """``(1, *S_fixed)`` float 1 inside the fixed mask, 0 outside; None: no mask."""
        if self.fixed_index is None:
            return None
        inside = torch.zeros(self.fixed.numel(), device=self.fixed.device).index_fill_(0, self.fixed_index, 1.0)
        return inside.reshape(self.fixed.shape)

    def moment_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fixed (1, *S_fixed), moving (1, *S_moving))``: the intensities that weigh in the images'
        moments (centres of mass, principal axes). With a mask on both images, each image times its
        mask; with one mask or none, the whole images: the moments of a masked region against those
        of a whole image compare two different things (a fixed mask on one of two blobs put the
        centre-of-mass start 30 voxels off, where no stage recovers)."""
        if self.fixed_index is not None and self.moving_mask is not None:
            return self.fixed * self.fixed_mask_image(), self.moving * self.moving_mask
        return self.fixed, self.moving

    def in_moving_mask(self, points_voxel: torch.Tensor) -> torch.Tensor:
        """``(P,)`` bool: moving voxel points ``(P, D)`` that fall inside the moving mask (outside the grid: no)."""
        return sample_image(self.moving_mask, points_voxel, mode="nearest")[:, 0] > 0.5


def prepare_pair(fixed_image, fixed_grid: ImageGrid, moving_image, moving_grid: ImageGrid, config: dict, device,
                 fixed_mask=None, moving_mask=None) -> ImagePair:
    """The :class:`ImagePair` of ``(1, *S)`` images on their grids (``config``: ``normalise``,
    ``box_margin``); masks ``(*S)`` on the same grids, nonzero inside."""
    norm = config["normalise"]
    fixed = normalise_intensity(fixed_image, norm["low_percentile"], norm["high_percentile"])
    moving = normalise_intensity(moving_image, norm["low_percentile"], norm["high_percentile"])
    box = NormalisedBox.around(fixed_grid, moving_grid, margin=float(config["box_margin"]))
    ndim = fixed_grid.ndim
    mm_from_unit = torch.eye(ndim + 1, dtype=torch.float64)
    mm_from_unit[:ndim, :ndim] *= box.scale_mm()
    mm_from_unit[:ndim, ndim] = box.low_mm
    fixed_values, fixed_points_mm = fixed.reshape(-1).to(device), fixed_grid.mm_points(device=device)
    fixed_index = None
    if fixed_mask is not None:
        fixed_index = fixed_mask.reshape(-1).nonzero()[:, 0].to(device)
        fixed_values, fixed_points_mm = fixed_values.index_select(0, fixed_index), fixed_points_mm.index_select(0, fixed_index)
    return ImagePair(
        fixed_values=fixed_values,
        fixed_points_mm=fixed_points_mm,
        fixed_index=fixed_index,
        moving_mask=None if moving_mask is None else moving_mask[None].to(device=device, dtype=torch.float32),
        moving=moving.to(device),
        moving_voxel_from_unit=moving_grid.voxel_from_mm @ mm_from_unit,
        moving_voxel_from_mm=moving_grid.voxel_from_mm,
        moving_last_voxel=torch.tensor(moving.shape[1:], device=device, dtype=torch.float32) - 1,
        fixed=fixed.to(device),
        box=box,
        center_mm=fixed_grid.center_mm(),
        fixed_spacing_mm=fixed_grid.spacing,
        ndim=ndim,
    )


def initial_matrix(pair: ImagePair, fixed_grid: ImageGrid, moving_grid: ImageGrid, how: str) -> torch.Tensor | None:
    """Start of the first stage, ``(D + 1, D + 1)`` float64 fixed LPS mm -> moving LPS mm, or None
    (identity, ``how="none"``). ``center_of_mass``: the translation that puts the fixed image's
    intensity-weighted centre (normalised intensities) on the moving image's, as ANTs' and ITK's
    moments initialisers do. Large translations are where the image-net stage can lose the pair
    (BrainWeb, 8 deg and 13 px: the motion ran 45 px the wrong way while only the coarsest hash
    levels were on). Masks weigh as :meth:`ImagePair.moment_images` says (both or none)."""
    if how == "none":
        return None
    fixed, moving = pair.moment_images()
    matrix = torch.eye(fixed_grid.ndim + 1, dtype=torch.float64)
    matrix[:-1, -1] = moving_grid.center_of_mass_mm(moving) - fixed_grid.center_of_mass_mm(fixed)
    return matrix
