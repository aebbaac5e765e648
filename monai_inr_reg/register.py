"""Register one image pair: run the preset's stages in order and return the result.

A preset is a list of stages (:mod:`monai_inr_reg.config`); each names a motion model, an
objective (:mod:`monai_inr_reg.objectives`: the paper's L2 through an image net, or the real images
under a fitted intensity map or mutual information), its levels, learning rates and regularisers.
Each stage starts from the previous stage's map (a stage with the previous stage's motion
continues it) and runs through the one fit loop (:func:`monai_inr_reg.fit.fit_stage`). This
module only orchestrates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import sys
import time

import torch

from ._ext import kernel_available
from .config import PARAMETRIC_MODELS, load_preset, motion_for_dimension, stage_for_dimension, stage_iterations
from .core.grid import ImageGrid, ddf_voxel_from_ddf_mm
from .fit import fit_stage
from .inputs import as_image_and_grid, as_initial_matrix, as_mask
from .motion import dense_displacement_mm, make_motion
from .nn import CoordinateNet
from .objectives import QUALITY_STAGE, ImageNetL2, Similarity, match_quality, weak_after_pose
from .pair import initial_matrix, normalise_intensity, prepare_pair
from .result import RegistrationResult
from .start import bounded_field, search_start

__all__ = ["register", "register_on_grids", "as_image_and_grid", "normalise_intensity"]

logger = logging.getLogger(__name__)

_WEAK_EVIDENCE_ACTION = {  # what the warning says was done, by `on_weak_evidence`
    "bounded": "Registered again from the images as placed (their headers, or the initial_transform given) with "
               "the 'bounded' preset, which moves nothing farther than its searches reach; on_weak_evidence='warn' "
               "returns the first registration.",
    "as_placed": "Returned the images as placed (their headers, or the initial_transform given); "
                 "on_weak_evidence='warn' returns the registration.",
    "warn": "Check it.",
}


def register(fixed, moving, preset: str | dict = "deformable", *, fixed_mask=None, moving_mask=None,
             initial_transform=None, seed: int = 0, device=None, progress=None, **overrides) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``.

    Args:
        fixed: the fixed image: a file path (anything MONAI's ``LoadImage`` reads), a channel-first
            ``(C, *S)`` MetaTensor (its RAS affine is used; MONAI's ``4 x 4`` affine of a 2D image
            too), or a tensor / array ``(C, *S)`` (no affine = identity, RAS). 2D or 3D; a 2D colour
            image is registered by its luminance (see :mod:`monai_inr_reg.inputs`).
        moving: the moving image, same kinds; may be on another grid (size, spacing, orientation).
        preset: a preset name (``"rigid"``, ``"affine"``, ``"deformable"``, ``"multimodal-rigid"``,
            ``"multimodal-deformable"``, the paper's ``"paper-rigid"`` ...; ``monai-inr-reg presets
            list``), a YAML path or a config dict. ``monai-inr-reg presets show NAME`` prints its stages.
        fixed_mask: optional mask on the fixed grid (same kinds; nonzero = inside): every data term
            uses only fixed voxels inside it (as ANTs' ``-x`` and elastix's ``-fMask``).
        moving_mask: optional mask on the moving grid: data terms use only points that the motion
            takes inside it.
        initial_transform: optional start replacing ``initial_alignment``: a ``(D + 1, D + 1)``
            matrix, fixed LPS mm -> moving LPS mm, or a linear ITK transform file (``.h5``, ``.tfm``)
            or ANTs ``.mat`` (the same direction: what ``antsApplyTransforms`` takes to warp the
            moving image onto the fixed one).
        seed: seeds network initialisation and point sampling (results are deterministic on CPU).
        device: torch device; default CUDA when available, else CPU.
        progress: show a tqdm bar; default from the config (``auto``: only on a TTY).
        overrides: merged into the preset (see :func:`monai_inr_reg.config.load_preset`), e.g.
            ``iterations_scale=0.5``, ``stages={"deformable": {"smoothness_weight": 0.5}}`` (changes
            by stage name), or ``stages=[{"name": ..., "motion": ..., "objective": ...}, ...]`` (a list of your own).

    Returns:
        :class:`~monai_inr_reg.result.RegistrationResult` (conventions documented there).

    Raises:
        ValueError: bad images (NaN/inf, empty, constant, several channels in 3D, wrong dimension,
            singular affine), a mask off its image's grid, an unreadable or non-linear initial
            transform, unknown preset or option; raised before any optimisation.
        FileNotFoundError: a path that does not exist.
    """
    config = load_preset(preset, **overrides)
    fixed_image, fixed_grid = as_image_and_grid(fixed, "fixed")
    moving_image, moving_grid = as_image_and_grid(moving, "moving")
    return register_on_grids(fixed_image, fixed_grid, moving_image, moving_grid, config, fixed_mask=fixed_mask,
                             moving_mask=moving_mask, initial_transform=initial_transform, seed=seed, device=device,
                             progress=progress)


