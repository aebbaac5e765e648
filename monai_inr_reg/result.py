"""What a registration returns: the motion on the fixed grid, in MONAI's and in physical terms.

Conventions (one place; every adapter reads them from here):

- The motion maps **fixed points to moving points** (the resampling direction, as ITK and
  MONAI ``Warp`` use it): a fixed point ``x`` (LPS mm) corresponds to the moving point
  ``phi(x) = matrix_mm @ x + residual(x)``; ``ddf_mm(x) = phi(x) - x``.
- ``ddf`` is MONAI's DDF: ``(D, *S_fixed)``, voxel units along the **fixed** array axes, so
  ``monai.networks.blocks.Warp()(moving_on_fixed_grid[None], ddf[None])[0]`` equals ``warped``,
  where ``moving_on_fixed_grid`` is the moving image resampled onto the fixed grid through the
  two images' affines (the moving image itself when the grids are the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .core.grid import ImageGrid, ddf_mm_from_ddf_voxel
from .core.sample import warp_image_mm

__all__ = ["RegistrationResult"]


@dataclass
class RegistrationResult:
    """The outcome of :func:`monai_inr_reg.register`.

    Attributes:
        fixed_grid: grid of the fixed image (the grid every field lives on).
        moving_grid: grid of the moving image.
        ddf: ``(D, *S_fixed)`` float32, voxel units along the fixed array axes (MONAI convention),
            fixed voxel ``p`` -> ``p + ddf(p)`` in fixed voxel coordinates of the moving point.
        matrix_mm: ``(D + 1, D + 1)`` float64 homogeneous map, fixed LPS mm -> moving LPS mm: the
            exact rigid / affine stage (identity when there is none). The whole motion equals it
            exactly when ``parametric`` is True; otherwise ``ddf`` also holds a residual field.
        parametric: True when the result is exactly ``matrix_mm`` (rigid or affine presets, or a result
            returned as placed: ``quality["returned"]``).
        motion: the last stage's motion (a key of the config's ``motions``: ``"rigid"``, ``"affine"``,
            ``"deformable"``, ``"near_rigid"``).
        moving_image: ``(C, *S_moving)`` the moving image as given (intensities not normalised).
        seconds: wall time of the registration.
        loss_history: loss per iteration, all stages concatenated.
        start: how the first stage started: ``alignment`` (``center_of_mass``, ``none``, ``search``
            or ``initial_transform``), ``seconds``, and for ``search`` its ``candidates`` (name, score
            before and after the short fit, which won).
        stages: what ran, one dict per stage: ``name``, ``objective``, ``motion``, ``iterations`` (run),
            ``seconds``, ``final_loss`` (the last iteration's data term; None when it ran none) and
            ``started_from`` (``"previous"``, or ``"start"`` when its candidates included the initial
            alignment and that one matched better after the first level), and ``similarity`` for a stage
            that compares the real images: its data term at its start and end, and ``kept_start``
            when it ended worse and handed on its start (the guard); None for image-net stages.
        stage_ends: index into ``loss_history`` where each stage ended, with its name.
        stage_seconds: wall time per stage name, ``"start"`` (set-up and the initial alignment) and ``"field"`` (the dense output field);
            after the ``bounded`` fallback, its set-up and stage as ``"bounded.start"`` and ``"bounded.bounded"``.
        refined_from_start: a stage continued from the initial alignment rather than from the stages
            before it (``started_from == "start"``): an image-net stage that ran away was dropped.
        quality: how well the images match, by the last stage's data term that compares the real
            images, on the sharp images (mutual information when no stage does; ``metric``: that
            stage's objective, e.g. ``mapped_l2``, ``mutual_information`` as minus MI, ``local_cc`` as minus
            the mean windowed correlation; lower is better):
            ``no_registration`` (the grids placed on each other through their affines), ``start``
            (the first stage's start), ``final``; ``suspect`` is True when ``final`` is worse than
            the better of the two starts (the registration made things worse: look at the start);
            ``weak_evidence`` (mutual information, by the last stage on it: the figures are then
            in its measure) is True when the images at the better start share
            little information and the registration multiplied it several-fold (the field made most of
            the match it reports, as on MR -> TRUS pairs: check the result; thresholds and their
            measurement in :func:`monai_inr_reg.objectives.match_quality`), or, checked before a field
            stage, when the pose reached still shares little (:func:`~monai_inr_reg.objectives.weak_after_pose`;
            ``final`` is then the pose's and ``skipped`` names the stages not run); ``returned``: ``"registration"``, or
            with ``weak_evidence`` what the config's ``on_weak_evidence`` says: ``"bounded"`` (the
            default: the `bounded` preset's field from the images as placed; its own quality under
            ``quality["bounded"]``), ``"as_placed"`` (the images as their headers place them, or the
            ``initial_transform`` given), or ``"registration"`` (``warn``); the other entries
            describe the first registration.
        config: the full configuration used (preset merged with overrides).
    """

    fixed_grid: ImageGrid
    moving_grid: ImageGrid
    ddf: torch.Tensor
    matrix_mm: torch.Tensor
    parametric: bool
    motion: str
    moving_image: torch.Tensor
    seconds: float = 0.0
    loss_history: list[float] = field(default_factory=list)
    start: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    stage_ends: list[tuple[str, int]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    refined_from_start: bool = False
    quality: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return self.fixed_grid.ndim

    @property
    def ddf_mm(self) -> torch.Tensor:
        """``(D, *S_fixed)`` float32 displacement in LPS mm, components (x, y, z), on the fixed grid."""
        return ddf_mm_from_ddf_voxel(self.ddf, self.fixed_grid.mm_from_voxel)

    def mapped_points_mm(self) -> torch.Tensor:
        """``(prod(S_fixed), D)`` float64: the moving LPS mm point of every fixed voxel, C order."""
        fixed_mm = self.fixed_grid.mm_points(dtype=torch.float64)
        return fixed_mm + self.ddf_mm.reshape(self.ndim, -1).T.to(torch.float64)

    def warp(self, image: torch.Tensor, mode: str = "bilinear"):
        """Warp an image on the **moving** grid onto the fixed grid.

        Args:
            image: ``(C, *S_moving)`` tensor or MetaTensor (labels, other channels); a 2D image
                stored with a trailing slice axis, ``(C, X, Y, 1)``, is taken as ``(C, X, Y)``.
            mode: ``"bilinear"`` for intensities, ``"nearest"`` for labels (keeps label values).

        Returns:
            MetaTensor ``(C, *S_fixed)`` carrying the fixed affine (RAS, as MONAI expects).
        """
        image = torch.as_tensor(image)
        if image.ndim == self.ndim + 2 and image.shape[-1] == 1:
            image = image[..., 0]
        if tuple(image.shape[1:]) != self.moving_grid.shape:
            raise ValueError(
                f"RegistrationResult.warp(): 'image' must be on the moving grid, spatial shape {self.moving_grid.shape}, "
                f"got {tuple(image.shape[1:])} (shape (C, *spatial) expected)")
        out = warp_image_mm(image, self.moving_grid, self.mapped_points_mm(), self.fixed_grid.shape, mode=mode)
        return self._on_fixed_grid(out)

    @property
    def warped(self):
        """The moving image warped onto the fixed grid: MetaTensor ``(C, *S_fixed)``, fixed affine."""
        if not hasattr(self, "_warped"):
            self._warped = self.warp(self.moving_image.float(), mode="bilinear")
        return self._warped

    def _on_fixed_grid(self, tensor: torch.Tensor):
        from monai.data import MetaTensor  # lazy: the core stays importable without monai

        return MetaTensor(tensor, affine=self.fixed_grid.affine_ras.clone())

    # ITK export lives in the ITK adapter; these are thin conveniences over it.
    def to_itk(self):
        """The ITK transform (fixed -> moving points); see :func:`monai_inr_reg.itk_bridge.transform_from_result`."""
        from .itk_bridge import transform_from_result

        return transform_from_result(self)

    def save(self, directory, **kwargs):
        """Write transform files; see :func:`monai_inr_reg.itk_bridge.save_result`."""
        from .itk_bridge import save_result

        return save_result(self, directory, **kwargs)
