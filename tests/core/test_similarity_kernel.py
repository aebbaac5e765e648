"""The compiled data term (``similarity_fwd``) against the PyTorch code it replaces on the CPU: the value and
the gradient to the moved points of the mean squares, of mutual information, of the mapped L2 (one-sided, symmetric, robust) and
of the windowed correlation (``local_cc``), the same bits at any thread count, and :class:`~monai_inr_reg.objectives.Similarity` (with a moving mask)
giving the same data term either way."""

from __future__ import annotations

import math

import pytest
import torch

from monai_inr_reg import _ext
from monai_inr_reg.core.grid import ImageGrid, apply_affine
from monai_inr_reg.core.losses import gaussian_smooth, mapped_l2, mutual_information, normalise_rows, normalised_patches, window_offsets
from monai_inr_reg.core.sample import sample_image

pytestmark = pytest.mark.skipif(not _ext.kernel_available(), reason="compiled kernel unavailable")

SHAPES = {2: (41, 37), 3: (19, 17, 15)}


def _case(ndim: int, n_points: int = 6000, seed: int = 0):
    """A smooth random image, points of which about a fifth fall outside its grid, fixed values in and a
    little beyond [0, 1] (so the hat cells clamp), and a random ``keep``."""
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPES[ndim]
    image = gaussian_smooth(torch.rand((1,) + shape, generator=gen), 1.0)
    image = (image - image.min()) / (image.max() - image.min())
    points = torch.rand(n_points, ndim, generator=gen) * (torch.tensor(shape, dtype=torch.float32) + 3.0) - 1.5
    fixed = torch.rand(n_points, generator=gen) * 1.1 - 0.05
    keep = torch.rand(n_points, generator=gen) > 0.2
    return image, points, fixed, keep


def _torch_term(image, points, fixed, keep, metric, bins, robust_scale, symmetric, variance_gradient):
    """What ``Similarity.__call__`` computes without the kernel."""
    last = torch.tensor(image.shape[1:], dtype=torch.float32) - 1
    inside = ((points >= 0) & (points <= last)).all(1)
    if keep is not None:
        inside = inside & keep
    index = inside.nonzero()[:, 0]
    moving = sample_image(image, points.index_select(0, index))[:, 0]
    target = fixed.index_select(0, index)
    if metric == "mean_squares":
        return (moving - target).pow(2).mean()
    if metric == "mutual_information":
        return -mutual_information(moving, target, bins)
    loss = mapped_l2(moving, target, bins, robust_scale=robust_scale)
    if symmetric:
        loss = 0.5 * (loss + mapped_l2(target, moving, bins, robust_scale=robust_scale, variance_gradient=variance_gradient))
    return loss


def _value_and_gradient(fn, points, *args):
    points = points.clone().requires_grad_(True)
    loss = fn(points, *args)
    loss.backward()
    return loss.detach(), points.grad


def _local_cc_case(ndim: int, radius: int, n_points: int = 3000, seed: int = 0):
    """:func:`_case`'s image and points (a fifth outside, some windows reaching past the edge), and a
    fixed window per point: zero-mean, unit-norm rows of another smooth image's windows."""
    image, points, _, keep = _case(ndim, n_points, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    windows = normalised_patches(gaussian_smooth(torch.rand(image.shape, generator=gen), 1.0), radius)
    return image, points, windows[torch.randint(windows.shape[0], (n_points,), generator=gen)], keep


def _torch_local_cc(image, points, fixed_windows, keep, radius):
    """What ``Similarity.__call__`` computes for ``local_cc`` without the kernel."""
    ndim = points.shape[1]
    last = torch.tensor(image.shape[1:], dtype=torch.float32) - 1
    inside = ((points >= 0) & (points <= last)).all(1)
    if keep is not None:
        inside = inside & keep
    index = inside.nonzero()[:, 0]
    centres = points.index_select(0, index)
    samples = sample_image(image, (centres[:, None, :] + window_offsets(ndim, radius)[None]).reshape(-1, ndim))
    return -(normalise_rows(samples[:, 0].reshape(centres.shape[0], fixed_windows.shape[1])) * fixed_windows.index_select(0, index)).sum(1).mean()


SETTINGS = [("mean_squares", 0, 0.0, False, False), ("mutual_information", 24, 0.0, False, False), ("mutual_information", 8, 0.0, False, False),
            ("mapped_l2", 24, 0.0, False, False), ("mapped_l2", 16, 1.5, False, False),
            ("mapped_l2", 24, 0.0, True, False), ("mapped_l2", 24, 0.0, True, True), ("mapped_l2", 16, 1.5, True, True)]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(str(v) for v in s))
