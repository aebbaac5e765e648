"""Searches for a stage's start: a global one for the first stage (``initial_alignment: search``),
and a bounded one for a grid motion's field (:func:`bounded_field`).

Candidate starts, each a ``(D + 1, D + 1)`` float64 map fixed LPS mm -> moving LPS mm: the identity
(the grids placed on each other through their affines), the centre of mass (as ANTs and ITK
initialise), the principal axes (the intensity-weighted moments of both images, as ITK's and ANTs'
moments initialisers; every sign choice that is a rotation), and quarter turns about each axis
through the centres of mass (as ANTs' ``affine_initializer`` and the several-start practice of
elastix users). Each is scored by a similarity on the images smoothed to a coarse level; the best
few get a short rigid fit through the one fit loop (:func:`monai_inr_reg.fit.fit_stage`) and the
best score after it wins.

:func:`bounded_field` gives a grid motion (:class:`~monai_inr_reg.motion.GridMotion`) its start: the
best shift of each grid cell within a radius, by MIND-SSC, from a discrete search
(:mod:`monai_inr_reg.core.discrete`).
"""

from __future__ import annotations

import itertools
import math

import torch

from .core.discrete import block_mean, coupled_displacements, displacement_costs
from .core.grid import ImageGrid, apply_affine
from .core.linear import about_center
from .core.losses import mind_ssc
from .core.sample import sample_image
from .config import resolve_stage
from .fit import fit_stage
from .motion import GridMotion, make_motion
from .objectives import Similarity
from .pair import ImagePair, initial_matrix

__all__ = ["candidate_starts", "search_start", "bounded_field", "SEARCH"]

# what the search does: level (voxels of smoothing), how many candidates get a short fit, and that
# fit (a stage over base.yaml's defaults; no guard: the fits are compared with each other)
SEARCH = {"smoothing_voxels": 2.0, "keep": 3, "fit": {"name": "search", "motion": "rigid", "objective": "mutual_information",
                                                      "iterations": 60, "smoothing_voxels": [2.0], "bins": 16,
                                                      "fixed_points": 2048, "guard": False}}
_MOMENT_POINTS = 1 << 18  # voxels (an even stride) from which the moments are taken