@contextlib.contextmanager
def _gc_frozen():
    """Python's cyclic garbage collector leaves the objects that exist when the stages start alone
    until they end (``gc.freeze``): each iteration makes hundreds of short-lived objects, and the
    collections they trigger otherwise walk every object of torch, MONAI and ITK (3 % of a 3D
    registration's time, measured). Nothing is kept longer than the registration."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _objective(stage: dict, pair, image_net, config: dict, motion_config: dict):
    if stage["objective"] == "image_net":
        return ImageNetL2(pair, image_net, stage, multimodal=config["multimodal"],
                          learning_rate=config["image"]["learning_rate"])
    return Similarity(pair, stage, variance_gradient=motion_config["model"] == "hash")


def register_on_grids(fixed_image: torch.Tensor, fixed_grid: ImageGrid, moving_image: torch.Tensor,
                      moving_grid: ImageGrid, config: dict, *, fixed_mask=None, moving_mask=None,
                      initial_transform=None, seed: int = 0, device=None, progress=None) -> RegistrationResult:
    """Register images whose grids are given explicitly (the entry point of every adapter).

    Args:
        fixed_image: ``(1, *S_fixed)`` float tensor; array axes are ``fixed_grid``'s voxel axes.
        fixed_grid: its :class:`ImageGrid` (LPS mm).
        moving_image: ``(1, *S_moving)`` float tensor on ``moving_grid``.
        moving_grid: its :class:`ImageGrid`.
        config: a validated config (:func:`monai_inr_reg.config.load_preset`).
        fixed_mask: optional ``(*S_fixed)`` mask on ``fixed_grid`` (nonzero = inside).
        moving_mask: optional ``(*S_moving)`` mask on ``moving_grid``.
        initial_transform, seed, device, progress: as in :func:`register`.
    """
    if fixed_grid.ndim != moving_grid.ndim:
        raise ValueError(f"register(): 'fixed' is {fixed_grid.ndim}D but 'moving' is {moving_grid.ndim}D; both must have the same dimension")
    fixed_mask = as_mask(fixed_mask, "fixed_mask", fixed_grid, "fixed")
    moving_mask = as_mask(moving_mask, "moving_mask", moving_grid, "moving")
    initial_transform = as_initial_matrix(initial_transform, fixed_grid.ndim)
    config = load_preset(config)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        kernel_available()  # a first build (tens of seconds, once per installation) is not registration time
    start = time.perf_counter()
    # Adam's second moments of tiny gradients underflow to denormals, which make CPU matmuls ~100x
    # slower; flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    pair = prepare_pair(fixed_image, fixed_grid, moving_image, moving_grid, config, device, fixed_mask, moving_mask)
    scale = float(config["iterations_scale"])
    stages = [stage_for_dimension(stage, pair.ndim) for stage in config["stages"]]
    show = config["progress"] if progress is None else progress
    show = sys.stderr.isatty() if show == "auto" else bool(show)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(sum(stage_iterations(s, scale, pair.ndim)) for s in stages), desc="monai_inr_reg", leave=False)
    history: list[float] = []
    records: list[dict] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _gc_frozen():
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        how = "initial_transform" if initial_transform is not None else config["initial_alignment"]
        start_record = {"alignment": how}
        if how == "search":
            initial, start_record["candidates"] = search_start(pair, fixed_grid, moving_grid, seed=seed)
        elif how == "initial_transform":
            initial = initial_transform
        else:
            initial = initial_matrix(pair, fixed_grid, moving_grid, how)
        start_record["seconds"] = time.perf_counter() - start
        image_net, motion, motion_name, matrix = None, None, None, initial
        classical = [s for s in stages if s["objective"] != "image_net"]
        quality_stage = classical[-1] if classical else QUALITY_STAGE
        # weak evidence is judged on mutual information (its thresholds are in nats), by the last stage fitting it:
        # `deformable` fits 2D fields on local_cc after an affine stage on mutual information
        evidence_stage = next((s for s in reversed(classical) if s["objective"] == "mutual_information"), quality_stage)
        final_parametric = config["motions"][stages[-1]["motion"]]["model"] in PARAMETRIC_MODELS
        quality, early = None, None
        for index, stage in enumerate(stages):
            motion_config = motion_for_dimension(config["motions"][stage["motion"]], pair.ndim)
            if (motion_config["model"] not in PARAMETRIC_MODELS and motion_name is not None
                    and config["motions"][motion_name]["model"] in PARAMETRIC_MODELS
                    and config["on_weak_evidence"] != "warn"):
                # before the first field: a pose that still shares little information will not be returned
                early = match_quality(pair, motion, initial, evidence_stage)
                if weak_after_pose(early):
                    quality = {**early, "weak_evidence": True,
                               "skipped": [s["name"] for s in stages[index:]]}
                    break
            if stage["objective"] == "image_net" and image_net is None:  # one image net, shared by the image-net stages
                image_net = CoordinateNet(pair.ndim, 2 if config["multimodal"] else 1, config["image"]["encoding"],
                                          config["image"]["network"]).to(device)
            if stage["motion"] != motion_name:  # a new motion model starts from the previous stage's map
                motion = make_motion(motion_config, pair.center_mm, pair.box, matrix, device, fixed_grid)
                if any(stage.get("search_radius_voxels", [0])):
                    bounded_field(pair, fixed_grid, motion, stage["search_radius_voxels"], stage["search_downsample"])
            sources = {"previous": lambda: motion,
                       "start": lambda: make_motion(motion_config, pair.center_mm, pair.box, initial, device, fixed_grid)}
            candidates = [sources[name]() for name in stage["candidates"]]
            objective = _objective(stage, pair, image_net, config, motion_config)
            motion, chosen, losses, guard = fit_stage(pair, stage, candidates, motion_config, objective,
                                                      iterations_scale=scale, generator=generator, bar=bar)
            motion_name, matrix = stage["motion"], motion.matrix().detach().to(torch.float64).cpu()
            history.extend(losses)
            records.append({"name": stage["name"], "objective": stage["objective"], "motion": stage["motion"],
                            "iterations": len(losses),
                            "seconds": time.perf_counter() - start - start_record["seconds"] - sum(r["seconds"] for r in records),
                            "final_loss": losses[-1] if losses else None, "started_from": stage["candidates"][chosen],
                            "similarity": guard})
            if guard and guard["kept_start"]:
                logger.warning("monai_inr_reg: stage %r matched the images worse at its end (%.4g) than at its start (%.4g); "
                               "its start was handed on (guard)", stage["name"], guard["end"], guard["start"])
            if len(candidates) > 1 and records[-1]["started_from"] == "start":
                logger.info("monai_inr_reg: stage %r matched the images better when started from the initial alignment "
                            "than from the previous stages' result; it continued from there", stage["name"])
        if quality is None:
            quality = match_quality(pair, motion, initial, quality_stage)
            if evidence_stage is not quality_stage:
                evidence = match_quality(pair, motion, initial, evidence_stage)
                if evidence["weak_evidence"]:
                    quality = evidence  # reported in the measure that found it
        better_start = min(quality["no_registration"], quality["start"])
        if quality["suspect"]:
            logger.warning("monai_inr_reg: SUSPECT result: the images match worse after the registration (%s %.4g) "
                           "than %s (%.4g); check the start (initial_transform, initial_alignment) and the masks",
                           quality["metric"], quality["final"],
                           "with no registration" if quality["no_registration"] <= quality["start"] else
                           "at its start", better_start)
        returned = config["on_weak_evidence"] if quality["weak_evidence"] else "registration"
        quality["returned"] = "registration" if returned == "warn" else returned
        if quality["weak_evidence"]:
            found = (f"after the pose stages still {-quality['final']:.3g} (stages {quality['skipped']} not run)"
                     if "skipped" in quality else f"the registration multiplied it to {-quality['final']:.3g}")
            logger.warning("monai_inr_reg: WEAK EVIDENCE: the images share little information at the start (mutual "
                           "information %.3g nats), and %s; the alignment may not follow the anatomy (fields of "
                           "view or contents that differ, e.g. MR -> TRUS). %s", -better_start, found,
                           _WEAK_EVIDENCE_ACTION[returned])
        # the similarity cannot judge these images, so neither the fit nor our own start (centre of mass,
        # search) is evidence: return only what the inputs state, or (bounded, below) a field within bounds
        as_placed = returned == "as_placed"
        if as_placed:
            matrix = torch.eye(pair.ndim + 1, dtype=torch.float64) if initial_transform is None else initial_transform
            motion = make_motion({"model": "affine"}, pair.center_mm, pair.box, matrix, device)
    if bar is not None:
        bar.close()
    stage_seconds = {"start": start_record["seconds"], **{r["name"]: r["seconds"] for r in records}}
    ends = [sum(r["iterations"] for r in records[: i + 1]) for i in range(len(records))]
    stage_ends = [(r["name"], end) for r, end in zip(records, ends)]
    if returned == "bounded":
        # registered again from the images as placed; what ran first stays in stages and quality
        bounded = register_on_grids(fixed_image, fixed_grid, moving_image, moving_grid,
                                    load_preset("bounded", on_weak_evidence="as_placed"), fixed_mask=fixed_mask,
                                    moving_mask=moving_mask, initial_transform=initial_transform, seed=seed,
                                    device=device, progress=False)
        again = {f"bounded.{name}": seconds for name, seconds in bounded.stage_seconds.items() if name != "field"}
        return dataclasses.replace(
            bounded, seconds=time.perf_counter() - start, loss_history=history + bounded.loss_history,
            stages=records + bounded.stages,
            stage_ends=stage_ends + [(name, len(history) + end) for name, end in bounded.stage_ends],
            stage_seconds={**stage_seconds, **again, "field": bounded.stage_seconds["field"]},
            quality={**quality, "bounded": bounded.quality})
    every_voxel = pair.fixed_points_mm if pair.fixed_index is None else None  # computed already, unless masked
    ddf_mm = dense_displacement_mm(motion, fixed_grid, device, points_mm=every_voxel)
    ddf = ddf_voxel_from_ddf_mm(ddf_mm, fixed_grid.mm_from_voxel).to(torch.float32)
    stage_seconds["field"] = time.perf_counter() - start - sum(stage_seconds.values())
    return RegistrationResult(
        fixed_grid=fixed_grid,
        moving_grid=moving_grid,
        ddf=ddf,
        matrix_mm=matrix,
        parametric=as_placed or final_parametric,
        motion=stages[-1]["motion"],
        moving_image=moving_image.detach().cpu(),
        seconds=time.perf_counter() - start,
        loss_history=history,
        start=start_record,
        stages=records,
        stage_ends=stage_ends,
        stage_seconds=stage_seconds,
        refined_from_start=any(r["started_from"] == "start" for r in records),
        quality=quality,
        config=config,
    )
