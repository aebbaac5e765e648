"""Objectives and regularisers: what a stage minimises. One signature for every objective.

An objective is called by the fit loop (:func:`monai_inr_reg.fit.fit_stage`) as
``objective(moved_mm, fixed_values, done=, total=, generator=)`` with the moved points ``(P, D)``
(LPS mm, the motion at sampled fixed voxels) and those voxels' values ``(P,)`` (from
``objective.fixed_values``, the current level's), and returns the 0-d data term (lower is
better). ``set_level(sigma_voxels)`` chooses the level's Gaussian smoothing;
``parameter_groups()`` lists what the objective fits besides the motion (the image net).

- :class:`ImageNetL2` (``image_net``): the paper's loss through the image net.
- :class:`Similarity` (``mean_squares``, ``mapped_l2``, ``mutual_information``, ``mind``, ``local_cc``): the real moving
  image at the moved points against the fixed image (as they are, under a fitted intensity map, mutual information, the
  L2 of their MIND-SSC features, or their windowed correlation).
"""

from __future__ import annotations

import math

import torch

from . import _ext
from .core.encoding import level_weights
from .core.grid import apply_affine
from .core.losses import mapped_l2, mutual_information, normalise_rows, window_offsets
from .core.sample import sample_image
from .motion import GridMotion, HashMotion
from .pair import ImagePair

__all__ = ["ImageNetL2", "Similarity", "field_regulariser", "penalises_field", "match_quality", "weak_after_pose"]


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(P,)`` where ``keep`` ``(P,)`` is true (0 when none is)."""
    return (values * keep).sum() / keep.sum().clamp_min(1)


class ImageNetL2:
    """The paper's loss (arXiv 2411.02672, the L2 data term tying the two nets):

    ``mean_y (I_m(y) - M(y))^2 + mean_x (I_f(phi(x)) - F(x))^2``

    at random box points ``y`` (the image net learns the moving image ``M``; border padding outside
    its grid) and at the sampled fixed voxels ``x`` (the image net queried at the moved point must
    reproduce the fixed image ``F``). Single-modal pairs use one channel for both terms (``I_m =
    I_f``); multi-modal pairs give each term its own channel of one net, whose shared hash features
    make aligned structure the cheapest thing to store. With ``image_coarse_to_fine_share`` the
    image net's hash levels fade in over that share of the stage (weights of
    :func:`~monai_inr_reg.core.encoding.level_weights`), so that the motion aligns before the
    image net can memorise both images. With a moving mask, only points inside it count. Where the
    net runs in the compiled kernel (CPU), the loss and its gradients are one compiled node
    (:func:`monai_inr_reg._ext.image_net_l2_kernel`, the same values up to rounding).
    """

    def __init__(self, pair: ImagePair, image_net, stage: dict, *, multimodal: bool, learning_rate: dict):
        self.pair, self.image_net = pair, image_net
        self.moving_points = int(stage["moving_points"])
        self.coarse_to_fine_share = float(stage["image_coarse_to_fine_share"])
        self.fixed_channel, self.moving_channel = (1, 0) if multimodal else (0, 0)
        self.learning_rate = learning_rate
        # a float32 copy of the map used every iteration
        self.moving_voxel_from_unit = pair.moving_voxel_from_unit.to(device=pair.fixed_values.device, dtype=torch.float32)
        self.set_level(0.0)

    def set_level(self, sigma_voxels: float) -> None:
        self.fixed_values, self.moving = self.pair.smoothed(sigma_voxels)

    def parameter_groups(self) -> list[dict]:
        """The image net's tables and MLP at constant learning rates (``scale``: False)."""
        return [{"params": self.image_net.encoding_parameters(), "lr": float(self.learning_rate["encoding"]), "scale": False},
                {"params": self.image_net.network_parameters(), "lr": float(self.learning_rate["network"]), "scale": False}]

    def __call__(self, moved_mm: torch.Tensor, fixed_values: torch.Tensor, *, done: int, total: int,
                 generator: torch.Generator) -> torch.Tensor:
        pair, net = self.pair, self.image_net
        weights = None
        if self.coarse_to_fine_share > 0:
            progress = (done + 1) / (self.coarse_to_fine_share * total)
            weights = level_weights(progress * net.n_levels, net.n_levels).to(moved_mm.device)
        moving_unit = torch.rand(self.moving_points, pair.ndim, generator=generator, device=moved_mm.device)
        moving_voxel = apply_affine(self.moving_voxel_from_unit, moving_unit)
        # border padding: outside its grid the moving image continues its edge (a bright background stays bright)
        moving_values = sample_image(self.moving, moving_voxel, padding_mode="border")[:, 0]
        moved_unit = pair.box.to_unit(moved_mm.to(torch.float32))
        if pair.moving_mask is None and net.runs_in_kernel(moved_unit):
            return _ext.image_net_l2_kernel(moved_unit, moving_unit, fixed_values, moving_values,
                                            (self.fixed_channel, self.moving_channel), net.encoding.params,
                                            net.encoding.spec, weights, list(net.weights), list(net.biases))
        # one evaluation of the net for both terms (half the operations of two)
        pred = net(torch.cat([moved_unit, moving_unit]), weights)
        n_fixed = moved_unit.shape[0]
        pred_fixed, pred_moving = pred[:n_fixed, self.fixed_channel], pred[n_fixed:, self.moving_channel]
        if pair.moving_mask is None:
            return (pred_fixed - fixed_values).pow(2).mean() + (pred_moving - moving_values).pow(2).mean()
        fixed_in = pair.in_moving_mask(apply_affine(pair.moving_voxel_from_mm, moved_mm.detach().to(torch.float32)))
        moving_in = pair.in_moving_mask(moving_voxel)
        return (_masked_mean((pred_fixed - fixed_values).pow(2), fixed_in)
                + _masked_mean((pred_moving - moving_values).pow(2), moving_in))