def _moments(values: torch.Tensor, points_mm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity-weighted centre ``(D,)`` and covariance ``(D, D)`` (float64) of values ``(N,)`` at ``(N, D)`` mm points."""
    weights = values.detach().to(torch.float64).clamp_min(0)
    points = points_mm.detach().to(torch.float64)
    total = weights.sum().clamp_min(1e-12)
    center = (weights[:, None] * points).sum(0) / total
    centred = points - center
    return center, (weights[:, None] * centred).T @ centred / total


def _grid_samples(image: torch.Tensor, grid: ImageGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``(N,)`` and LPS mm points ``(N, D)`` of up to ``_MOMENT_POINTS`` voxels of ``image`` ``(1, *S)`` (even stride)."""
    flat = image.reshape(-1)
    index = torch.arange(0, flat.numel(), max(1, flat.numel() // _MOMENT_POINTS), device=flat.device)
    voxel = torch.stack(torch.unravel_index(index, grid.shape), dim=1).to(torch.float64).cpu()
    return flat.index_select(0, index).cpu(), apply_affine(grid.mm_from_voxel, voxel)


def _quarter_turns(ndim: int) -> list[tuple[str, torch.Tensor]]:
    turns = []
    axes = [(0, 1)] if ndim == 2 else [(1, 2), (2, 0), (0, 1)]  # 3D: about x, y, z
    for (a, b), quarter in itertools.product(axes, (1, 2, 3)):
        angle = quarter * math.pi / 2
        rotation = torch.eye(ndim, dtype=torch.float64)
        c, s = round(math.cos(angle)), round(math.sin(angle))
        rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
        name = f"{quarter * 90} deg" + ("" if ndim == 2 else f" about {'xyz'[3 - a - b]}")
        turns.append((name, rotation))
    return turns


def candidate_starts(pair: ImagePair, fixed_grid: ImageGrid, moving_grid: ImageGrid) -> list[tuple[str, torch.Tensor]]:
    """``[(name, matrix)]``: identity, centre of mass, principal axes and quarter turns (see the module)."""
    ndim = pair.ndim
    fixed, moving = pair.moment_images()  # the masks weigh as in the centre-of-mass start
    fixed_center, fixed_cov = _moments(*_grid_samples(fixed, fixed_grid))
    moving_center, moving_cov = _moments(*_grid_samples(moving, moving_grid))
    shift = moving_center - fixed_center
    starts = [("identity", torch.eye(ndim + 1, dtype=torch.float64)),
              ("centre of mass", initial_matrix(pair, fixed_grid, moving_grid, "center_of_mass"))]
    _, fixed_axes = torch.linalg.eigh(fixed_cov)
    _, moving_axes = torch.linalg.eigh(moving_cov)
    for signs in itertools.product((1.0, -1.0), repeat=ndim):
        rotation = moving_axes @ torch.diag(torch.tensor(signs, dtype=torch.float64)) @ fixed_axes.T
        if float(torch.linalg.det(rotation)) > 0:
            starts.append((f"principal axes {''.join('+' if s > 0 else '-' for s in signs)}",
                           about_center(rotation, shift, fixed_center)))
    starts += [(name, about_center(rotation, shift, fixed_center)) for name, rotation in _quarter_turns(ndim)]
    return starts


def search_start(pair: ImagePair, fixed_grid: ImageGrid, moving_grid: ImageGrid, *, seed: int = 0,
                 device=None) -> tuple[torch.Tensor, list[dict]]:
    """The best start of :func:`candidate_starts` after a short rigid fit (see :data:`SEARCH`).

    Returns:
        ``(matrix, record)``: the fitted ``(D + 1, D + 1)`` float64 start, and per candidate its
        name, score before and (the best few) after the short fit (minus mutual information, lower
        is better), and whether it won.
    """
    device = pair.fixed_values.device if device is None else device
    stage, motion_config = resolve_stage(SEARCH["fit"])
    similarity = Similarity(pair, stage)
    similarity.set_level(SEARCH["smoothing_voxels"])
    record = []
    for name, matrix in candidate_starts(pair, fixed_grid, moving_grid):
        record.append({"name": name, "score": similarity.score(lambda p, m=matrix: apply_affine(m, p)), "matrix": matrix})
    ranked = sorted(range(len(record)), key=lambda i: record[i]["score"])[: SEARCH["keep"]]
    generator = torch.Generator(device=device).manual_seed(seed)  # the search's own: later stages sample as without it
    best, best_score, fitted = ranked[0], math.inf, record[ranked[0]]["matrix"]  # all inf: the best unfitted
    for i in ranked:
        motion = make_motion(motion_config, pair.center_mm, pair.box, record[i]["matrix"], device)
        motion, _, _, _ = fit_stage(pair, stage, [motion], motion_config, similarity, iterations_scale=1.0,
                                    generator=generator)
        record[i]["fitted_score"] = similarity.score(motion)
        if record[i]["fitted_score"] < best_score:
            best, best_score = i, record[i]["fitted_score"]
            fitted = motion.matrix().detach().to(torch.float64).cpu()
    for i, entry in enumerate(record):
        entry["won"] = i == best
        entry.pop("matrix")
    return fitted, record


def bounded_field(pair: ImagePair, fixed_grid: ImageGrid, motion: GridMotion, radius_voxels: list[int],
                  downsample: list[int]) -> None:
    """Set ``motion``'s field (from zero) by a discrete search, coarse to fine: at each level, the best
    shift of each cell within that level's radius.

    At each level the moving image is resampled onto the fixed grid through ``motion``'s matrix and
    the field of the levels before; both images get MIND-SSC features
    (:func:`~monai_inr_reg.core.losses.mind_ssc`, of the whole images), averaged over blocks of the
    level's ``downsample`` voxels per axis; every shift of whole blocks up to the level's radius is
    scored per cell (:func:`~monai_inr_reg.core.discrete.displacement_costs`; with a fixed mask, over
    the cell's voxels inside it, and a cell with none follows its neighbours; the moving mask does
    not enter) and the shifts are coupled into a smooth field
    (:func:`~monai_inr_reg.core.discrete.coupled_displacements`), which is composed with the field
    before it. A level's cells hold as many of its blocks as the motion's cells hold of the last
    level's (cells ``spacing * downsample / downsample[-1]`` fixed voxels): a coarse level moves big
    cells far, the last one the motion's cells near.

    Args:
        pair: the prepared pair (its normalised images).
        fixed_grid: the fixed image's grid (``motion``'s).
        motion: a grid motion whose spacing is a multiple of ``downsample[-1]``.
        radius_voxels: each level's bound, fixed voxels per axis (a multiple of its ``downsample``);
            nothing moves farther than their sum.
        downsample: each level's search voxel, in fixed voxels per axis.
    """
    ndim = pair.ndim
    points_mm = fixed_grid.mm_points(device=pair.fixed.device)
    moving_voxel_from_fixed_mm = (pair.moving_voxel_from_mm @ motion.matrix().to(torch.float64).cpu()).to(points_mm)
    linear = fixed_grid.mm_from_voxel[:ndim, :ndim].to(device=points_mm.device, dtype=torch.float32)
    fixed_features = mind_ssc(pair.fixed)  # averaged once per block size; the full one is large (12 channels)
    fixed_blocks = {step: block_mean(fixed_features, step) for step in set(downsample)}
    del fixed_features
    fixed_mask = pair.fixed_mask_image()
    before_mm = torch.zeros((ndim,) + tuple(fixed_grid.shape), device=points_mm.device)  # the levels so far, fixed mm

    def before_at(moved_mm):  # the levels before, at fixed LPS mm points (N, D)
        voxel = fixed_grid.mm_to_voxel(moved_mm.to(torch.float64)).to(before_mm)
        return sample_image(before_mm, voxel, padding_mode="border").to(moved_mm)

    for index, (radius, step) in enumerate(zip(radius_voxels, downsample)):
        moving_voxel = apply_affine(moving_voxel_from_fixed_mm, points_mm + before_mm.reshape(ndim, -1).T)
        moving_on_fixed = sample_image(pair.moving, moving_voxel, padding_mode="border")  # its edge continues, as in the search
        del moving_voxel
        moving_blocks = block_mean(mind_ssc(moving_on_fixed.T.reshape(pair.fixed.shape)), step)
        cell = motion.spacing_voxels * step // downsample[-1]
        weight = None if fixed_mask is None else block_mean(fixed_mask, step)  # the share of each block inside
        costs = displacement_costs(fixed_blocks[step], moving_blocks, radius // step, cell // step, weight=weight)
        cell_weight = None if weight is None else block_mean(weight, cell // step)
        shifts = coupled_displacements(costs, radius // step, weight=cell_weight) * step
        level = motion if index == len(radius_voxels) - 1 else GridMotion(fixed_grid, cell).to(points_mm.device)
        with torch.no_grad():
            level.displacement_mm.copy_(torch.einsum("ca,a...->c...", linear, shifts))
            if level is not motion:  # x -> x + w(x), then the levels before: w(x) + before(x + w(x))
                own = level(points_mm) - points_mm
                before_mm = (own + before_at(points_mm + own)).T.reshape(before_mm.shape)
    # the motion's nodes take the composite: their own shift, then the levels before where it lands
    nodes = [torch.arange(n, dtype=torch.float64) * motion.spacing_voxels + (motion.spacing_voxels - 1) / 2
             for n in motion.displacement_mm.shape[1:]]
    nodes_mm = apply_affine(fixed_grid.mm_from_voxel, torch.stack(torch.meshgrid(*nodes, indexing="ij"), -1).reshape(-1, ndim))
    with torch.no_grad():
        own = motion.displacement_mm.reshape(ndim, -1).T
        composite = own + before_at(nodes_mm.to(own) + own)
        motion.displacement_mm.copy_(composite.T.reshape(motion.displacement_mm.shape))
