"""Compiled CPU kernels: built on first use, cached, with a logged fallback to pure PyTorch.

The C++ source ``csrc/hash_grid_cpu.cpp`` registers torch custom ops for the hash-grid encoding
(``torch.ops.monai_inr_reg.hash_grid_fwd`` / ``hash_grid_bwd``), the coordinate MLP
(``mlp_fwd`` / ``mlp_fwd_saving`` / ``mlp_bwd``, :func:`mlp_forward_kernel`) and the linear sampling of an image
(``sample_linear_fwd`` / ``sample_linear_bwd``, :func:`sample_linear_kernel`), the data terms of
:class:`~monai_inr_reg.objectives.Similarity` with their gradient (``similarity_fwd``,
:func:`similarity_kernel`) and the affine map of points (``affine_points_fwd`` / ``affine_points_bwd``,
:func:`affine_forward`), and is compiled with
``torch.utils.cpp_extension.load`` the first time :func:`kernel_available` is called in a process.
The build is cached per installed copy: in a folder of its own under ``$TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``) named by a hash of the source's content and location, the
torch version and the flags (:func:`build_directory`), so two checkouts on one machine never
rebuild each other's kernel; later processes only load the shared library. It needs a C++ compiler and ninja. On x86-64 CPUs with AVX2 it is
built with ``-march=x86-64-v3`` (about 10-15 % faster) under its own name, falling back to
generic code if that build fails. When the build fails, or when
the environment variable ``MONAI_INR_REG_NO_EXT=1`` is set, :func:`kernel_available` returns
``False`` (with one log line saying why) and callers use the PyTorch code instead
(:func:`monai_inr_reg.core.encoding.hash_grid_encode`, :func:`~monai_inr_reg.core.mlp.mlp_forward`,
``grid_sample``).

:func:`hash_grid_encode_kernel` has the signature and semantics of
:func:`~monai_inr_reg.core.encoding.hash_grid_encode` (first derivatives only).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
import time
from functools import lru_cache
from pathlib import Path

import torch

from .core.encoding import HashGridSpec, _check_inputs
from .core.mlp import MLPSpec

__all__ = ["kernel_available", "kernel_disabled", "hash_grid_encode_kernel", "mlp_kernel_supports",
           "mlp_forward_kernel", "sample_kernel_supports", "sample_linear_kernel", "similarity_kernel_supports",
           "similarity_kernel", "affine_kernel_supports", "affine_forward", "image_net_l2_kernel", "affine_backward", "ENV_SWITCH", "build_info", "build_directory"]

logger = logging.getLogger(__name__)

ENV_SWITCH = "MONAI_INR_REG_NO_EXT"
_SOURCE = Path(__file__).parent / "csrc" / "hash_grid_cpu.cpp"
_LOCK = threading.Lock()
_STATE: dict = {"tried": False, "ok": False, "error": None, "seconds": None, "variant": None, "logged_disabled": False}


def kernel_disabled() -> bool:
    """True when ``MONAI_INR_REG_NO_EXT`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("1", "true", "yes", "on")


def build_info() -> dict:
    """Outcome of the build attempt: ``tried``, ``ok``, ``error`` (str or None), ``seconds`` (build or
    load time), ``variant`` (library name; ``_x86_64_v3`` = AVX2/FMA code)."""
    return {k: _STATE[k] for k in ("tried", "ok", "error", "seconds", "variant")}


def _variants() -> list[tuple[str, list[str]]]:
    """(library name, extra compiler flags) to try in order: AVX2/FMA code where the CPU has it."""
    base = ("monai_inr_reg_hash_grid_cpu", ["-O3", "-fopenmp"])
    variants = [base]
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            capability = torch.backends.cpu.get_cpu_capability()
        except Exception:  # older torch
            capability = "DEFAULT"
        if capability in ("AVX2", "AVX512"):
            # a separate name, so a cache shared with an older CPU never loads AVX2 code there
            variants.insert(0, (base[0] + "_x86_64_v3", base[1] + ["-march=x86-64-v3"]))
    return variants


def build_directory(name: str, flags: list[str], source: Path = _SOURCE) -> Path:
    """Where the kernel ``name`` built with ``flags`` from ``source`` is cached: one folder per
    installed copy and version of the source (content and location), torch version and flags."""
    key = hashlib.sha256()
    for part in (source.read_bytes(), str(source.resolve()).encode(), torch.__version__.encode(),
                 platform.python_version().encode(), " ".join(flags).encode()):
        key.update(part)
        key.update(b"\0")
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return root / "monai_inr_reg" / f"{name}-{key.hexdigest()[:16]}"


def _build() -> None:
    start = time.perf_counter()
    errors = []
    try:
        from torch.utils import cpp_extension

        if not _SOURCE.is_file():
            raise FileNotFoundError(f"kernel source missing: {_SOURCE}")
        for name, flags in _variants():
            directory = build_directory(name, flags)
            built = any(directory.glob(f"{name}*.so"))
            if not built:
                logger.info("monai_inr_reg: building the CPU kernel once for this installation, about 40 s "
                            "(cached in %s; not counted in registration times)", directory)
            directory.mkdir(parents=True, exist_ok=True)
            try:
                cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=flags,
                                   extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False,
                                   build_directory=str(directory))
                break
            except Exception as exc:  # e.g. a compiler too old for -march=x86-64-v3: try the next
                errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:300]}")
        else:
            raise RuntimeError("; ".join(errors))
        missing = [op for op in ("hash_grid_fwd", "mlp_fwd", "mlp_fwd_saving", "sample_linear_fwd", "similarity_fwd",
                                 "affine_points_fwd")
                   if not hasattr(torch.ops.monai_inr_reg, op)]
        if missing:
            raise RuntimeError(f"the built library did not register torch.ops.monai_inr_reg.{missing}")
    except Exception as exc:  # no compiler, no ninja, compile error, ...: fall back, say why
        _STATE.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip()[:600]}")
        logger.warning("monai_inr_reg: compiled hash-grid kernel unavailable (%s); using the pure-PyTorch path. "
                       "Set %s=1 to skip the build attempt.", _STATE["error"], ENV_SWITCH)
    else:
        _STATE.update(ok=True, error=None, variant=name)
        logger.info("monai_inr_reg: compiled hash-grid CPU kernel %s ready (build or load took %.1f s)",
                    name, time.perf_counter() - start)
    _STATE.update(tried=True, seconds=time.perf_counter() - start)


def kernel_available() -> bool:
    """Whether the compiled kernel can be used; the first call builds (or loads) it."""
    if kernel_disabled():
        if not _STATE["logged_disabled"]:
            logger.info("monai_inr_reg: %s is set; using the pure-PyTorch hash grid", ENV_SWITCH)
            _STATE["logged_disabled"] = True
        return False
    if not _STATE["tried"]:
        with _LOCK:
            if not _STATE["tried"]:
                _build()
    return _STATE["ok"]


@lru_cache(maxsize=64)
def _levels_tensor(spec: HashGridSpec) -> torch.Tensor:
    rows = [[spec.resolutions[i], int(spec.dense[i]), spec.offsets[i], spec.sizes[i]] for i in range(spec.n_levels)]
    return torch.tensor(rows, dtype=torch.int64)


@lru_cache(maxsize=64)
def _ones(n_levels: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.ones(n_levels, dtype=dtype)


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, params, weights, levels, n_features, log2_hashmap_size):
        ctx.save_for_backward(points, params, weights, levels)
        ctx.meta = (n_features, log2_hashmap_size)
        return torch.ops.monai_inr_reg.hash_grid_fwd(points, params, levels, weights, n_features, log2_hashmap_size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        points, params, weights, levels = ctx.saved_tensors
        need_points, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_points or need_params):
            return (None,) * 6
        grad_params, grad_points = torch.ops.monai_inr_reg.hash_grid_bwd(
            grad_out, points, params, levels, weights, *ctx.meta, need_params, need_points)
        return (grad_points if need_points else None, grad_params if need_params else None, None, None, None, None)


def hash_grid_encode_kernel(points_unit: torch.Tensor, params: torch.Tensor, spec: HashGridSpec,
                            level_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Hash-grid encoding with the compiled CPU kernel; see :func:`~monai_inr_reg.core.encoding.hash_grid_encode`.

    Args:
        points_unit: ``(P, D)`` CPU points in ``[0, 1]^D`` (clamped), cast to ``params``' dtype.
        params: ``(n_params,)`` CPU float32 or float64 flat tables.
        spec: from :func:`~monai_inr_reg.core.encoding.hash_grid_spec`.
        level_weights: optional ``(L,)``; levels with weight 0 are skipped (unless it requires grad).

    Returns:
        ``(P, L * F)`` features, level-major.

    Raises:
        RuntimeError: the kernel is unavailable (check :func:`kernel_available` first).
    """
    _check_inputs(points_unit, params, spec, level_weights, "hash_grid_encode_kernel")
    if not kernel_available():
        raise RuntimeError(f"hash_grid_encode_kernel(): the compiled kernel is unavailable ({_STATE['error'] or ENV_SWITCH + ' is set'})")
    if params.device.type != "cpu" or points_unit.device.type != "cpu":
        raise ValueError(f"hash_grid_encode_kernel(): CPU tensors only, got points on {points_unit.device}, params on {params.device}")
    x = points_unit.to(params.dtype)
    levels = _levels_tensor(spec)
    if level_weights is not None and level_weights.requires_grad:
        out = _HashGridFunction.apply(x, params, _ones(spec.n_levels, params.dtype), levels, spec.n_features, spec.log2_hashmap_size)
        w = level_weights.to(out.dtype).view(1, -1, 1)
        return (out.view(out.shape[0], spec.n_levels, -1) * w).view(out.shape[0], -1)
    weights = _ones(spec.n_levels, params.dtype) if level_weights is None else level_weights.detach().to(params.dtype).contiguous()
    return _HashGridFunction.apply(x, params, weights, levels, spec.n_features, spec.log2_hashmap_size)


class _MLPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keep_hidden, features, *params):  # the weights, then the biases
        n = len(params) // 2
        if not keep_hidden:
            ctx.save_for_backward(features, None, *params)
            return torch.ops.monai_inr_reg.mlp_fwd(features, list(params[:n]), list(params[n:]))
        # the hidden layers' outputs, kept: the backward need not recompute the forward
        out, hidden = torch.ops.monai_inr_reg.mlp_fwd_saving(features, list(params[:n]), list(params[n:]))
        ctx.save_for_backward(features, hidden, *params)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        features, hidden, *params = ctx.saved_tensors
        n = len(params) // 2
        grads = torch.ops.monai_inr_reg.mlp_bwd(grad_out, features, params[:n], params[n:], ctx.needs_input_grad[1],
                                                hidden)
        return (None, grads[0] if ctx.needs_input_grad[1] else None, *grads[1:])


# wider layers: torch's matrix products (not measured); 64 wide, 2 hidden layers, forward and backward: 1.2x / 1.6x
# faster than torch at 6,144 / 24,576 rows, 1.6x at 2 threads, as fast at 1,024 rows (AMD EPYC, twelfth session)
MLP_KERNEL_MAX_WIDTH = 64


def mlp_kernel_supports(features: torch.Tensor, weights: list[torch.Tensor], spec: MLPSpec) -> bool:
    """Whether :func:`mlp_forward_kernel` computes this MLP, and faster than PyTorch: CPU float32,
    ReLU hidden layers at most :data:`MLP_KERNEL_MAX_WIDTH` wide, a linear output."""
    return (features.device.type == "cpu" and features.dtype == torch.float32 and features.dim() == 2
            and spec.activation == "ReLU" and spec.output_activation == "None"
            and max(spec.widths) <= MLP_KERNEL_MAX_WIDTH
            and all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights))


def mlp_forward_kernel(features: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                       spec: MLPSpec) -> torch.Tensor:
    """:func:`~monai_inr_reg.core.mlp.mlp_forward` with the compiled kernel: each tile of 8 points
    goes through every layer, forward and backward, while it is in the L1 cache. Same values and
    gradients up to rounding; the gradients of the weights are the same bits at any thread count.

    Raises:
        RuntimeError: the kernel is unavailable. ValueError: :func:`mlp_kernel_supports` is false.
    """
    if not kernel_available():
        raise RuntimeError(f"mlp_forward_kernel(): the compiled kernel is unavailable ({_STATE['error'] or ENV_SWITCH + ' is set'})")
    if not mlp_kernel_supports(features, weights, spec):
        raise ValueError("mlp_forward_kernel(): needs CPU float32 tensors, ReLU hidden layers and a linear output, got "
                         f"{features.dtype} on {features.device}, activation {spec.activation!r} / {spec.output_activation!r}")
    keep_hidden = torch.is_grad_enabled() and any(t.requires_grad for t in (features, *weights, *biases))
    return _MLPFunction.apply(keep_hidden, features, *weights, *biases)



class _ImageNetL2Function(torch.autograd.Function):
    """The forward of :func:`image_net_l2_kernel` computes every gradient too (one node instead of a
    dozen: at the image-net stage's 1,024 points the graph's small operations cost as much as the
    kernels); the backward scales them."""

    @staticmethod
    def forward(ctx, fixed_unit, moving_unit, fixed_values, moving_values, channels, params, level_weights, levels,
                hash_meta, *mlp):
        n = len(mlp) // 2
        weights, biases = list(mlp[:n]), list(mlp[n:])
        points = torch.cat([fixed_unit, moving_unit]).to(params.dtype)
        features = torch.ops.monai_inr_reg.hash_grid_fwd(points, params, levels, level_weights, *hash_meta)
        out, hidden = torch.ops.monai_inr_reg.mlp_fwd_saving(features, weights, biases)
        n_fixed, fixed_channel, moving_channel = fixed_unit.shape[0], channels[0], channels[1]
        fixed_residual = out[:n_fixed, fixed_channel] - fixed_values
        moving_residual = out[n_fixed:, moving_channel] - moving_values
        loss = fixed_residual.square().mean() + moving_residual.square().mean()
        grad_out = torch.zeros_like(out)
        grad_out[:n_fixed, fixed_channel] = fixed_residual * (2.0 / max(n_fixed, 1))
        grad_out[n_fixed:, moving_channel] = moving_residual * (2.0 / max(moving_unit.shape[0], 1))
        grad_features, *grad_mlp = torch.ops.monai_inr_reg.mlp_bwd(grad_out, features, weights, biases, True, hidden)
        need_points = ctx.needs_input_grad[0]
        grad_params, grad_points = torch.ops.monai_inr_reg.hash_grid_bwd(grad_features, points, params, levels,
                                                                         level_weights, *hash_meta, True, need_points)
        ctx.save_for_backward(grad_points[:n_fixed] if need_points else None, grad_params, *grad_mlp)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_fixed_unit, grad_params, *grad_mlp = ctx.saved_tensors
        scaled = None if grad_fixed_unit is None else grad_fixed_unit * grad_loss
        return (scaled, None, None, None, None, grad_params * grad_loss, None, None, None,
                *(g * grad_loss for g in grad_mlp))


def image_net_l2_kernel(fixed_unit: torch.Tensor, moving_unit: torch.Tensor, fixed_values: torch.Tensor,
                        moving_values: torch.Tensor, channels: tuple[int, int], params: torch.Tensor, spec: HashGridSpec,
                        level_weights: torch.Tensor | None, weights: list[torch.Tensor],
                        biases: list[torch.Tensor]) -> torch.Tensor:
    """The paper's L2 through an image net (:class:`~monai_inr_reg.objectives.ImageNetL2`) in one
    autograd node: ``mean((I(fixed_unit)[:, c_f] - fixed_values)^2) + mean((I(moving_unit)[:, c_m] -
    moving_values)^2)``, ``I`` the hash grid ``params`` / ``spec`` (``level_weights`` ``(L,)`` or None,
    no gradient) and the MLP ``weights`` / ``biases`` (:func:`mlp_forward_kernel`), ``channels`` ``(c_f,
    c_m)``. Points ``(P, D)`` / ``(Q, D)`` in ``[0, 1]^D`` (clamped); gradients to ``fixed_unit``, the
    tables and the MLP. The same values as the composition of :func:`hash_grid_encode_kernel` and
    :func:`mlp_forward_kernel` up to rounding.

    Raises:
        RuntimeError: the kernel is unavailable.
    """
    if not kernel_available():
        raise RuntimeError(f"image_net_l2_kernel(): the compiled kernel is unavailable ({_STATE['error'] or ENV_SWITCH + ' is set'})")
    lw = _ones(spec.n_levels, params.dtype) if level_weights is None else level_weights.detach().to(params.dtype).contiguous()
    return _ImageNetL2Function.apply(fixed_unit, moving_unit, fixed_values, moving_values, tuple(channels), params, lw,
                                     _levels_tensor(spec), (spec.n_features, spec.log2_hashmap_size), *weights, *biases)

class _SampleLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, points, border):
        ctx.save_for_backward(image, points)
        ctx.border = border
        return torch.ops.monai_inr_reg.sample_linear_fwd(image, points, border)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        image, points = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None
        return None, torch.ops.monai_inr_reg.sample_linear_bwd(grad_out, image, points, ctx.border), None


def sample_kernel_supports(image: torch.Tensor, points_voxel: torch.Tensor, mode: str, padding_mode: str) -> bool:
    """Whether :func:`sample_linear_kernel` computes this sampling: linear interpolation with zeros
    or border padding of a 2D or 3D CPU float32 image that needs no gradient."""
    return (mode == "bilinear" and padding_mode in ("zeros", "border") and image.device.type == "cpu"
            and image.dtype == torch.float32 and not image.requires_grad and image.dim() in (3, 4)
            and points_voxel.device.type == "cpu" and points_voxel.dim() == 2 and points_voxel.shape[1] == image.dim() - 1)


def sample_linear_kernel(image: torch.Tensor, points_voxel: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """:func:`~monai_inr_reg.core.sample.sample_image` (``mode="bilinear"``) with the compiled kernel:
    ``image`` ``(C, *S)`` at voxel points ``(P, D)`` (array order) -> ``(P, C)``, differentiable with
    respect to the points only. The same values as ``grid_sample`` up to rounding; each point on
    its own (the same bits at any thread count).

    Raises:
        RuntimeError: the kernel is unavailable. ValueError: :func:`sample_kernel_supports` is false.
    """
    if not kernel_available():
        raise RuntimeError(f"sample_linear_kernel(): the compiled kernel is unavailable ({_STATE['error'] or ENV_SWITCH + ' is set'})")
    points = points_voxel.to(image.dtype) if points_voxel.dtype != image.dtype else points_voxel
    if not sample_kernel_supports(image, points, "bilinear", padding_mode):
        raise ValueError("sample_linear_kernel(): needs a (C, *S) CPU float32 image without gradient, (P, D) points and "
                         f"zeros or border padding, got image {tuple(image.shape)} {image.dtype} on {image.device}, "
                         f"points {tuple(points_voxel.shape)}, padding {padding_mode!r}")
    return _SampleLinearFunction.apply(image, points, padding_mode == "border")


SIMILARITY_METRICS = {"mutual_information": 0, "mapped_l2": 1, "local_cc": 2, "mean_squares": 3}  # the kernel's metric codes


class _SimilarityFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, points, fixed_values, keep, metric, bins, robust_scale, symmetric, variance_gradient):
        loss, grad_points = torch.ops.monai_inr_reg.similarity_fwd(image, points, fixed_values, keep, metric, bins,
                                                                    robust_scale, symmetric, variance_gradient)
        ctx.save_for_backward(grad_points)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        (grad_points,) = ctx.saved_tensors
        return (None, grad_points * grad_loss if ctx.needs_input_grad[1] else None) + (None,) * 7


def similarity_kernel_supports(image: torch.Tensor, points_voxel: torch.Tensor, metric: str) -> bool:
    """Whether :func:`similarity_kernel` computes ``metric`` here: mutual information, the mean squares,
    the mapped L2 or the windowed correlation of a one-channel 2D or 3D CPU float32 image that needs no gradient."""
    return (metric in SIMILARITY_METRICS and image.shape[0] == 1
            and sample_kernel_supports(image, points_voxel, "bilinear", "zeros"))


def similarity_kernel(image: torch.Tensor, points_voxel: torch.Tensor, fixed_values: torch.Tensor, metric: str,
                      bins: int, *, keep: torch.Tensor | None = None, robust_scale: float = 0.0, symmetric: bool = False,
                      variance_gradient: bool = False) -> torch.Tensor:
    """The data term of :class:`~monai_inr_reg.objectives.Similarity` (``mutual_information``: minus
    :func:`~monai_inr_reg.core.losses.mutual_information`; ``mean_squares``: the mean squared difference,
    ``bins`` unused; ``mapped_l2``:
    :func:`~monai_inr_reg.core.losses.mapped_l2`, with ``symmetric`` the mean of both directions, the
    moving values the target of the second, ``variance_gradient`` as there; ``local_cc``: minus the mean
    windowed correlation coefficient, ``fixed_values`` ``(P, K)`` the fixed windows of
    :meth:`~monai_inr_reg.pair.ImagePair.fixed_windows`, the moving window sampled around each point with
    zeros padding, ``bins`` unused; NaN when no point is inside) in one compiled call:
    ``image`` ``(1, *S)`` sampled linearly at the voxel points ``(P, D)`` (array order) that lie inside its grid and where
    ``keep`` ``(P,)`` is true, against ``fixed_values`` ``(P,)`` there. Returns the 0-d loss,
    differentiable with respect to the points only (computed with the value). The same maths as the
    torch path, in float64 where it sums; the same bits at any thread count.

    Raises:
        RuntimeError: the kernel is unavailable. ValueError: :func:`similarity_kernel_supports` is false.
    """
    if not kernel_available():
        raise RuntimeError(f"similarity_kernel(): the compiled kernel is unavailable ({_STATE['error'] or ENV_SWITCH + ' is set'})")
    points = points_voxel.to(image.dtype) if points_voxel.dtype != image.dtype else points_voxel
    if not similarity_kernel_supports(image, points, metric):
        raise ValueError("similarity_kernel(): needs a (1, *S) CPU float32 image without gradient, (P, D) points and a "
                         f"metric of {sorted(SIMILARITY_METRICS)}, got image {tuple(image.shape)} {image.dtype} on "
                         f"{image.device}, points {tuple(points_voxel.shape)}, metric {metric!r}")
    return _SimilarityFunction.apply(image, points, fixed_values, keep, SIMILARITY_METRICS[metric], int(bins),
                                     float(robust_scale), bool(symmetric), bool(variance_gradient))


def affine_kernel_supports(points: torch.Tensor) -> bool:
    """Whether :func:`affine_forward` maps these points ``(P, D)`` with the compiled kernel: CPU float32 or
    float64, D 2 or 3, and the kernel builds."""
    return (points.device.type == "cpu" and points.dtype in (torch.float32, torch.float64) and points.dim() == 2
            and points.shape[1] in (2, 3) and kernel_available())


def affine_forward(rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``points @ rows[:, :D].T + rows[:, D]``: the affine map ``rows`` ``(D, D + 1)`` (the points' dtype) of
    points ``(P, D)``, with the kernel where :func:`affine_kernel_supports`, else ``addmm``. No autograd
    (see :func:`affine_backward`); :func:`~monai_inr_reg.core.grid.apply_affine` is the differentiable map."""
    if affine_kernel_supports(points):
        return torch.ops.monai_inr_reg.affine_points_fwd(points, rows)
    d = points.shape[1]
    return torch.addmm(rows[:, d], points, rows[:, :d].T)


def affine_backward(grad: torch.Tensor, points: torch.Tensor, rows: torch.Tensor, need_points: bool,
                    need_rows: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of :func:`affine_forward` for ``grad`` ``(P, D)``: the points' ``(P, D)`` and the rows'
    ``(D, D + 1)`` (float64: summed in float64 over the points in a fixed order, the same bits at any
    thread count), None where not needed."""
    if affine_kernel_supports(points):
        grad_points, grad_rows = torch.ops.monai_inr_reg.affine_points_bwd(grad, points, rows, need_points, need_rows)
        return (grad_points if need_points else None), (grad_rows if need_rows else None)
    d = points.shape[1]
    grad_points = grad.mm(rows[:, :d]) if need_points else None
    grad_rows = None
    if need_rows:
        g, x = grad.to(torch.float64), points.to(torch.float64)
        grad_rows = torch.cat([g.T.mm(x), g.sum(0)[:, None]], dim=1)
    return grad_points, grad_rows


class AffineFunction(torch.autograd.Function):
    """:func:`affine_forward` with its gradients to ``rows`` and ``points`` (:func:`affine_backward`)."""

    @staticmethod
    def forward(ctx, rows, points):
        ctx.save_for_backward(rows, points)
        return affine_forward(rows, points)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rows, points = ctx.saved_tensors
        grad_points, grad_rows = affine_backward(grad, points, rows, ctx.needs_input_grad[1], ctx.needs_input_grad[0])
        return (None if grad_rows is None else grad_rows.to(rows.dtype)), grad_points
