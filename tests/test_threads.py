"""Results do not depend on the number of threads: every sum over points has an order that our code fixes.

The compiled hash-grid kernel splits its backward pass into a fixed number of tasks whatever the
thread count (``kBackwardTasks``); the MLP's weight and bias gradients and the mutual information's
joint histogram sum over the points in fixed blocks (:mod:`monai_inr_reg.core.reduce`), where torch's
own products would split a long sum between threads. So a registration with a seed gives the same
bits at 1 and 2 threads, the deformable presets included (their field stage samples 4225 points per
iteration in 2D and 16384 in 3D).
"""

from __future__ import annotations

import pytest
import torch

from monai_inr_reg import register
from monai_inr_reg._ext import hash_grid_encode_kernel, kernel_available
from monai_inr_reg.core.reduce import ROW_BLOCK, linear, row_sum, transposed_matmul
from monai_inr_reg.core.encoding import hash_grid_spec, init_hash_grid_params
from synthetic_images import gaussian_blobs, phantom


def at_threads(threads: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("ndim", [2, 3])
def test_kernel_gradients_are_the_same_at_1_and_2_threads(ndim):
    if not kernel_available():
        pytest.skip("the compiled kernel is not available here")
    spec = hash_grid_spec(ndim, {"n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 12,
                                 "base_resolution": 4, "finest_resolution": 256})
    gen = torch.Generator().manual_seed(0)
    params0 = init_hash_grid_params(spec, generator=gen) * 1e3
    points0 = torch.rand(20000, ndim, generator=gen)
    weights = torch.rand(spec.n_levels * spec.n_features, generator=gen)

    def run():
        params, points = params0.clone().requires_grad_(True), points0.clone().requires_grad_(True)
        features = hash_grid_encode_kernel(points, params, spec)
        (features * weights).sum().backward()
        return features.detach(), params.grad, points.grad

    one, two = at_threads(1, run), at_threads(2, run)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_rigid_preset_is_the_same_at_1_and_2_threads():
    fixed = torch.from_numpy(gaussian_blobs((64, 56)))[None]
    moving = torch.from_numpy(gaussian_blobs((64, 56), (3.0, -2.0)))[None]
    one, two = (at_threads(t, lambda: register(fixed, moving, "rigid", iterations_scale=0.5, progress=False))
                for t in (1, 2))
    assert torch.equal(one.matrix_mm, two.matrix_mm) and one.loss_history == two.loss_history


@pytest.mark.parametrize("rows", [1, 100, ROW_BLOCK, ROW_BLOCK + 1, 4225, 16384 + 3 * 1024, 40000])
def test_sums_over_points_are_the_same_at_1_and_2_threads_and_right(rows):
    gen = torch.Generator().manual_seed(rows)
    shapes = [(1, 1), (64, 1), (3, 3), (16, 16), (64, 64), (64, 16), (2, 64)]
    inputs = [(torch.randn(rows, k, generator=gen), torch.randn(rows, m, generator=gen)) for k, m in shapes]

    def run():
        return [(transposed_matmul(a, b), row_sum(b)) for a, b in inputs]

    one, two = at_threads(1, run), at_threads(2, run)
    for (a, b), (product1, sum1), (product2, sum2) in zip(inputs, one, two):
        assert torch.equal(product1, product2) and torch.equal(sum1, sum2)
        torch.testing.assert_close(product1, (a.double().T @ b.double()).float(), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(sum1, b.double().sum(0).float(), rtol=1e-4, atol=1e-3)


def test_linear_gradients_are_the_same_at_1_and_2_threads_and_right():
    gen = torch.Generator().manual_seed(0)
    x0, w0, b0 = torch.randn(7000, 64, generator=gen), torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen)
    grad_out = torch.randn(7000, 32, generator=gen)

    def run(fn):
        x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        (fn(x, w, b) * grad_out).sum().backward()
        return x.grad, w.grad, b.grad

    one, two = at_threads(1, lambda: run(linear)), at_threads(2, lambda: run(linear))
    reference = run(torch.nn.functional.linear)
    for a, b, r in zip(one, two, reference):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("preset", ["deformable", "multimodal-deformable"])
def test_deformable_presets_are_the_same_at_1_and_2_threads(preset):
    fixed = torch.from_numpy(gaussian_blobs((64, 56)))[None]
    moving = torch.from_numpy(gaussian_blobs((64, 56), (3.0, -2.0)))[None]
    if preset.startswith("multimodal"):
        moving = 1.0 - moving
    one, two = (at_threads(t, lambda: register(fixed, moving, preset, iterations_scale=0.3, progress=False))
                for t in (1, 2))
    assert one.loss_history == two.loss_history and torch.equal(one.ddf, two.ddf)


def test_3d_field_stage_is_the_same_at_1_and_2_threads():
    """A field stage on more points than one block of the sums (16384 + 3 x 1024 a step)."""
    shape = (40, 36, 32)
    fixed = phantom(shape, seed=1)
    moving = torch.roll(fixed, 1, dims=1)
    stage = {"name": "field", "motion": "deformable", "objective": "mutual_information", "iterations": 20,
             "smoothness_weight": 1.0, "folding_weight": 10.0, "coarse_to_fine_share": 0.7,
             "fixed_points_cover_table": True}
    one, two = (at_threads(t, lambda: register(fixed, moving, stages=[stage], progress=False)) for t in (1, 2))
    assert one.loss_history == two.loss_history and torch.equal(one.ddf, two.ddf)


def test_gaussian_smoothing_is_the_same_at_1_and_2_threads_and_a_gaussian():
    """On a brain-sized volume (oneDNN's conv3d gave other bits at 2 threads from about 7 M voxels)."""
    import torch.nn.functional as F

    from monai_inr_reg.core.losses import gaussian_smooth

    image = torch.rand(1, 160, 192, 224, generator=torch.Generator().manual_seed(0))
    one, two = (at_threads(t, lambda: gaussian_smooth(image, 2.0)) for t in (1, 2))
    assert torch.equal(one, two)
    x = torch.arange(-6, 7, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / 2.0) ** 2)
    kernel = kernel / kernel.sum()
    reference = image[None, :, :40, :40, :40]  # a corner: edge voxels continue outside (replicate)
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = 13
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = 6
        reference = F.conv3d(F.pad(reference, pad, mode="replicate"), kernel.reshape(shape))
    corner = gaussian_smooth(image[:, :40, :40, :40], 2.0)
    torch.testing.assert_close(corner, reference[0], rtol=0, atol=1e-6)


def test_bounded_preset_is_the_same_at_1_and_2_threads():
    """The discrete search (MIND-SSC, pooled costs, argmin) and its grid motion, on a 3D pair the size
    of a prostate TRUS volume."""
    fixed = phantom((44, 56, 40), seed=5, blobs=30)
    moving = 1.0 - torch.roll(fixed, shifts=(4, -2, 2), dims=(1, 2, 3))
    one, two = (at_threads(t, lambda: register(fixed, moving, "bounded", progress=False)) for t in (1, 2))
    assert torch.equal(one.ddf, two.ddf) and float(one.ddf.abs().max()) > 1.0
