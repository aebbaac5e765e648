"""The one fit loop: every stage of every preset runs through :func:`fit_stage`.

Per iteration: sample fixed voxels, move them with the motion, evaluate the stage's objective
(:mod:`monai_inr_reg.objectives`), add the motion's regularisers, take one Adam step, record the
data term. Per level (the stage's ``smoothing_voxels``): the objective switches to that level's
images and the learning rate to that level's factor; a level ends after its iterations, or earlier
when its loss has stopped improving (``convergence_window``; the schedule then goes on from where
the level was planned to end). Nothing else in the package trains anything.
"""

from __future__ import annotations

import copy
import math

import torch

from .config import learning_rate_factors, stage_for_dimension, stage_iterations
from .core.encoding import level_weights
from .motion import GridMotion, HashMotion
from .objectives import field_regulariser, penalises_field
from .optim import adam
from .pair import ImagePair

__all__ = ["fit_stage", "fixed_points_per_iteration", "learning_rate_factor", "motion_parameter_groups"]

BAR_EVERY = 25  # iterations between updates of the loss shown on the progress bar
# finest motion cells narrower than this many fixed voxels: 256 regulariser points let a 2D field fold where
# 1,024 did not (64 x 64 at finest 64: 1.2-voxel cells); from 1.8 on as good (docs/benchmarks.md, thirteenth session)
FINE_CELL_VOXELS = 1.5


