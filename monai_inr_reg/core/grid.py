"""Image grid geometry: the one place that converts between voxels, millimetres and frames.

Conventions used by the whole package (see the package docstring for shape letters):

- An image is a channel-first tensor ``(C, *S)``; array axis ``i`` of ``*S`` is voxel index
  component ``i`` (MONAI / nibabel order, which is also ITK's index order (x, y, z)).
- ``mm_from_voxel`` is a ``(D + 1, D + 1)`` float64 homogeneous matrix taking a voxel index
  ``(i, j, k)`` to a physical point in millimetres, **LPS** (ITK's frame), components (x, y, z).
  MetaTensor affines are RAS: convert them with :func:`lps_from_ras` (its own inverse).
- A displacement field ``ddf_voxel`` of shape ``(D, *S_fixed)`` is MONAI's convention: voxel units
  along the fixed array axes, taking fixed voxel ``p`` to ``p + ddf_voxel(p)``.
  ``ddf_mm`` of the same shape is the same motion in LPS mm, components (x, y, z).
  Convert with :func:`ddf_mm_from_ddf_voxel` / :func:`ddf_voxel_from_ddf_mm` only.
- Points are ``(P, D)``: ``points_mm`` (LPS, (x, y, z)) or ``points_voxel`` (array order).
- Coordinate networks see points normalised to ``[0, 1]^D`` over a box (:class:`NormalisedBox`).
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ImageGrid",
    "NormalisedBox",
    "lps_from_ras",
    "affine_for_ndim",
    "as_mm_from_voxel",
    "apply_affine",
    "ddf_mm_from_ddf_voxel",
    "ddf_voxel_from_ddf_mm",
    "grid_sample_coords",
]


def lps_from_ras(affine: torch.Tensor) -> torch.Tensor:
    """Flip a homogeneous world-from-voxel matrix between RAS and LPS (the map is its own inverse).

    Args:
        affine: ``(D + 1, D + 1)`` matrix, voxel -> RAS mm (or LPS mm); D is 2 or 3. In 2D the first
            two world axes are flipped, as MONAI and ITK do for 2D images.

    Returns:
        ``(D + 1, D + 1)`` float64 matrix, voxel -> LPS mm (or RAS mm).
    """
    affine = torch.as_tensor(affine, dtype=torch.float64)
    flip = torch.ones(affine.shape[0], dtype=torch.float64)
    flip[:2] = -1.0
    return flip[:, None] * affine


def affine_for_ndim(affine, ndim: int, *, name: str = "affine") -> torch.Tensor:
    """A homogeneous voxel -> world matrix of a ``ndim``-D image, as ``(ndim + 1, ndim + 1)`` float64.

    The one place that reconciles affine sizes with image dimensions. MONAI keeps a ``4 x 4`` affine
    for every image (``MetaTensor(x)``'s default, ``LoadImage`` of a PNG or of a 2D NIfTI): for a 2D
    image its 2D part is used (upper-left ``2 x 2`` block and the first two entries of the last
    column), exactly as ``monai.data.utils.to_affine_nd(2, affine)`` does. The frame (RAS or LPS)
    is kept: in 2D both flip the same first two axes.

    Args:
        affine: ``(ndim + 1, ndim + 1)``, or ``(4, 4)`` when ``ndim`` is 2; tensor, array or nested list.
        ndim: spatial dimension of the image, 2 or 3.
        name: how an error message calls the matrix.

    Raises:
        ValueError: any other shape.
    """
    matrix = torch.as_tensor(affine, dtype=torch.float64).detach().cpu()
    if matrix.shape == (ndim + 1, ndim + 1):
        return matrix
    if ndim == 2 and matrix.shape == (4, 4):
        out = torch.eye(3, dtype=torch.float64)
        out[:2, :2] = matrix[:2, :2]
        out[:2, 2] = matrix[:2, 3]
        return out
    sizes = f"({ndim + 1}, {ndim + 1})" + (" or (4, 4)" if ndim == 2 else "")
    raise ValueError(f"{name} must be a {sizes} homogeneous matrix for a {ndim}D image, got {tuple(matrix.shape)}")


def as_mm_from_voxel(affine, ndim: int, *, name: str = "affine") -> torch.Tensor:
    """Validate a homogeneous voxel -> mm matrix and return it as float64 (``None`` -> identity).

    A 2D image's ``4 x 4`` matrix is reduced to its 2D part (:func:`affine_for_ndim`).

    Raises:
        ValueError: wrong shape, non-finite entries, or a singular linear part.
    """
    if affine is None:
        return torch.eye(ndim + 1, dtype=torch.float64)
    matrix = affine_for_ndim(affine, ndim, name=name)
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name} has non-finite entries: {matrix.tolist()}")
    det = torch.linalg.det(matrix[:ndim, :ndim])
    if abs(float(det)) < 1e-12:
        raise ValueError(f"{name} is not invertible (determinant of its linear part is {float(det):.3g})")
    return matrix


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a homogeneous ``(D + 1, D + 1)`` matrix to points ``(P, D)``; result in the points' dtype.

    CPU points ``(P, 2 or 3)``: the compiled kernel (:func:`monai_inr_reg._ext.affine_forward`;
    torch's product of a (P, 3) by a (3, 3) matrix takes 0.2 ms at 16,384 points, the kernel about 100x
    less): the fits map their points several times a step."""
    m = matrix.to(device=points.device, dtype=points.dtype)
    d = points.shape[-1]
    if points.ndim == 2:
        from .. import _ext

        if _ext.affine_kernel_supports(points):
            return _ext.AffineFunction.apply(m[:d], points)
        return torch.addmm(m[:d, d], points, m[:d, :d].T)  # one operation: this runs several times an iteration
    return points @ m[:d, :d].T + m[:d, d]


@dataclass(frozen=True)
class ImageGrid:
    """The sampling grid of an image: its spatial size and its voxel -> LPS mm matrix.

    Attributes:
        shape: spatial size ``*S`` in array order.
        mm_from_voxel: ``(D + 1, D + 1)`` float64, voxel index -> LPS mm, components (x, y, z).
    """

    shape: tuple[int, ...]
    mm_from_voxel: torch.Tensor

    @classmethod
    def from_ras_affine(cls, shape, affine_ras) -> "ImageGrid":
        """A grid from a MONAI/nibabel RAS affine (``None`` means identity, i.e. 1 mm voxels at 0)."""
        shape = tuple(int(s) for s in shape)
        # no affine = identity in RAS, as for a MetaTensor made without one
        return cls(shape, lps_from_ras(as_mm_from_voxel(affine_ras, len(shape), name="affine")))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def voxel_from_mm(self) -> torch.Tensor:
        return torch.linalg.inv(self.mm_from_voxel)

    @property
    def affine_ras(self) -> torch.Tensor:
        """``(D + 1, D + 1)`` float64 voxel -> RAS mm matrix, as MetaTensor carries it."""
        return lps_from_ras(self.mm_from_voxel)

    @property
    def spacing(self) -> torch.Tensor:
        """Voxel size along each array axis, mm, shape ``(D,)``."""
        return torch.linalg.norm(self.mm_from_voxel[: self.ndim, : self.ndim], dim=0)

    def itk_geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(origin (D,), spacing (D,), direction (D, D))`` float64 of an ITK-style image (ITK,
        SimpleITK, ANTs) whose index ``(i, j, k)`` is array ``[i, j, k]``: its voxel -> physical map
        is this grid's voxel -> LPS mm map (``direction`` columns: the array axes' unit vectors)."""
        matrix = self.mm_from_voxel.numpy()
        d = self.ndim
        spacing = np.linalg.norm(matrix[:d, :d], axis=0)
        return matrix[:d, d].copy(), spacing, matrix[:d, :d] / spacing[None, :]

    def voxel_to_mm(self, points_voxel: torch.Tensor) -> torch.Tensor:
        return apply_affine(self.mm_from_voxel, points_voxel)

    def mm_to_voxel(self, points_mm: torch.Tensor) -> torch.Tensor:
        return apply_affine(self.voxel_from_mm, points_mm)

    def voxel_points(self, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """All voxel indices, shape ``(prod(S), D)``, array order, row-major (C order) like ``reshape``."""
        axes = [torch.arange(s, device=device, dtype=dtype) for s in self.shape]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.ndim)

    def mm_points(self, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """Physical position of every voxel, shape ``(prod(S), D)``, LPS mm, C order."""
        return self.voxel_to_mm(self.voxel_points(device=device, dtype=torch.float64)).to(dtype)

    def corners_mm(self) -> torch.Tensor:
        """The ``2^D`` corner voxel centres in LPS mm, float64, shape ``(2^D, D)``."""
        corners = torch.cartesian_prod(*[torch.tensor([0.0, s - 1.0], dtype=torch.float64) for s in self.shape])
        return self.voxel_to_mm(corners.reshape(-1, self.ndim))

    def center_mm(self) -> torch.Tensor:
        """Physical centre of the grid, float64 ``(D,)``, LPS mm."""
        return self.corners_mm().mean(0)

    def center_of_mass_mm(self, image: torch.Tensor) -> torch.Tensor:
        """Intensity-weighted centre of an image on this grid, float64 ``(D,)``, LPS mm.

        Args:
            image: ``(1, *S)`` or ``(*S)``; negative values weigh 0. An image with no positive
                value has the grid centre.
        """
        weights = image.detach().reshape(self.shape).to(torch.float64).clamp_min(0).cpu()
        total = float(weights.sum())
        if not total > 0:
            return self.center_mm()
        # the map voxel -> mm is affine, so the centre in mm is the mapped centre in voxels; per-axis
        # marginals avoid a (prod(S), D) table of points (165 MB for a 160 x 192 x 224 volume)
        axes = range(self.ndim)
        voxel = torch.stack([
            (weights.sum(dim=tuple(b for b in axes if b != a)) * torch.arange(n, dtype=torch.float64)).sum()
            for a, n in zip(axes, self.shape)
        ]) / total
        return self.voxel_to_mm(voxel[None])[0]

    def downsampled(self, factor: float) -> "ImageGrid":
        """A coarser grid over the same physical extent (voxel centres span the same corners)."""
        if factor <= 1:
            return self
        new_shape = tuple(max(2, int(round((s - 1) / factor)) + 1) for s in self.shape)
        scale = torch.tensor([(s - 1) / max(n - 1, 1) for s, n in zip(self.shape, new_shape)], dtype=torch.float64)
        m = self.mm_from_voxel.clone()
        m[: self.ndim, : self.ndim] = m[: self.ndim, : self.ndim] * scale[None, :]
        return ImageGrid(new_shape, m)


@dataclass(frozen=True)
class NormalisedBox:
    """An axis-aligned LPS box mapped onto ``[0, 1]^D``: the input frame of the coordinate networks.

    Attributes:
        low_mm: ``(D,)`` float64 lower corner, LPS mm.
        size_mm: ``(D,)`` float64 edge lengths, mm; one isotropic scale is used for all axes
            (the largest edge), so hash cells are cubes in mm and motion is not anisotropically
            penalised.
    """

    low_mm: torch.Tensor
    size_mm: torch.Tensor

    @classmethod
    def around(cls, *grids: ImageGrid, margin: float = 0.05) -> "NormalisedBox":
        """The smallest cube-scaled box holding every grid's voxel centres, plus a relative margin."""
        corners = torch.cat([g.corners_mm() for g in grids])
        low, high = corners.min(0).values, corners.max(0).values
        edge = float((high - low).max()) * (1.0 + 2.0 * margin)
        center = (low + high) / 2
        return cls(center - edge / 2, torch.full_like(center, edge))

    def to_unit(self, points_mm: torch.Tensor) -> torch.Tensor:
        """LPS mm ``(P, D)`` -> ``[0, 1]^D`` (outside the box maps outside ``[0, 1]``)."""
        return (points_mm - self._low_as(points_mm.device, points_mm.dtype)) / self.scale_mm()

    def scale_mm(self) -> float:
        """Edge length in mm of the (cubic) box: multiply a unit-box displacement by this to get mm."""
        return self._edge_mm

    @functools.cached_property
    def _edge_mm(self) -> float:
        return float(self.size_mm[0])

    def _low_as(self, device, dtype) -> torch.Tensor:
        """``low_mm`` on ``device`` in ``dtype``, converted once (the fits call :meth:`to_unit` every iteration)."""
        cache = self.__dict__.setdefault("_low_cache", {})  # a frozen dataclass: the cache bypasses __setattr__
        key = (torch.device(device), dtype)
        if key not in cache:
            cache[key] = self.low_mm.to(device=device, dtype=dtype)
        return cache[key]


