"""Rigid and affine maps as homogeneous matrices (pure functions, differentiable)."""

from __future__ import annotations

import math

import torch

from .grid import apply_affine

__all__ = ["rotation_matrix", "rotation_and_derivatives", "centred_matrix", "centred_map", "homogeneous", "about_center", "nearest_rotation",
           "rotation_parameters"]


_SMALL_ANGLE_SQUARED = 1e-3  # below it (about 1.8 degrees) Rodrigues' coefficients come from their series


def _series_coefficients(t2):
    """Rodrigues' ``sin(t)/t`` and ``(1 - cos(t))/t^2`` as series in ``t2 = t^2`` (errors below 1e-17
    under ``_SMALL_ANGLE_SQUARED``); floats or tensors alike."""
    return (1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0)),
            0.5 * (1.0 - t2 / 12.0 * (1.0 - t2 / 30.0 * (1.0 - t2 / 56.0))))


def rotation_matrix(rotation: torch.Tensor, ndim: int) -> torch.Tensor:
    """Rotation ``(D, D)`` from parameters: 2D one angle (radians, counter-clockwise from x to y),
    3D a rotation vector ``v`` (axis times angle, radians): the matrix exponential of its skew matrix
    ``K``, by Rodrigues' formula ``I + sin(t)/t K + (1 - cos(t))/t^2 K^2`` with ``t = |v|``
    (``torch.linalg.matrix_exp`` gives the same matrix, less exactly, in twice the operator calls).
    Differentiable everywhere, ``v = 0`` included. In plain floats with its derivatives:
    :func:`rotation_and_derivatives`."""
    if ndim == 2:
        c, s = torch.cos(rotation[0]), torch.sin(rotation[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    x, y, z = rotation
    zero = torch.zeros_like(x)
    skew = torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])])
    t2 = (rotation * rotation).sum()
    small = t2 < _SMALL_ANGLE_SQUARED
    # the series for small angles; the closed forms on a t^2 kept away from 0, so that the branch
    # torch.where does not take has finite gradients
    series_a, series_b = _series_coefficients(t2)
    t = torch.where(small, torch.ones_like(t2), t2).sqrt()
    a = torch.where(small, series_a, torch.sin(t) / t)
    b = torch.where(small, series_b, (1.0 - torch.cos(t)) / (t * t))
    return torch.eye(3, dtype=rotation.dtype, device=rotation.device) + a * skew + b * (skew @ skew)


def _skew(v) -> list[list[float]]:
    x, y, z = v
    return [[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]]


def _product(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[sum(a[i][m] * b[m][j] for m in range(3)) for j in range(3)] for i in range(3)]


def rotation_and_derivatives(rotation: list[float]) -> tuple[list[list[float]], list[list[list[float]]]]:
    """:func:`rotation_matrix` in plain floats, with its derivative by each parameter: ``(R, dR)``,
    ``R`` ``D x D`` and ``dR[k]`` the ``D x D`` derivative by parameter ``k`` (2D: one angle; 3D: the
    rotation vector's components, ``dR_k = a K_k + b (K_k K + K K_k) + 2 v_k (a' K + b' K^2)`` with
    ``K_k`` the skew matrix of axis ``k`` and ``a'``, ``b'`` the derivatives of Rodrigues' coefficients
    by ``t^2``, from their series below ``_SMALL_ANGLE_SQUARED``)."""
    if len(rotation) == 1:
        c, s = math.cos(rotation[0]), math.sin(rotation[0])
        return [[c, -s], [s, c]], [[[-s, -c], [c, -s]]]
    t2 = sum(v * v for v in rotation)
    if t2 < _SMALL_ANGLE_SQUARED:
        a, b = _series_coefficients(t2)
        da = -(1.0 - t2 / 10.0 * (1.0 - t2 / 28.0)) / 6.0
        db = -(1.0 - t2 / 15.0 * (1.0 - 3.0 * t2 / 112.0)) / 24.0
    else:
        t = math.sqrt(t2)
        a, b = math.sin(t) / t, (1.0 - math.cos(t)) / t2
        da, db = (math.cos(t) - a) / (2.0 * t2), (a - 2.0 * b) / (2.0 * t2)
    skew = _skew(rotation)
    square = _product(skew, skew)
    r = [[(1.0 if i == j else 0.0) + a * skew[i][j] + b * square[i][j] for j in range(3)] for i in range(3)]
    derivatives = []
    for k in range(3):
        axis = _skew([1.0 if m == k else 0.0 for m in range(3)])
        left, right = _product(axis, skew), _product(skew, axis)
        derivatives.append([[a * axis[i][j] + b * (left[i][j] + right[i][j])
                             + 2.0 * rotation[k] * (da * skew[i][j] + db * square[i][j]) for j in range(3)] for i in range(3)])
    return r, derivatives


