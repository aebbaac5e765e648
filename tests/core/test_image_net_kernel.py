"""The image-net L2 in one compiled node (image_net_l2_kernel) against the same net and loss as a graph."""

from __future__ import annotations

import pytest
import torch

from monai_inr_reg import _ext
from monai_inr_reg.core.encoding import level_weights
from monai_inr_reg.nn import CoordinateNet

pytestmark = pytest.mark.skipif(not _ext.kernel_available(), reason="the compiled kernel is not available here")


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("channels", [(0, 0), (1, 0)], ids=["single-modal", "multi-modal"])
@pytest.mark.parametrize("alpha", [None, 3.4])
def test_image_net_l2_kernel_equals_the_graph(ndim, channels, alpha):
    gen = torch.Generator().manual_seed(ndim + 7 * channels[0])
    nets = [CoordinateNet(ndim, 1 + channels[0], {"n_levels": 8, "finest_resolution": 64}, {"n_neurons": 32},
                          generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    with torch.no_grad():  # tables away from their tiny initial values, so every gradient is visible
        for net in nets:
            net.encoding.params.copy_(torch.randn(net.encoding.params.shape, generator=torch.Generator().manual_seed(4)))
    fixed_unit0 = torch.rand(512, ndim, generator=gen) * 1.1 - 0.05  # some outside [0, 1]: clamped
    moving_unit = torch.rand(300, ndim, generator=gen)
    fixed_values, moving_values = torch.rand(512, generator=gen), torch.rand(300, generator=gen)
    weights = None if alpha is None else level_weights(alpha, 8)
    assert nets[0].runs_in_kernel(fixed_unit0)

    fixed_unit = fixed_unit0.clone().requires_grad_()
    got = _ext.image_net_l2_kernel(fixed_unit, moving_unit, fixed_values, moving_values, channels,
                                   nets[0].encoding.params, nets[0].encoding.spec, weights, list(nets[0].weights),
                                   list(nets[0].biases))
    (3.0 * got).backward()

    reference_unit = fixed_unit0.clone().requires_grad_()
    pred = nets[1](torch.cat([reference_unit, moving_unit]), weights)
    expected = ((pred[:512, channels[0]] - fixed_values).pow(2).mean()
                + (pred[512:, channels[1]] - moving_values).pow(2).mean())
    (3.0 * expected).backward()

    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fixed_unit.grad, reference_unit.grad, rtol=1e-4, atol=1e-6)
    assert fixed_unit.grad.abs().sum() > 0
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
        assert a.grad.abs().sum() > 0