class Similarity:
    """The real images compared through the motion: ``mean_squares``, ``mapped_l2``, ``mutual_information``,
    ``mind`` or ``local_cc``.

    ``mean_squares``: the mean squared difference of the fixed values and the moving image at the
    moved points (ANTs' MeanSquares): one contrast, its intensities compared as they are.

    ``local_cc``: minus the mean windowed correlation coefficient (ANTs' and FireANTs' CC metric,
    single-modal): the fixed voxel's window (``window_radius``, :meth:`~monai_inr_reg.pair.ImagePair.fixed_windows`)
    against the moving image sampled at the moved point plus the same voxel offsets (moving voxels:
    the motion is taken as locally a translation over the window, as a greedy CC does).

    ``mind``: the mean squared difference of the two images' MIND-SSC features
    (:meth:`~monai_inr_reg.pair.ImagePair.mind_features`; 12 channels in 3D), the moving features
    sampled at the moved points: local structure, whatever the contrasts (ConvexAdam's metric).

    ``mutual_information``: minus the mutual information in nats of the fixed values and the moving
    image at the moved points (:func:`~monai_inr_reg.core.losses.mutual_information`, ``bins``).
    ``mapped_l2``: the L2 between the fixed values and the moving values under a fitted
    piecewise-linear intensity map (``bins`` knots; the correlation ratio of the classical
    literature), each residual bounded by ``robust_scale`` (Geman-McClure), and with ``symmetric``
    also the map the other way round (:func:`~monai_inr_reg.core.losses.mapped_l2`;
    ``variance_gradient`` on that term for a hash motion, which could otherwise flatten the
    sampled moving values to cheapen it). Points moved outside the moving grid (or mask) are left
    out (they carry no gradient).

    On the CPU, ``mean_squares``, ``mutual_information``, ``mapped_l2`` and ``local_cc`` are computed with their gradient in one
    compiled call (:func:`monai_inr_reg._ext.similarity_kernel`, the same values; ``fused``: whether to
    use it where it builds), the others and every metric on a GPU in PyTorch.
    """

    def __init__(self, pair: ImagePair, stage: dict, *, variance_gradient: bool = False):
        self.pair = pair
        self.metric = stage["objective"]
        self.bins = int(stage.get("bins", 0))  # mind: none
        self.symmetric = bool(stage.get("symmetric", False))
        self.robust_scale = float(stage.get("robust_scale", 0.0))
        self.variance_gradient = variance_gradient
        self.window_radius = int(stage.get("window_radius", 1))
        self.moving_voxel_from_mm = pair.moving_voxel_from_mm.to(device=pair.fixed_values.device, dtype=torch.float32)
        # one compiled call for the value and its gradient (the torch path: about 50 small operations a step)
        self.fused = self.metric in _ext.SIMILARITY_METRICS
        self.set_level(0.0)

    def set_level(self, sigma_voxels: float) -> None:
        """The level's fixed values ``(N,)`` (``mind``: features ``(N, C)``) and moving image ``(C, *S)``."""
        if self.metric == "mind":
            self.fixed_values, self.moving = self.pair.mind_features(sigma_voxels)
        elif self.metric == "local_cc":
            self.fixed_values = self.pair.fixed_windows(sigma_voxels, self.window_radius)
            self.moving = self.pair.smoothed(sigma_voxels)[1]
            self.offsets = window_offsets(self.pair.ndim, self.window_radius).to(self.moving.device)
        else:
            self.fixed_values, self.moving = self.pair.smoothed(sigma_voxels)

    def parameter_groups(self) -> list[dict]:
        return []

    def _inside(self, moved_voxel: torch.Tensor) -> torch.Tensor:
        """``(P,)`` bool: the moved points ``(P, D)`` (moving voxels) that land in the moving grid (and mask)."""
        inside = ((moved_voxel >= 0) & (moved_voxel <= self.pair.moving_last_voxel)).all(1)
        if self.pair.moving_mask is not None:
            inside = inside & self.pair.in_moving_mask(moved_voxel.detach())
        return inside

    def __call__(self, moved_mm: torch.Tensor, fixed_values: torch.Tensor, *, keep: torch.Tensor | None = None,
                 **_) -> torch.Tensor:
        """The data term at the moved points ``(P, D)`` (LPS mm) inside the moving grid (and mask), and
        where ``keep`` ``(P,)`` (bool, optional) is true."""
        pair = self.pair
        moved_voxel = apply_affine(self.moving_voxel_from_mm, moved_mm.to(torch.float32))
        if self.fused and _ext.similarity_kernel_supports(self.moving, moved_voxel, self.metric) and _ext.kernel_available():
            if pair.moving_mask is not None:
                in_mask = pair.in_moving_mask(moved_voxel.detach())
                keep = in_mask if keep is None else keep & in_mask
            return _ext.similarity_kernel(self.moving, moved_voxel, fixed_values, self.metric, self.bins, keep=keep,
                                          robust_scale=self.robust_scale, symmetric=self.symmetric,
                                          variance_gradient=self.variance_gradient)
        inside = self._inside(moved_voxel)
        if keep is not None:
            inside = inside & keep
        inside = inside.nonzero()[:, 0]
        fixed_values = fixed_values.index_select(0, inside)
        if self.metric == "local_cc":
            centres = moved_voxel.index_select(0, inside)
            windows = sample_image(self.moving, (centres[:, None, :] + self.offsets[None]).reshape(-1, pair.ndim))
            return -(normalise_rows(windows[:, 0].reshape(centres.shape[0], self.offsets.shape[0])) * fixed_values).sum(1).mean()
        moving_values = sample_image(self.moving, moved_voxel.index_select(0, inside))
        if self.metric in ("mind", "mean_squares"):  # the L2 of the features, or of the intensities
            return (moving_values.reshape(fixed_values.shape) - fixed_values).pow(2).mean()
        moving_values = moving_values[:, 0]
        if self.metric == "mutual_information":
            return -mutual_information(moving_values, fixed_values, self.bins)
        loss = mapped_l2(moving_values, fixed_values, self.bins, robust_scale=self.robust_scale)
        if self.symmetric:
            loss = 0.5 * (loss + mapped_l2(fixed_values, moving_values, self.bins, robust_scale=self.robust_scale,
                                           variance_gradient=self.variance_gradient))
        return loss

    def score(self, motion) -> float:
        """The data term of ``motion`` (a callable on ``(P, D)`` LPS mm points) on up to ``SCORE_POINTS``
        fixed voxels at the current level (an even stride) that it takes inside the moving grid;
        ``inf`` when none lands there. To compare motions, :meth:`scores`."""
        return self.scores([motion])[0]

    def scores(self, motions: list) -> list[float]:
        """The data terms of ``motions`` (callables as in :meth:`score`) on the same points: the strided
        fixed voxels of :meth:`score` that every one of them takes inside the moving grid (and mask).
        When those are fewer than ``SHARED_SHARE`` of the largest overlap, the motions do not look at the
        same part of the images, and each is scored on its own (``inf`` for one that takes no point inside).

        Each motion scored on its own overlap would be judged on different voxels: one that moves a
        discordant border slice out of view would look better for that alone (the 3D stroke pair as
        aligned: mutual information 0.583 nats at the truth, 0.648 after a shift of 0.05 mm that drops
        one face; 0.586 for both on their common voxels)."""
        stride = max(1, -(-self.pair.fixed_values.shape[0] // self.SCORE_POINTS))
        points, fixed_values = self.pair.fixed_points_mm[::stride], self.fixed_values[::stride]
        with torch.no_grad():
            moved = [motion(points) for motion in motions]
            common = None
            if len(moved) > 1:
                inside = torch.stack([self._inside(apply_affine(self.moving_voxel_from_mm, m.to(torch.float32)))
                                      for m in moved])
                shared = inside.all(0)
                if int(shared.sum()) >= self.SHARED_SHARE * int(inside.sum(1).max()):
                    common = shared
            values = [float(self(m, fixed_values, keep=common)) for m in moved]
        return [math.inf if math.isnan(v) else v for v in values]

    SCORE_POINTS = 1 << 16
    SHARED_SHARE = 0.5


def penalises_field(stage: dict) -> bool:
    """Whether ``stage`` has a field regulariser (:func:`field_regulariser`) to compute."""
    return float(stage.get("smoothness_weight", 0.0)) > 0 or float(stage.get("folding_weight", 0.0)) > 0


def field_regulariser(gradient: torch.Tensor, linear: torch.Tensor, stage: dict) -> torch.Tensor:
    """Regularisers of a hash motion (0-d tensor):

    ``smoothness_weight * mean |G|^2 + folding_weight * mean relu(folding_threshold - det(A + G))``,

    Args:
        gradient: ``G`` ``(P, D, D)``, the displacement gradient at ``P`` points, dimensionless
            (:meth:`~monai_inr_reg.motion.HashMotion.moved_and_gradient`).
        linear: ``A`` ``(D, D)``, the linear part of the motion's base matrix, so ``det(A + G)`` is
            the Jacobian determinant of the whole map: the second term only acts where the map
            (nearly) folds.
        stage: the stage's ``smoothness_weight``, ``folding_weight``, ``folding_threshold``.
    """
    smooth_weight = float(stage["smoothness_weight"])
    fold_weight = float(stage["folding_weight"])
    threshold = float(stage["folding_threshold"])
    if not linear.requires_grad and gradient.shape[-1] in (2, 3) and gradient.shape[0] > 0:
        return _FieldRegulariser.apply(gradient, linear.detach().to(gradient.dtype), smooth_weight, fold_weight, threshold)
    total = gradient.new_zeros(())
    if smooth_weight > 0:
        total = total + smooth_weight * gradient.pow(2).sum((1, 2)).mean()
    if fold_weight > 0:
        det = _determinants(linear.to(gradient.dtype) + gradient)
        total = total + fold_weight * torch.relu(threshold - det).mean()
    return total


class _FieldRegulariser(torch.autograd.Function):
    """:func:`field_regulariser` for a fixed ``A``, with its gradient in closed form: ``2 w_s G / P`` and,
    where ``det(A + G)`` is under the threshold, ``-w_f / P`` times the cofactors of ``A + G`` (the
    derivative of a determinant). One autograd node instead of about twenty: the 2D field stages
    run it every step on 256-1,024 points."""

    @staticmethod
    def forward(ctx, gradient, linear, smooth_weight, fold_weight, threshold):
        n = gradient.shape[0]
        total = gradient.new_zeros(())
        grad = torch.zeros_like(gradient)
        if smooth_weight > 0:
            total = total + smooth_weight * gradient.square().sum() / n
            grad = grad + (2.0 * smooth_weight / n) * gradient
        if fold_weight > 0:
            jacobians = linear + gradient
            shortfall = threshold - _determinants(jacobians)
            total = total + fold_weight * shortfall.clamp_min(0.0).sum() / n
            grad = grad - (fold_weight / n) * (shortfall > 0)[:, None, None] * _cofactors(jacobians)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None, None, None, None


def _cofactors(jacobians: torch.Tensor) -> torch.Tensor:
    """``d det(J) / d J`` of ``(P, D, D)`` matrices, D = 2 or 3: their cofactor matrices."""
    if jacobians.shape[-1] == 2:
        return torch.stack([jacobians[:, 1, 1], -jacobians[:, 1, 0], -jacobians[:, 0, 1], jacobians[:, 0, 0]],
                           dim=1).reshape(-1, 2, 2)
    rows = [jacobians[:, 0], jacobians[:, 1], jacobians[:, 2]]
    return torch.stack([torch.linalg.cross(rows[(i + 1) % 3], rows[(i + 2) % 3]) for i in range(3)], dim=1)


def _determinants(jacobians: torch.Tensor) -> torch.Tensor:
    """``det`` of ``(P, D, D)`` matrices, D = 2 or 3, from their entries (the triple product of the
    rows in 3D): ``torch.linalg.det`` factorises each 3 x 3 matrix, and was 1.6x slower forward and
    backward on the 1,024 per iteration (measured)."""
    if jacobians.shape[-1] == 3:
        return (jacobians[:, 0] * torch.linalg.cross(jacobians[:, 1], jacobians[:, 2])).sum(1)
    if jacobians.shape[-1] == 2:
        return jacobians[:, 0, 0] * jacobians[:, 1, 1] - jacobians[:, 0, 1] * jacobians[:, 1, 0]
    return torch.linalg.det(jacobians)


QUALITY_STAGE = {"objective": "mutual_information", "bins": 16}  # when no stage compares the real images
_SUSPECT_MARGIN = 0.01  # relative: a final data term this much worse than the better start is suspect
# weak evidence (mutual information only), measured (docs/benchmarks.md, fifth session): the 15 prostate
# MR -> TRUS pairs start at 0.06-0.18 nats (16 bins) and end 3.6-15x higher; every stroke, IXI002, BrainWeb
# and inter-subject brain pair, aligned or 12-18 degrees off, starts at 0.38-0.86 and ends 1.1-2.2x higher
_WEAK_START_NATS = 0.25
_WEAK_GAIN = 3.0
# ... and after their rigid and affine stages (sixth session) the prostate pairs share 0.15-0.37 nats, every
# other pair 0.52-0.97 (18 of them 12-18 degrees off at the start): a field fitted there would make the match
_WEAK_POSE_NATS = 0.45


def match_quality(pair: ImagePair, motion, initial: torch.Tensor | None, stage: dict) -> dict:
    """How well the images match by ``stage``'s objective (a :class:`Similarity` on the sharp images,
    lower is better) with no registration (the grids placed through their affines), at the start of
    the first stage (``initial``; None: identity), and at the end (``motion``); ``suspect`` when the
    end is worse than the better of the two starts (by more than ``_SUSPECT_MARGIN`` of its
    magnitude): the registration made things worse. ``weak_evidence`` (mutual information only) when
    the images at the better start share little information (under ``_WEAK_START_NATS``) and the
    registration, ending with a field (a hash or grid motion), multiplied it by more than
    ``_WEAK_GAIN``: the field made most of the match it reports. A rigid or affine map that does so
    has found the images (it has too few degrees of freedom to make a match). The three are scored on
    the same voxels (:meth:`Similarity.scores`)."""
    similarity = Similarity(pair, stage)
    start = torch.eye(pair.ndim + 1, dtype=torch.float64) if initial is None else initial
    no_registration, at_start, final = similarity.scores([lambda points: points,
                                                         lambda points: apply_affine(start, points), motion])
    best = min(no_registration, at_start)
    suspect = bool(math.isfinite(best) and final > best + _SUSPECT_MARGIN * abs(best))
    weak = bool(isinstance(motion, (HashMotion, GridMotion)) and _shares_little(stage["objective"], best)
                and final < _WEAK_GAIN * best)  # minus MI: lower is better
    return {"metric": stage["objective"], "no_registration": no_registration, "start": at_start, "final": final,
            "suspect": suspect, "weak_evidence": weak}


def _shares_little(metric: str, best: float) -> bool:
    """The better start's mutual information (``best``: minus nats) is under ``_WEAK_START_NATS``."""
    return metric == "mutual_information" and math.isfinite(best) and -best < _WEAK_START_NATS


def weak_after_pose(quality: dict) -> bool:
    """Whether a :func:`match_quality` taken after the pose stages (``final``: the pose reached) shows
    weak evidence already: mutual information under ``_WEAK_START_NATS`` at the better start and under
    ``_WEAK_POSE_NATS`` at the pose. A field fitted from there would make most of the match it reports."""
    return bool(_shares_little(quality["metric"], min(quality["no_registration"], quality["start"]))
                and -quality["final"] < _WEAK_POSE_NATS)