def ddf_mm_from_ddf_voxel(ddf_voxel: torch.Tensor, mm_from_voxel: torch.Tensor) -> torch.Tensor:
    """Voxel displacement on a grid -> the same displacement in LPS mm.

    Args:
        ddf_voxel: ``(D, *S)`` voxel units along the grid's array axes (MONAI ``Warp`` convention).
        mm_from_voxel: ``(D + 1, D + 1)`` voxel -> LPS mm matrix of that grid.

    Returns:
        ``(D, *S)`` displacement in LPS mm, components (x, y, z), same dtype as ``ddf_voxel``.
    """
    d = ddf_voxel.shape[0]
    linear = mm_from_voxel[:d, :d].to(ddf_voxel.device, ddf_voxel.dtype)
    return torch.einsum("ij,j...->i...", linear, ddf_voxel)


def ddf_voxel_from_ddf_mm(ddf_mm: torch.Tensor, mm_from_voxel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`ddf_mm_from_ddf_voxel`: LPS mm ``(D, *S)`` -> voxel units along array axes."""
    d = ddf_mm.shape[0]
    inverse = torch.linalg.inv(mm_from_voxel[:d, :d].to(torch.float64)).to(ddf_mm.device, ddf_mm.dtype)
    return torch.einsum("ij,j...->i...", inverse, ddf_mm)


def grid_sample_coords(points_voxel: torch.Tensor, shape) -> torch.Tensor:
    """Voxel indices ``(..., D)`` in array order -> ``grid_sample`` coordinates (``align_corners=True``).

    ``grid_sample`` wants the last axis reversed (x = last array axis) and ``[-1, 1]`` spanning the
    first to the last voxel centre.
    """
    size = torch.tensor([max(int(s) - 1, 1) for s in shape], device=points_voxel.device, dtype=points_voxel.dtype)
    return (2.0 * points_voxel / size - 1.0).flip(-1)