def centred_matrix(parameters: torch.Tensor, translation: torch.Tensor, center: torch.Tensor, *,
                   rotation: bool, translation_scale: float = 1.0) -> torch.Tensor:
    """``about_center(linear, translation * translation_scale, center)``: ``(D + 1, D + 1)``, with
    ``linear`` = ``rotation_matrix(parameters, D)`` (``rotation``) or ``parameters`` itself ``(D, D)``;
    ``translation`` and ``center`` ``(D,)``. The rigid and affine motions' matrix.

    On the CPU one autograd node, computed in floats with closed-form derivatives: the rigid and
    affine fits build this matrix every step, and as a graph of small tensor operations it cost
    0.2-0.5 ms a step (2D-3D rigid, forward and backward; about as much as the step's data term).
    Elsewhere (a GPU: no copies to the host) the graph of :func:`rotation_matrix` and :func:`about_center`."""
    if parameters.device.type != "cpu":
        ndim = center.shape[0]
        linear = rotation_matrix(parameters, ndim) if rotation else parameters
        return about_center(linear, translation * translation_scale, center)
    return _CentredMatrix.apply(parameters, translation, center, rotation, float(translation_scale))


def _centred_floats(parameters: torch.Tensor, translation: torch.Tensor, center: torch.Tensor, rotation: bool,
                    translation_scale: float):
    """:func:`centred_matrix` in Python floats: ``(linear, shift, derivatives, center)``, ``linear`` ``D x D``
    lists, ``shift`` ``D``, ``derivatives`` of the rotation per parameter (None: affine)."""
    c, t = center.tolist(), translation.tolist()
    ndim = len(c)
    if rotation:
        linear, derivatives = rotation_and_derivatives(parameters.tolist())
    else:
        linear, derivatives = parameters.tolist(), None
    shift = [c[i] + t[i] * translation_scale - sum(linear[i][j] * c[j] for j in range(ndim)) for i in range(ndim)]
    return linear, shift, derivatives, c


def _centred_gradients(g_linear_full: list, g_shift: list, ctx, dtype: torch.dtype, need_center: bool):
    """The gradients of :func:`centred_matrix`'s inputs from those of its linear part ``g[i][j]`` and its
    shift ``g_shift[i]`` (Python floats; ``ctx`` holds ``linear``, ``derivatives``, ``center``, ``translation_scale``)."""
    c, linear = ctx.center, ctx.linear
    ndim = len(c)
    # shift = c + t s - linear c: d/d linear_ij = -g_shift_i c_j
    g_linear = [[g_linear_full[i][j] - g_shift[i] * c[j] for j in range(ndim)] for i in range(ndim)]
    if ctx.derivatives is None:
        grad_parameters = torch.tensor(g_linear, dtype=dtype)
    else:
        grad_parameters = torch.tensor([sum(g_linear[i][j] * d[i][j] for i in range(ndim) for j in range(ndim))
                                        for d in ctx.derivatives], dtype=dtype)
    grad_translation = torch.tensor([v * ctx.translation_scale for v in g_shift], dtype=dtype)
    grad_center = None
    if need_center:
        grad_center = torch.tensor([g_shift[j] - sum(linear[i][j] * g_shift[i] for i in range(ndim))
                                    for j in range(ndim)], dtype=dtype)
    return grad_parameters, grad_translation, grad_center


class _CentredMatrix(torch.autograd.Function):
    """:func:`centred_matrix` on the CPU, in floats."""

    @staticmethod
    def forward(ctx, parameters, translation, center, rotation, translation_scale):
        linear, shift, derivatives, c = _centred_floats(parameters, translation, center, rotation, translation_scale)
        ctx.linear, ctx.derivatives, ctx.center, ctx.translation_scale = linear, derivatives, c, translation_scale
        ndim = len(c)
        rows = [linear[i] + [shift[i]] for i in range(ndim)] + [[0.0] * ndim + [1.0]]
        return torch.tensor(rows, dtype=parameters.dtype)

    @staticmethod
    def backward(ctx, grad):
        g = grad.tolist()
        ndim = len(ctx.center)
        return _centred_gradients(g, [g[i][ndim] for i in range(ndim)], ctx, grad.dtype, ctx.needs_input_grad[2]) + (None, None)