@pytest.mark.parametrize("use_keep", [False, True])
def test_similarity_kernel_equals_pytorch(ndim, setting, use_keep):
    metric, bins, robust_scale, symmetric, variance_gradient = setting
    image, points, fixed, keep = _case(ndim)
    keep = keep if use_keep else None
    ref, ref_grad = _value_and_gradient(
        lambda p: _torch_term(image, p, fixed, keep, metric, bins, robust_scale, symmetric, variance_gradient), points)
    out, grad = _value_and_gradient(
        lambda p: _ext.similarity_kernel(image, p, fixed, metric, bins, keep=keep, robust_scale=robust_scale,
                                         symmetric=symmetric, variance_gradient=variance_gradient), points)
    assert out.shape == () and out.dtype == torch.float32
    assert float(out) == pytest.approx(float(ref), rel=1e-5, abs=1e-7)
    scale = float(ref_grad.abs().max())
    assert scale > 0
    assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-4 * scale)
    outside = ~((points >= 0) & (points <= torch.tensor(SHAPES[ndim], dtype=torch.float32) - 1)).all(1)
    assert bool((grad[outside] == 0).all())  # points outside the grid carry no gradient


def test_similarity_kernel_with_no_point_inside():
    """As the PyTorch code: mutual information 0, the mapped L2 undefined (NaN; ``Similarity.scores``
    reads it as infinitely bad), and no gradient."""
    image, points, fixed, _ = _case(2, 100)
    far = points + 1000.0
    for metric, expected in (("mutual_information", 0.0), ("mapped_l2", math.nan), ("mean_squares", math.nan)):
        out, grad = _value_and_gradient(lambda p: _ext.similarity_kernel(image, p, fixed, metric, 16), far)
        ref = _torch_term(image, far, fixed, None, metric, 16, 0.0, False, False)
        assert (math.isnan(float(out)) and math.isnan(float(ref))) if math.isnan(expected) else float(out) == float(ref) == 0.0
        assert bool((grad == 0).all())


@pytest.mark.parametrize("metric, symmetric", [("mutual_information", False), ("mapped_l2", True), ("local_cc", False),
                                               ("mean_squares", False)])
def test_similarity_kernel_is_the_same_at_1_and_2_threads(metric, symmetric):
    """Sums over points run in chunks of a fixed size, added in order: the same bits at any thread count
    (50,000 points: 13 chunks)."""
    if metric == "local_cc":
        image, points, fixed, keep = _local_cc_case(3, 1, 50_000, seed=1)
    else:
        image, points, fixed, keep = _case(3, 50_000, seed=1)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_value_and_gradient(
                lambda p: _ext.similarity_kernel(image, p, fixed, metric, 24, keep=keep, symmetric=symmetric,
                                                 variance_gradient=True), points))
    finally:
        torch.set_num_threads(before)
    (v1, g1), (v2, g2) = results
    assert torch.equal(v1, v2) and torch.equal(g1, g2)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("use_keep", [False, True])
