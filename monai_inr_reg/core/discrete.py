"""Bounded discrete displacement search: the best integer shift of each cell of a coarse grid, within a
radius, found by trying every shift, then made smooth by coupling neighbouring cells.

The scheme of ConvexAdam's first step (Siebert, Hansen and Heinrich, "Fast 3D registration with
accurate optimisation and little learning", Learn2Reg 2021; Heinrich et al., "Towards realtime
multimodal fusion for image-guided interventions using self-similarities", MICCAI 2013): a cost
for every (cell, shift), the cheapest shift per cell, then alternately a smoothed field and the
cheapest shift near it, with a coupling weight that grows. No gradient, so no local minimum inside
the radius; nothing moves farther than the radius.

Every function works on feature images ``(C, *S)`` that live on one grid (2D or 3D, array order);
shifts and displacements are in that grid's voxels.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

__all__ = ["shift_table", "displacement_costs", "coupled_displacements", "box_smooth", "block_mean", "COUPLINGS",
           "TIE_BREAK", "weighted_smooth"]

# coupling weights, in cost per squared voxel of the search grid, applied in turn: from almost free
# cells to a field that follows its neighbours (ConvexAdam-like; MIND-SSC costs are about 0.01-0.1)
COUPLINGS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
# a cell whose costs tie (a featureless region) starts at the smallest shift, not the first in the
# table (a corner, which the smoothing would spread): measured on a smooth phantom shifted by
# (4, -2, 2) voxels, mean error 0.16 instead of 0.84 voxels; prostate pairs unchanged (0.599 vs 0.595)
TIE_BREAK = 1e-6  # cost per squared voxel of shift


def _pool(ndim: int):
    return F.avg_pool2d if ndim == 2 else F.avg_pool3d


def shift_table(ndim: int, radius: int) -> torch.Tensor:
    """Every integer shift with each component in ``[-radius, radius]``: ``(K, D)`` float32, C order."""
    return torch.tensor(list(itertools.product(range(-radius, radius + 1), repeat=ndim)), dtype=torch.float32)


def displacement_costs(fixed: torch.Tensor, moving: torch.Tensor, radius: int, cell: int,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean squared feature difference of each cell under each shift.

    Args:
        fixed: ``(C, *S)`` fixed features.
        moving: ``(C, *S)`` moving features on the same grid.
        radius: largest shift per axis (voxels); the moving image's edge voxels continue beyond it.
        cell: cell edge (voxels); the last cell of an axis may be shorter.
        weight: optional ``(1, *S)`` weights >= 0 of the fixed voxels (a fixed mask): each cell's mean
            is weighted by them; a cell of zero weight costs 0 under every shift (its neighbours
            decide, through :func:`coupled_displacements`).

    Returns:
        ``(K, *S_cells)``, ``S_cells = ceil(S / cell)``, one row per shift of :func:`shift_table`:
        ``mean over the cell and channels of (fixed(x) - moving(x + shift))^2``.
    """
    ndim = fixed.ndim - 1
    if moving.shape != fixed.shape:
        raise ValueError(f"displacement_costs(): 'fixed' and 'moving' must have one shape, got {tuple(fixed.shape)} "
                         f"and {tuple(moving.shape)}")
    if weight is not None and weight.shape != (1,) + fixed.shape[1:]:
        raise ValueError(f"displacement_costs(): 'weight' must have shape {(1,) + tuple(fixed.shape[1:])}, "
                         f"got {tuple(weight.shape)}")
    size = fixed.shape[1:]
    padded = F.pad(moving[None], [radius] * (2 * ndim), mode="replicate")[0]
    costs = []
    for shift in itertools.product(range(-radius, radius + 1), repeat=ndim):
        window = (slice(None),) + tuple(slice(radius + s, radius + s + n) for s, n in zip(shift, size))
        squared = (fixed - padded[window]).pow(2).mean(0, keepdim=True)
        costs.append(block_mean(squared if weight is None else squared * weight, cell)[0])
    costs = torch.stack(costs)
    if weight is None:
        return costs
    share = block_mean(weight, cell)  # the cell's mean weight
    return torch.where(share > 0, costs / share.clamp_min(torch.finfo(costs.dtype).tiny), torch.zeros_like(costs))