def learning_rate_factor(step: int, total: int, final_factor: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` share of steps, then cosine decay to ``final_factor``.

    The warm-up matters: while the image net is still flat its gradients are noise, and Adam turns
    noise into full-size steps that walk the motion away.
    """
    t = step / max(total - 1, 1)
    ramp = min(1.0, (step + 1) / (warmup * total)) if warmup > 0 else 1.0
    return ramp * (final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * t)))


def motion_parameter_groups(motion, motion_config: dict) -> list[dict]:
    """Adam groups of a motion at its ``learning_rate`` (hash motions: tables and MLP apart), scheduled."""
    lr = motion_config["learning_rate"]
    if isinstance(motion, HashMotion):
        return [{"params": motion.net.encoding_parameters(), "lr": float(lr["encoding"]), "scale": True},
                {"params": motion.net.network_parameters(), "lr": float(lr["network"]), "scale": True}]
    return [{"params": list(motion.parameters()), "lr": float(lr), "scale": True}]


def converged(losses: list[float], window: int, tolerance: float) -> bool:
    """Whether the last ``window`` losses have stopped improving: the least-squares line through them
    predicts a drop over the window smaller than ``tolerance`` times their mean magnitude (ANTs'
    convergence window, on the raw data term; deterministic for a seed)."""
    if window < 2 or len(losses) < window:
        return False
    tail = losses[-window:]
    mean_i, mean_l = (window - 1) / 2.0, sum(tail) / window
    slope = sum((i - mean_i) * (v - mean_l) for i, v in enumerate(tail)) / sum((i - mean_i) ** 2 for i in range(window))
    return -slope * window < tolerance * max(abs(mean_l), 1e-12)


def fixed_points_per_iteration(stage: dict, motion, level: int = 0, levels_on: int | None = None) -> int:
    """``fixed_points`` (of ``level`` when it is a list), and with ``fixed_points_cover_table`` (hash
    motions) at least one per stored entry of the finest hash level in use (``min((R + 1)^D,
    2^log2_hashmap_size)``; ``levels_on``: how many are, coarsest first; None: all), so that every
    entry gets a gradient about every iteration (3D brains: 300 x 4096 points gave Dice 0.69,
    300 x 16384 0.72). While a coarse-to-fine schedule has the fine levels off, their entries get
    no gradient, and points to cover them would buy nothing."""
    points = stage["fixed_points"]
    points = int(points[level] if isinstance(points, (list, tuple)) else points)
    if stage.get("fixed_points_cover_table") and isinstance(motion, HashMotion):
        sizes = motion.net.encoding.spec.sizes
        points = max(points, sizes[(len(sizes) if levels_on is None else max(levels_on, 1)) - 1])
    return points


def regulariser_points(stage: dict, pair: ImagePair, finest_resolution: float) -> int:
    """The field regulariser's points per iteration of a hash stage (resolved for the pair's dimension,
    :func:`~monai_inr_reg.config.stage_for_dimension`): ``penalty_points``, or
    ``fine_field_penalty_points`` (when not 0) where the motion's finest cell,
    the box edge over ``finest_resolution``, spans fewer than ``FINE_CELL_VOXELS`` fixed voxels along
    the fixed image's coarsest axis."""
    fine = int(stage.get("fine_field_penalty_points", 0))
    cell_voxels = pair.box.scale_mm() / finest_resolution / float(pair.fixed_spacing_mm.max())
    if fine and cell_voxels < FINE_CELL_VOXELS:
        return fine
    return int(stage["penalty_points"])


def fit_stage(pair: ImagePair, stage: dict, candidates: list, motion_config: dict, objective, *,
              iterations_scale: float, generator: torch.Generator, bar=None) -> tuple[object, int, list[float], dict | None]:
    """Fit one stage (a resolved stage of :func:`monai_inr_reg.config.load_preset`).

    Args:
        pair: the prepared image pair.
        stage: the stage's options (levels, learning rates, schedule, points, regularisers).
        candidates: the motions it may start from (``stage["candidates"]``, in that order); with more
            than one, each runs the first level on the same points and the one with the better data
            term there (``objective.score``) continues.
        motion_config: the candidates' entry of ``motions`` (learning rates; hash: encoding).
        objective: an objective of :mod:`monai_inr_reg.objectives`.
        iterations_scale: multiplies the stage's iterations.
        generator: draws every sampled point (deterministic for a seed).
        bar: an optional tqdm bar, advanced once per iteration.

    Returns:
        ``(motion, chosen, losses, guard)``: the fitted motion, its index in ``candidates``, the data
        term per iteration, and for a stage that compares the real images (``objective.score``),
        ``{"start", "end", "kept_start"}``: its data term at its last level before and after
        (the same metric on the same voxels); with ``guard`` on, a stage that ended worse than it started
        hands on its start (``kept_start``) instead: it made things worse (None: an image-net stage).
    """
    stage = stage_for_dimension(stage, pair.ndim)
    steps_per_level = stage_iterations(stage, iterations_scale, pair.ndim)
    total = sum(steps_per_level)
    if total == 0:
        return candidates[0], 0, [], None
    scored = hasattr(objective, "score")
    received = copy.deepcopy(candidates[0]) if scored else None
    optimizers = []
    for motion in candidates:
        groups = objective.parameter_groups() + motion_parameter_groups(motion, motion_config)
        for group in groups:
            group["base_lr"] = group["lr"]
        optimizers.append(adam(groups))
    n_fixed = pair.fixed_values.shape[0]
    final, warmup, whole = float(stage["final_learning_rate_factor"]), float(stage["warmup"]), stage["schedule"] == "whole"
    share = float(stage.get("coarse_to_fine_share", 0.0))
    window, tolerance = int(stage["convergence_window"]), float(stage["convergence_tolerance"])
    finest = float(motion_config["encoding"]["finest_resolution"]) if "encoding" in motion_config else 0.0
    device = pair.fixed_values.device

    def run_level(motion, optimizer, steps: int, done: int, level_factor: float, show: bool, n_batch: int,
                  level: int, window: int) -> list[float]:
        is_hash = isinstance(motion, HashMotion)
        penalised = is_hash and penalises_field(stage)  # displacement gradients at half the finest motion cell
        penalty_points = regulariser_points(stage, pair, finest) if penalised else 0
        rough_weight = float(stage.get("smoothness_weight", 0.0)) if isinstance(motion, GridMotion) else 0.0
        losses, values = [], []  # the data term per iteration: 0-d tensors; floats for the convergence window
        for step in range(steps):
            factor = learning_rate_factor(done, total, final, warmup) if whole else learning_rate_factor(step, steps, final, warmup)
            for group in optimizer.param_groups:
                group["lr"] = (level_factor * group["base_lr"]) * factor if group["scale"] else group["base_lr"]
            weights, n_points = None, n_batch
            if is_hash and share > 0:
                alpha = min(1.0, (done + 1) / (share * total)) * motion.net.n_levels
                weights = level_weights(alpha, motion.net.n_levels).to(device)
                n_points = min(n_batch, fixed_points_per_iteration(stage, motion, level, math.ceil(alpha)))
            if n_points < n_fixed:
                index = torch.randint(n_fixed, (n_points,), generator=generator, device=device)
                # index_select: 3x faster than advanced indexing for these row gathers (measured)
                fixed_mm, fixed_values = pair.fixed_points_mm.index_select(0, index), objective.fixed_values.index_select(0, index)
            else:
                fixed_mm, fixed_values = pair.fixed_points_mm, objective.fixed_values
            if penalised:
                moved_mm, gradient = motion.moved_and_gradient(fixed_mm, weights, penalty_points, 0.5 / finest)
            else:
                moved_mm = motion(fixed_mm, weights) if is_hash else motion(fixed_mm)
            loss = objective(moved_mm, fixed_values, done=done, total=total, generator=generator)
            objective_and_penalty = loss
            if penalised:
                objective_and_penalty = loss + field_regulariser(gradient, motion.matrix()[:pair.ndim, :pair.ndim], stage)
            elif rough_weight > 0:
                objective_and_penalty = loss + rough_weight * motion.roughness()
            optimizer.zero_grad(set_to_none=True)
            objective_and_penalty.backward()
            optimizer.step()
            losses.append(loss.detach())  # read once per level: on a GPU each read is a host sync
            done += 1
            if show and bar is not None:
                bar.update(1)
                if step % BAR_EVERY == 0 or step == steps - 1:
                    bar.set_postfix_str(f"{stage['name']} loss {float(losses[-1]):.4f}", refresh=False)
            if window:
                values.append(float(losses[-1]))
                if converged(values, window, tolerance):
                    if show and bar is not None:
                        bar.update(steps - len(losses))
                    break
        return torch.stack(losses).tolist() if losses else []

    chosen, done, history = 0, 0, []
    for level, (sigma, steps, level_factor) in enumerate(zip(stage["smoothing_voxels"], steps_per_level,
                                                              learning_rate_factors(stage))):
        objective.set_level(sigma)
        n_batch = min(fixed_points_per_iteration(stage, candidates[0], level), n_fixed)
        if level == 0 and len(candidates) > 1:
            state = generator.get_state()
            runs = []
            for index, (motion, optimizer) in enumerate(zip(candidates, optimizers)):
                generator.set_state(state)  # every candidate sees the same points
                # no convergence stop here: the candidates are compared after the same effort (a start far
                # off can sit on a plateau for its first iterations and then descend)
                runs.append(run_level(motion, optimizer, steps, done, level_factor, index == 0, n_batch, level, 0))
            candidate_scores = objective.scores(candidates)
            chosen = min(range(len(candidates)), key=lambda i: (candidate_scores[i], i))
            losses = runs[chosen]
        else:
            losses = run_level(candidates[chosen], optimizers[chosen], steps, done, level_factor, True, n_batch, level,
                               window)
        history.extend(losses)
        done += steps
    if not scored:
        return candidates[chosen], chosen, history, None
    start_score, end_score = objective.scores([received, candidates[chosen]])  # at the last level
    kept_start = bool(stage.get("guard", False) and end_score > start_score)
    guard = {"start": start_score, "end": end_score, "kept_start": kept_start}
    return (received, 0, history, guard) if kept_start else (candidates[chosen], chosen, history, guard)