def test_local_cc_kernel_equals_pytorch(ndim, radius, use_keep):
    """The windowed correlation: the moving window sampled around each inside point (zeros padding past
    the edge), centred and normalised, against the fixed window; the gradient takes the motion as a
    translation over the window."""
    image, points, windows, keep = _local_cc_case(ndim, radius)
    keep = keep if use_keep else None
    ref, ref_grad = _value_and_gradient(lambda p: _torch_local_cc(image, p, windows, keep, radius), points)
    out, grad = _value_and_gradient(lambda p: _ext.similarity_kernel(image, p, windows, "local_cc", 0, keep=keep), points)
    assert out.shape == () and float(out) == pytest.approx(float(ref), rel=1e-5, abs=1e-7)
    scale = float(ref_grad.abs().max())
    assert scale > 0
    assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-4 * scale)
    outside = ~((points >= 0) & (points <= torch.tensor(SHAPES[ndim], dtype=torch.float32) - 1)).all(1)
    assert bool((grad[outside] == 0).all())


def test_local_cc_kernel_edge_cases():
    """No point inside: NaN (the mean of none, as the PyTorch code) and no gradient; a window of a flat
    region (its norm under the floor): a finite value and no gradient (rounding); a window of the wrong size is refused."""
    image, points, windows, _ = _local_cc_case(2, 1, 200)
    out, grad = _value_and_gradient(lambda p: _ext.similarity_kernel(image, p, windows, "local_cc", 0), points + 1000.0)
    assert math.isnan(float(out)) and math.isnan(float(_torch_local_cc(image, points + 1000.0, windows, None, 1)))
    assert bool((grad == 0).all())
    flat = torch.full_like(image, 0.4)
    out, grad = _value_and_gradient(lambda p: _ext.similarity_kernel(flat, p, windows, "local_cc", 0), points.clamp(2, 30))
    assert math.isfinite(float(out)) and float(grad.abs().max()) < 1e-9
    with pytest.raises(RuntimeError, match=r"window of 8 values is not \(2 r \+ 1\)\^2"):
        _ext.similarity_kernel(image, points, windows[:, :8], "local_cc", 0)


@pytest.mark.parametrize("objective", ["mutual_information", "mapped_l2", "local_cc", "mean_squares"])
def test_similarity_uses_the_kernel_with_the_same_result(objective, monkeypatch):
    """``Similarity`` on a prepared pair with a moving mask and a rotated motion: the compiled term and
    the PyTorch one agree (value and gradient to the motion's matrix), and the compiled one is used."""
    from monai_inr_reg.config import load_preset
    from monai_inr_reg.objectives import Similarity
    from monai_inr_reg.pair import prepare_pair

    image, *_ = _case(2)
    fixed, moving = image, image.flip(1)
    mask = torch.zeros(SHAPES[2])
    mask[4:-6, 3:-3] = 1.0
    grid = ImageGrid.from_ras_affine(SHAPES[2], None)
    pair = prepare_pair(fixed, grid, moving, grid, load_preset("multimodal-rigid"), "cpu", moving_mask=mask)
    stage = {"objective": objective, "bins": 16, "symmetric": objective == "mapped_l2", "window_radius": 1}
    angle = math.radians(7.0)
    results = []
    for fused in (True, False):
        similarity = Similarity(pair, stage, variance_gradient=True)
        similarity.fused = fused
        calls = []
        monkeypatch.setattr(_ext, "similarity_kernel", lambda *a, _f=_ext.similarity_kernel, **k: calls.append(1) or _f(*a, **k))
        matrix = torch.tensor([[math.cos(angle), -math.sin(angle), 2.0], [math.sin(angle), math.cos(angle), -1.5],
                               [0.0, 0.0, 1.0]], requires_grad=True)
        loss = similarity(apply_affine(matrix, pair.fixed_points_mm.to(torch.float32)), similarity.fixed_values)
        loss.backward()
        results.append((float(loss.detach()), matrix.grad))
        assert bool(calls) == fused
    (fused_value, fused_grad), (torch_value, torch_grad) = results
    assert fused_value == pytest.approx(torch_value, rel=1e-5)
    assert torch.allclose(fused_grad, torch_grad, rtol=1e-3, atol=1e-6 * float(torch_grad.abs().max()))
