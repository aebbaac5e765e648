"""centred_matrix: the rigid and affine motions' matrix as one CPU autograd node, against the graph
of rotation_matrix and about_center (the same formula as tensor operations)."""

from __future__ import annotations

import pytest
import torch

from monai_inr_reg.core.linear import about_center, centred_matrix, rotation_and_derivatives, rotation_matrix

# 0; inside the series of Rodrigues' coefficients (t^2 < 1e-3); either side of its edge; large; near pi
ROTATION_SCALES = [0.0, 1e-6, 1e-3, 0.0315, 0.0318, 0.3, 1.5, 3.1]


def graph(parameters, translation, center, rotation: bool, scale: float) -> torch.Tensor:
    linear = rotation_matrix(parameters, center.shape[0]) if rotation else parameters
    return about_center(linear, translation * scale, center)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("rotation", [True, False], ids=["rigid", "affine"])
@pytest.mark.parametrize("scale", ROTATION_SCALES)
def test_centred_matrix_equals_the_graph_with_its_gradients(ndim, rotation, scale):
    generator = torch.Generator().manual_seed(int(scale * 1e6) + ndim)
    for _ in range(5):
        if rotation:
            direction = torch.randn(1 if ndim == 2 else 3, generator=generator, dtype=torch.float64)
            parameters = direction / direction.norm() * scale
        else:
            parameters = torch.eye(ndim, dtype=torch.float64) + scale * torch.randn(ndim, ndim, generator=generator,
                                                                                 dtype=torch.float64)
        translation = torch.randn(ndim, generator=generator, dtype=torch.float64)
        center = 80.0 * torch.randn(ndim, generator=generator, dtype=torch.float64)
        weights = torch.randn(ndim + 1, ndim + 1, generator=generator, dtype=torch.float64)
        node = [t.clone().requires_grad_() for t in (parameters, translation, center)]
        reference = [t.clone().requires_grad_() for t in (parameters, translation, center)]
        got = centred_matrix(*node, rotation=rotation, translation_scale=150.0)
        expected = graph(*reference, rotation, 150.0)
        assert torch.allclose(got, expected, rtol=0, atol=1e-13 * float(expected.abs().max()))
        (got * weights).sum().backward()
        (expected * weights).sum().backward()
        for a, b in zip(node, reference):
            assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-12 * float(b.grad.abs().max())), (a.grad, b.grad)


@pytest.mark.parametrize("rotation", [[0.0], [0.7], [0.0, 0.0, 0.0], [2e-3, -1e-2, 5e-3], [0.4, -1.1, 0.6]])
def test_centred_matrix_gradcheck(rotation):
    ndim = 2 if len(rotation) == 1 else 3
    inputs = (torch.tensor(rotation, dtype=torch.float64, requires_grad=True),
              torch.tensor([0.3, -0.2, 0.1][:ndim], dtype=torch.float64, requires_grad=True),
              torch.tensor([10.0, -4.0, 7.0][:ndim], dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda p, t, c: centred_matrix(p, t, c, rotation=True, translation_scale=3.0),
                                    inputs, eps=1e-6, atol=1e-7)


def test_rotation_derivatives_match_finite_differences():
    for rotation in ([0.2], [1e-5, 2e-5, -1e-5], [0.3, -0.5, 0.9]):
        _, derivatives = rotation_and_derivatives(rotation)
        for k in range(len(rotation)):
            step = [1e-7 if i == k else 0.0 for i in range(len(rotation))]
            up, _ = rotation_and_derivatives([r + s for r, s in zip(rotation, step)])
            down, _ = rotation_and_derivatives([r - s for r, s in zip(rotation, step)])
            numeric = (torch.tensor(up, dtype=torch.float64) - torch.tensor(down, dtype=torch.float64)) / 2e-7
            assert torch.allclose(torch.tensor(derivatives[k], dtype=torch.float64), numeric, atol=1e-7)