def block_mean(image: torch.Tensor, block: int) -> torch.Tensor:
    """``image`` ``(C, *S)`` averaged over blocks of ``block`` voxels per axis: ``(C, *ceil(S / block))``
    (the last block of an axis may be shorter; an axis shorter than a block is one block)."""
    size = image.shape[1:]
    kernel = tuple(min(block, n) for n in size)
    return _pool(len(size))(image[None], kernel, stride=block, ceil_mode=True)[0]


def box_smooth(field: torch.Tensor) -> torch.Tensor:
    """``field`` ``(D, *S)`` averaged over each voxel's 3^D neighbourhood (edges repeated)."""
    ndim = field.ndim - 1
    return _pool(ndim)(F.pad(field[None], [1] * (2 * ndim), mode="replicate"), 3, stride=1)[0]


def weighted_smooth(field: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`box_smooth` of ``field`` ``(D, *S)`` weighted by ``weight`` ``(1, *S)`` (>= 0): each voxel
    the weighted mean of its 3^D neighbourhood. Where that holds no weight, the voxel takes the mean
    of its neighbours that have a value, ring by ring from the weighted ones (all zero when no voxel
    has weight)."""
    total = box_smooth(weight)
    known = (total > 0).to(field.dtype)
    smoothed = torch.where(total > 0, box_smooth(field * weight) / total.clamp_min(torch.finfo(field.dtype).tiny), 0.0)
    while bool(known.any()) and not bool(known.all()):
        count = box_smooth(known)
        ring = (count > 0) & (known == 0)
        filled = box_smooth(smoothed * known) / count.clamp_min(torch.finfo(field.dtype).tiny)
        smoothed, known = torch.where(ring, filled, smoothed), known + ring.to(known.dtype)
    return smoothed


def coupled_displacements(costs: torch.Tensor, radius: int, couplings=COUPLINGS,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """A smooth field of cell shifts from :func:`displacement_costs` ``(K, *S_cells)``.

    Starts from each cell's cheapest shift (ties to the smallest, :data:`TIE_BREAK`); for each
    coupling weight ``theta`` in turn, the field is smoothed (:func:`box_smooth`) and each cell takes
    the shift minimising ``cost + theta * |shift - smoothed|^2``. Returns the last field smoothed once
    more: ``(D, *S_cells)`` float32, voxels, each component within ``[-radius, radius]``.

    ``weight``: optional ``(1, *S_cells)`` confidence of each cell (the share of it inside a fixed
    mask): the smoothing is :func:`weighted_smooth`, so a cell of no weight takes the shifts of the
    nearest cells that have some and gives them nothing back.
    """
    ndim = costs.ndim - 1
    shifts = shift_table(ndim, radius).to(costs.device)
    if shifts.shape[0] != costs.shape[0]:
        raise ValueError(f"coupled_displacements(): {costs.shape[0]} costs per cell, but radius {radius} gives "
                         f"{shifts.shape[0]} shifts in {ndim}D")
    smooth = box_smooth if weight is None else (lambda field: weighted_smooth(field, weight))
    to_field = (ndim,) + tuple(range(ndim))  # (*S_cells, D) -> (D, *S_cells)
    table = shifts.reshape((-1, ndim) + (1,) * ndim)
    field = shifts[(costs + TIE_BREAK * table.pow(2).sum(1)).argmin(0)].permute(to_field)
    for theta in couplings:
        distance = (table - smooth(field)[None]).pow(2).sum(1)
        field = shifts[(costs + float(theta) * distance).argmin(0)].permute(to_field)
    return smooth(field)
