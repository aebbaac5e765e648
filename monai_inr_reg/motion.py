"""Motion models: maps from fixed LPS mm points to moving LPS mm points.

Every model is an ``nn.Module`` whose ``forward(points_mm)`` takes ``(P, D)`` fixed points (LPS mm)
and returns the corresponding moving points ``phi(x)``, ``(P, D)`` LPS mm. Parametric models
(:class:`RigidMotion`, :class:`AffineMotion`) act about the fixed image centre and expose their
exact homogeneous ``matrix()``; :class:`HashMotion` adds a coordinate-network displacement to a
fixed matrix (the parametric stage it starts from); :class:`GridMotion` composes a displacement
field on a coarse grid over the fixed image with such a matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from .core.grid import ImageGrid, NormalisedBox, apply_affine
from .core.linear import centred_map, centred_matrix, nearest_rotation, rotation_parameters
from .core.sample import sample_image
from .nn import CoordinateNet

__all__ = ["RigidMotion", "AffineMotion", "HashMotion", "GridMotion", "make_motion", "dense_displacement_mm"]


class RigidMotion(nn.Module):
    """``phi(x) = R (x - c) + c + t``: rotation parameters in radians, ``t`` in box units (times ``scale_mm``).

    Args:
        center_mm: ``(D,)`` rotation centre, LPS mm (the fixed image centre).
        scale_mm: box edge in mm; translation parameters are in box units so one learning rate fits all sizes.
        init: optional ``(D + 1, D + 1)`` matrix to start from; a linear part that is not a rotation
            (an affine initial transform) starts from its nearest rotation.
    """

    def __init__(self, center_mm: torch.Tensor, scale_mm: float, init: torch.Tensor | None = None):
        super().__init__()
        ndim = center_mm.shape[0]
        self.register_buffer("center_mm", center_mm.to(torch.float64))
        self.scale_mm = float(scale_mm)
        self.rotation = nn.Parameter(torch.zeros(1 if ndim == 2 else 3, dtype=torch.float64))
        self.translation = nn.Parameter(torch.zeros(ndim, dtype=torch.float64))
        if init is not None:
            init = init.to(torch.float64)
            if not torch.equal(init[:ndim, :ndim], torch.eye(ndim, dtype=torch.float64)):
                self.rotation.data = rotation_parameters(nearest_rotation(init[:ndim, :ndim]))
            self.translation.data = (apply_affine(init, center_mm[None].to(torch.float64))[0] - center_mm) / self.scale_mm

    def matrix(self) -> torch.Tensor:
        """``(D + 1, D + 1)`` float64, fixed LPS mm -> moving LPS mm."""
        return centred_matrix(self.rotation, self.translation, self.center_mm, rotation=True, translation_scale=self.scale_mm)

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return centred_map(self.rotation, self.translation, self.center_mm, points_mm, rotation=True,
                           translation_scale=self.scale_mm)


class AffineMotion(nn.Module):
    """``phi(x) = A (x - c) + c + t``, ``A`` a full ``(D, D)`` matrix; ``t`` in box units. Starts at ``init``."""

    def __init__(self, center_mm: torch.Tensor, scale_mm: float, init: torch.Tensor | None = None):
        super().__init__()
        ndim = center_mm.shape[0]
        self.register_buffer("center_mm", center_mm.to(torch.float64))
        self.scale_mm = float(scale_mm)
        init = torch.eye(ndim + 1, dtype=torch.float64) if init is None else init.to(torch.float64)
        linear = init[:ndim, :ndim].clone()
        self.linear = nn.Parameter(linear)
        self.translation = nn.Parameter((apply_affine(init, center_mm[None].to(torch.float64))[0] - center_mm) / self.scale_mm)

    def matrix(self) -> torch.Tensor:
        return centred_matrix(self.linear, self.translation, self.center_mm, rotation=False, translation_scale=self.scale_mm)

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return centred_map(self.linear, self.translation, self.center_mm, points_mm, rotation=False,
                           translation_scale=self.scale_mm)


class HashMotion(nn.Module):
    """``phi(x) = M x + scale_mm * u(box(x))``: a fixed matrix ``M`` plus a hash-grid motion net ``u``.

    ``u`` outputs box units and starts at exactly zero (zero-initialised output layer), so the
    stage starts from the parametric result ``M``.
    """

    def __init__(self, box: NormalisedBox, encoding: dict, network: dict, init: torch.Tensor | None = None):
        super().__init__()
        ndim = box.low_mm.shape[0]
        self.box = box
        self.net = CoordinateNet(ndim, ndim, encoding, network, zero_init_output=True)
        self.register_buffer("base", torch.eye(ndim + 1, dtype=torch.float64) if init is None else init.to(torch.float64))
        # a float32 copy of the matrix for the float32 points of the fits (each call would convert it)
        self.register_buffer("base_float", self.base.to(torch.float32), persistent=False)

    def matrix(self) -> torch.Tensor:
        return self.base

    def _base_map(self, points_mm: torch.Tensor) -> torch.Tensor:
        return apply_affine(self.base_float if points_mm.dtype == torch.float32 else self.base, points_mm)

    def displacement_unit(self, points_unit: torch.Tensor, level_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The net's residual displacement, box units, ``(P, D)``, at box points ``(P, D)``."""
        return self.net(points_unit, level_weights)

    def forward(self, points_mm: torch.Tensor, level_weights: torch.Tensor | None = None) -> torch.Tensor:
        residual = self.displacement_unit(self.box.to_unit(points_mm), level_weights)
        return self._base_map(points_mm) + residual * self.box.scale_mm()

    def moved_and_gradient(self, points_mm: torch.Tensor, level_weights: torch.Tensor | None, n_gradient: int,
                           step_unit: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The motion at ``points_mm`` ``(P, D)`` (LPS mm -> LPS mm, as :meth:`forward`) and the
        displacement gradient ``G[p, c, a] = d u_c / d x_a`` ``(n, D, D)`` at its first
        ``n = min(n_gradient, P)`` points: forward differences with a step of ``step_unit`` box units,
        box units on both sides, so ``G`` is dimensionless (the box is isotropic: the same in mm).
        One evaluation of the net for all of it (the shifted points ride along with the others)."""
        unit = self.box.to_unit(points_mm)
        n_points, ndim = unit.shape
        n = min(n_gradient, n_points)
        steps = torch.eye(ndim, dtype=unit.dtype, device=unit.device)[:, None, :] * step_unit  # (axis, 1, D)
        shifted = (unit[None, :n] + steps).reshape(ndim * n, ndim)
        out = self.displacement_unit(torch.cat([unit, shifted]), level_weights)
        residual = out[:n_points]
        gradient = ((out[n_points:].reshape(ndim, n, ndim) - residual[:n]) / step_unit).permute(1, 2, 0)
        return self._base_map(points_mm) + residual * self.box.scale_mm(), gradient


class GridMotion(nn.Module):
    """``phi(x) = M (x + v(x))``: a displacement field ``v`` (LPS mm, in fixed space) on a coarse grid
    over the fixed image, then the fixed matrix ``M`` (the stage it starts from).

    Grid node ``g`` sits at fixed voxel ``g * spacing + (spacing - 1) / 2`` (the centre of a cell of
    ``spacing`` voxels per axis, ``ceil(S / spacing)`` nodes); ``v`` is interpolated linearly between
    nodes and continues its edge nodes beyond them. It starts at zero (the matrix) or at a field of
    a discrete search (:func:`monai_inr_reg.start.bounded_field`).

    Args:
        fixed_grid: the fixed image's grid.
        spacing_voxels: node spacing in fixed voxels.
        init: ``(D + 1, D + 1)`` matrix ``M``; None: identity.
    """

    def __init__(self, fixed_grid: ImageGrid, spacing_voxels: int, init: torch.Tensor | None = None):
        super().__init__()
        ndim = fixed_grid.ndim
        self.spacing_voxels = int(spacing_voxels)
        nodes = tuple(-(-n // self.spacing_voxels) for n in fixed_grid.shape)
        self.register_buffer("base", torch.eye(ndim + 1, dtype=torch.float64) if init is None else init.to(torch.float64))
        self.register_buffer("voxel_from_mm", fixed_grid.voxel_from_mm.to(torch.float64))
        self.register_buffer("spacing_mm", fixed_grid.spacing.to(torch.float32) * self.spacing_voxels)
        self.displacement_mm = nn.Parameter(torch.zeros((ndim,) + nodes))

    def matrix(self) -> torch.Tensor:
        return self.base

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        voxel = apply_affine(self.voxel_from_mm, points_mm.to(torch.float32))
        node = (voxel - (self.spacing_voxels - 1) / 2) / self.spacing_voxels
        field = sample_image(self.displacement_mm, node, padding_mode="border")
        return apply_affine(self.base, points_mm + field.to(points_mm.dtype))

    def roughness(self) -> torch.Tensor:
        """Mean squared difference of neighbouring nodes per mm between them, summed over the axes
        (the squared displacement gradient, dimensionless; 0-d)."""
        ndim = self.displacement_mm.shape[0]
        total = self.displacement_mm.new_zeros(())
        for axis in range(ndim):
            if self.displacement_mm.shape[axis + 1] > 1:
                total = total + (self.displacement_mm.diff(dim=axis + 1) / self.spacing_mm[axis]).pow(2).sum(0).mean()
        return total


def make_motion(motion_config: dict, center_mm: torch.Tensor, box: NormalisedBox, init: torch.Tensor | None, device,
                fixed_grid: ImageGrid | None = None):
    """A motion of ``motion_config`` (an entry of the config's ``motions``: ``model`` rigid, affine,
    hash or grid) starting at ``init`` (``(D + 1, D + 1)`` fixed LPS mm -> moving LPS mm; None:
    identity); parametric motions act about ``center_mm`` with translations in units of the box
    edge; a grid motion needs ``fixed_grid``."""
    model = motion_config["model"]
    if model == "rigid":
        return RigidMotion(center_mm, box.scale_mm(), init).to(device)
    if model == "affine":
        return AffineMotion(center_mm, box.scale_mm(), init).to(device)
    if model == "grid":
        return GridMotion(fixed_grid, motion_config["spacing_voxels"], init).to(device)
    return HashMotion(box, motion_config["encoding"], motion_config["network"], init).to(device)


def dense_displacement_mm(motion, fixed_grid: ImageGrid, device, *, points_mm: torch.Tensor | None = None,
                          chunk: int = 1 << 18) -> torch.Tensor:
    """``(D, *S_fixed)`` float64 LPS mm displacement ``phi(x) - x`` of ``motion`` at every fixed voxel
    (on the CPU). Parametric motions exactly: their float64 matrix on float64 points. ``points_mm``:
    ``fixed_grid.mm_points(device=device)`` when the caller has it already (hash and grid motions)."""
    pieces = []
    with torch.no_grad():
        if not isinstance(motion, (RigidMotion, AffineMotion)):  # a field: evaluated at every voxel
            points_mm = fixed_grid.mm_points(device=device) if points_mm is None else points_mm
            for points in points_mm.split(chunk):
                pieces.append(motion(points).to(torch.float64) - points.to(torch.float64))
        else:
            for points in fixed_grid.mm_points(dtype=torch.float64).split(chunk):
                pieces.append(apply_affine(motion.matrix(), points) - points)
    return torch.cat(pieces).T.reshape((fixed_grid.ndim,) + fixed_grid.shape).cpu()