def centred_map(parameters: torch.Tensor, translation: torch.Tensor, center: torch.Tensor, points: torch.Tensor, *,
                rotation: bool, translation_scale: float = 1.0) -> torch.Tensor:
    """``apply_affine(centred_matrix(...), points)``: the rigid or affine motion at points ``(P, D)``, in
    their dtype (the matrix rounded to it, as :func:`~monai_inr_reg.core.grid.apply_affine` does).

    On the CPU one autograd node: the matrix in floats, the map by :func:`monai_inr_reg._ext.affine_forward`,
    and backward the matrix's gradient ``grad^T [points, 1]`` (summed in float64) taken to the parameters
    in floats. The rigid and affine fits run it every step, where the graph of the two cost about
    0.2 ms a step forward and backward (2D, 512-4,096 points), mostly torch's product of a (P, 2) by a
    (2, 2) matrix.
    """
    if parameters.device.type != "cpu":
        return apply_affine(centred_matrix(parameters, translation, center, rotation=rotation,
                                           translation_scale=translation_scale), points)
    return _CentredMap.apply(parameters, translation, center, points, rotation, float(translation_scale))


class _CentredMap(torch.autograd.Function):
    """:func:`centred_map` on the CPU."""

    @staticmethod
    def forward(ctx, parameters, translation, center, points, rotation, translation_scale):
        linear, shift, derivatives, c = _centred_floats(parameters, translation, center, rotation, translation_scale)
        ctx.linear, ctx.derivatives, ctx.center, ctx.translation_scale = linear, derivatives, c, translation_scale
        ndim = len(c)
        matrix = torch.tensor([linear[i] + [shift[i]] for i in range(ndim)], dtype=points.dtype)  # (D, D + 1)
        ctx.parameters_dtype = parameters.dtype
        ctx.save_for_backward(points, matrix)
        from .. import _ext  # the compiled kernels (this module is imported before them)

        return _ext.affine_forward(matrix, points)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        points, matrix = ctx.saved_tensors
        ndim = points.shape[1]
        from .. import _ext

        grad_points, grad_matrix = _ext.affine_backward(grad, points, matrix, ctx.needs_input_grad[3], True)
        g = grad_matrix.tolist()
        grads = _centred_gradients(g, [g[i][ndim] for i in range(ndim)], ctx, ctx.parameters_dtype, ctx.needs_input_grad[2])
        return grads + (grad_points, None, None)


def homogeneous(linear: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``(D + 1, D + 1)`` homogeneous matrix from a ``(D, D)`` linear part and a ``(D,)`` translation."""
    d = linear.shape[0]
    bottom = torch.zeros(1, d + 1, dtype=linear.dtype, device=linear.device)
    bottom[0, d] = 1.0
    return torch.cat([torch.cat([linear, translation[:, None]], dim=1), bottom])


def about_center(linear: torch.Tensor, translation: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Homogeneous map ``x -> linear (x - center) + center + translation``."""
    return homogeneous(linear, center + translation - linear @ center)


def nearest_rotation(linear: torch.Tensor) -> torch.Tensor:
    """The rotation ``(D, D)`` closest to ``linear`` in the Frobenius norm (polar decomposition, det +1)."""
    u, _, vt = torch.linalg.svd(linear)
    d = torch.ones(linear.shape[0], dtype=linear.dtype, device=linear.device)
    d[-1] = torch.sign(torch.linalg.det(u @ vt))
    return u @ torch.diag(d) @ vt


def rotation_parameters(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rotation_matrix`: ``(D, D)`` rotation -> 2D ``(1,)`` angle or 3D ``(3,)`` rotation
    vector (radians). The identity gives exact zeros."""
    r = rotation.to(torch.float64)
    if r.shape[0] == 2:
        return torch.atan2(r[1, 0], r[0, 0])[None]
    cos = ((torch.trace(r) - 1.0) / 2.0).clamp(-1.0, 1.0)
    angle = torch.arccos(cos)
    if float(angle) == 0.0:
        return torch.zeros(3, dtype=torch.float64)
    skew = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])  # 2 sin(angle) axis
    if float(torch.sin(angle)) > 1e-3:
        return skew / (2.0 * torch.sin(angle)) * angle
    # near pi the skew part vanishes: the axis from the symmetric part, (R + I) / 2 ~ a a^T
    sym = ((r + r.T) / 2.0 + torch.eye(3, dtype=torch.float64)) / 2.0
    column = int(torch.argmax(torch.diagonal(sym)))
    axis = sym[:, column] / torch.linalg.norm(sym[:, column])
    return axis * angle * (-1.0 if float(axis @ skew) < 0 else 1.0)
