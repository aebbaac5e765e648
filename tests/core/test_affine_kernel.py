"""apply_affine through the compiled kernel (CPU points) against torch's product, and centred_map (the
rigid and affine motions: matrix and map in one autograd node) against apply_affine(centred_matrix)."""

from __future__ import annotations

import pytest
import torch

from monai_inr_reg import _ext
from monai_inr_reg.core.grid import apply_affine
from monai_inr_reg.core.linear import centred_map, centred_matrix
from test_threads import at_threads

pytestmark = pytest.mark.skipif(not _ext.kernel_available(), reason="the compiled kernel is not available here")


def reference_map(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    d = points.shape[1]
    return points @ matrix[:d, :d].T + matrix[:d, d]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_points", [1, 7, 4096, 40000])
def test_apply_affine_values_and_gradients_match_torch(ndim, dtype, n_points):
    gen = torch.Generator().manual_seed(ndim * 100 + n_points)
    matrix0 = torch.eye(ndim + 1, dtype=torch.float64)
    matrix0[:ndim] += 0.3 * torch.randn(ndim, ndim + 1, generator=gen, dtype=torch.float64)
    matrix0[:ndim, ndim] *= 100.0
    points0 = (200.0 * torch.rand(n_points, ndim, generator=gen, dtype=torch.float64)).to(dtype)
    grad_out = torch.randn(n_points, ndim, generator=gen, dtype=torch.float64).to(dtype)
    matrix, points = matrix0.clone().requires_grad_(), points0.clone().requires_grad_()
    got = apply_affine(matrix, points)
    assert got.dtype == dtype and got.shape == (n_points, ndim)
    got.backward(grad_out)
    ref_matrix, ref_points = matrix0.clone().requires_grad_(), points0.double().requires_grad_()
    expected = reference_map(ref_matrix, ref_points)
    expected.backward(grad_out.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * 300)
    torch.testing.assert_close(points.grad.double(), ref_points.grad, rtol=tol, atol=tol)
    # the matrix's gradient sums over the points: in float64 whatever the points' dtype
    torch.testing.assert_close(matrix.grad, ref_matrix.grad, rtol=tol, atol=tol * n_points * 300)
    assert matrix.grad[ndim].abs().max() == 0  # the homogeneous row is not used


def test_apply_affine_matrix_gradient_is_the_same_at_1_and_2_threads():
    gen = torch.Generator().manual_seed(0)
    points = 100.0 * torch.rand(65536 + 123, 3, generator=gen)
    grad_out = torch.randn(points.shape, generator=gen)

    def run():
        matrix = torch.eye(4, dtype=torch.float64, requires_grad=True)
        apply_affine(matrix, points).backward(grad_out)
        return matrix.grad

    assert torch.equal(at_threads(1, run), at_threads(2, run))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("rotation", [True, False], ids=["rigid", "affine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centred_map_equals_the_matrix_applied_with_its_gradients(ndim, rotation, dtype):
    gen = torch.Generator().manual_seed(ndim + 10 * rotation)
    if rotation:
        parameters = 0.4 * torch.randn(1 if ndim == 2 else 3, generator=gen, dtype=torch.float64)
    else:
        parameters = torch.eye(ndim, dtype=torch.float64) + 0.2 * torch.randn(ndim, ndim, generator=gen, dtype=torch.float64)
    translation = torch.randn(ndim, generator=gen, dtype=torch.float64)
    center = 80.0 * torch.randn(ndim, generator=gen, dtype=torch.float64)
    points0 = (150.0 * torch.rand(3000, ndim, generator=gen, dtype=torch.float64)).to(dtype)
    grad_out = torch.randn(3000, ndim, generator=gen, dtype=torch.float64).to(dtype)
    node = [t.clone().requires_grad_() for t in (parameters, translation, center, points0)]
    reference = [t.clone().requires_grad_() for t in (parameters, translation, center, points0)]
    got = centred_map(*node, rotation=rotation, translation_scale=150.0)
    expected = apply_affine(centred_matrix(*reference[:3], rotation=rotation, translation_scale=150.0), reference[3])
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the same matrix, rounded alike, the same kernel
    got.backward(grad_out)
    expected.backward(grad_out)
    for a, b in zip(node, reference):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=1e-9)
