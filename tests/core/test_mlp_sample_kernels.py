"""The compiled MLP and linear-sampling kernels against the PyTorch code they replace on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_inr_reg import _ext
from monai_inr_reg.core.grid import grid_sample_coords
from monai_inr_reg.core.mlp import mlp_forward, mlp_spec
from monai_inr_reg.core.sample import sample_image
from monai_inr_reg.nn import CoordinateNet

pytestmark = pytest.mark.skipif(not _ext.kernel_available(), reason="compiled kernel unavailable")


def _mlp(n_inputs: int, n_outputs: int, network: dict, seed: int = 0):
    spec = mlp_spec(n_inputs, n_outputs, network)
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o, i, generator=gen) / i ** 0.5 for i, o in zip(spec.widths[:-1], spec.widths[1:])]
    biases = [0.1 * torch.randn(o, generator=gen) for o in spec.widths[1:]]
    return spec, weights, biases


def _values_and_gradients(fn, x, weights, biases, spec, grad_out):
    x = x.clone().requires_grad_(True)
    weights = [w.clone().requires_grad_(True) for w in weights]
    biases = [b.clone().requires_grad_(True) for b in biases]
    out = fn(x, weights, biases, spec)
    out.backward(grad_out)
    return [out.detach(), x.grad] + [w.grad for w in weights] + [b.grad for b in biases]


@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9, 511, 512, 513, 4225, 19456])
@pytest.mark.parametrize("network", [{"n_neurons": 32, "n_hidden_layers": 1}, {"n_neurons": 16, "n_hidden_layers": 2},
                                     {"n_neurons": 8, "n_hidden_layers": 0}, {"n_neurons": 64, "n_hidden_layers": 2},
                                     {"n_neurons": 20, "n_hidden_layers": 1}])
def test_mlp_kernel_equals_pytorch(rows, network):
    """Values and the gradients to the inputs, weights and biases (every block and tile size: fewer
    points than a tile, a partial tile, a partial block of the weight-gradient sums)."""
    spec, weights, biases = _mlp(16, 3, network)
    gen = torch.Generator().manual_seed(rows)
    x, grad_out = torch.rand(rows, 16, generator=gen), torch.randn(rows, 3, generator=gen)
    ours = _values_and_gradients(_ext.mlp_forward_kernel, x, weights, biases, spec, grad_out)
    reference = _values_and_gradients(mlp_forward, x.double(), [w.double() for w in weights],
                                      [b.double() for b in biases], spec, grad_out.double())
    for a, r in zip(ours, reference):
        assert a.dtype == torch.float32 and a.shape == r.shape
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * max([1.0] + r.abs().flatten().tolist()))


def test_mlp_kernel_keeps_relu_and_nan_semantics():
    spec, weights, biases = _mlp(4, 2, {"n_neurons": 8, "n_hidden_layers": 1})
    x = torch.tensor([[0.1, 0.2, 0.3, 0.4], [float("nan"), 0.0, 0.0, 0.0]])
    out, reference = _ext.mlp_forward_kernel(x, weights, biases, spec), mlp_forward(x, weights, biases, spec)
    torch.testing.assert_close(out[0], reference[0])
    assert torch.isnan(out[1]).all() and torch.isnan(reference[1]).all()


def test_mlp_kernel_gradients_are_the_same_at_1_and_2_threads():
    spec, weights, biases = _mlp(16, 3, {"n_neurons": 32, "n_hidden_layers": 1})
    gen = torch.Generator().manual_seed(0)
    x, grad_out = torch.rand(16384 + 3 * 1024, 16, generator=gen), torch.randn(16384 + 3 * 1024, 3, generator=gen)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_values_and_gradients(_ext.mlp_forward_kernel, x, weights, biases, spec, grad_out))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rows", [1, 9, 513, 4225])
@pytest.mark.parametrize("network", [{"n_neurons": 8, "n_hidden_layers": 0}, {"n_neurons": 32, "n_hidden_layers": 1},
                                     {"n_neurons": 64, "n_hidden_layers": 2}])
def test_mlp_backward_from_the_kept_hidden_layers_is_the_same_bits(rows, network):
    """A forward for training keeps its hidden layers' outputs, and the backward reads them instead of
    recomputing: the same values and gradients to the bit as the plain forward and a backward that
    recomputes (the kernel is its only user; the test above holds both to PyTorch)."""
    ops = torch.ops.monai_inr_reg
    spec, weights, biases = _mlp(16, 3, network)
    gen = torch.Generator().manual_seed(rows)
    x, grad_out = torch.rand(rows, 16, generator=gen), torch.randn(rows, 3, generator=gen)
    out, hidden = ops.mlp_fwd_saving(x, weights, biases)
    assert torch.equal(out, ops.mlp_fwd(x, weights, biases))
    for need_x in (True, False):
        kept, recomputed = ops.mlp_bwd(grad_out, x, weights, biases, need_x, hidden), ops.mlp_bwd(grad_out, x, weights, biases, need_x, None)
        assert all(torch.equal(a, b) for a, b in zip(kept, recomputed))
    with pytest.raises(RuntimeError, match="'hidden' must come from mlp_fwd_saving on these inputs"):
        ops.mlp_bwd(grad_out, x, weights, biases, True, torch.zeros(hidden.numel() + 8))


def test_mlp_kernel_keeps_hidden_layers_only_for_a_backward(monkeypatch):
    """Only a forward that autograd records keeps the hidden layers (scoring and output fields do not)."""
    spec, weights, biases = _mlp(16, 3, {"n_neurons": 32, "n_hidden_layers": 1})
    x = torch.rand(40, 16)
    trained = [w.clone().requires_grad_(True) for w in weights]
    calls = []
    original = _ext._MLPFunction.forward

    def spy(ctx, keep_hidden, *args):
        calls.append(keep_hidden)
        return original(ctx, keep_hidden, *args)

    monkeypatch.setattr(_ext._MLPFunction, "forward", staticmethod(spy))
    _ext.mlp_forward_kernel(x, trained, biases, spec).sum().backward()
    with torch.no_grad():
        _ext.mlp_forward_kernel(x, trained, biases, spec)
    _ext.mlp_forward_kernel(x, weights, biases, spec)
    assert calls == [True, False, False] and trained[0].grad is not None


def test_coordinate_net_uses_the_mlp_kernel_where_it_is_faster(monkeypatch):
    calls = []
    real = _ext.mlp_forward_kernel
    monkeypatch.setattr(_ext, "mlp_forward_kernel", lambda *a: calls.append(a) or real(*a))
    encoding = {"n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10, "base_resolution": 4,
                "finest_resolution": 32}
    points = torch.rand(100, 3)
    CoordinateNet(3, 3, encoding, {"n_neurons": 32, "n_hidden_layers": 1})(points)
    assert len(calls) == 1
    CoordinateNet(3, 3, encoding, {"n_neurons": 32, "n_hidden_layers": 1}, backend="torch")(points)
    CoordinateNet(3, 3, encoding, {"n_neurons": 64, "n_hidden_layers": 2})(points)
    assert len(calls) == 2
    CoordinateNet(3, 3, encoding, {"n_neurons": 128, "n_hidden_layers": 1})(points)  # wider: torch's products
    CoordinateNet(3, 3, encoding, {"n_neurons": 32, "n_hidden_layers": 1, "activation": "Tanh"})(points)
    assert len(calls) == 2


def _grid_sample(image, points, padding_mode):
    ndim = image.ndim - 1
    grid = grid_sample_coords(points, image.shape[1:]).reshape((1,) + (1,) * (ndim - 1) + (-1, ndim))
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out.reshape(image.shape[0], -1).T


@pytest.mark.parametrize("shape", [(1, 24, 30, 20), (3, 20, 30), (12, 9, 10, 11), (1, 1, 5, 6), (2, 7, 1)])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_sampling_kernel_equals_grid_sample(shape, padding_mode):
    """Values and gradients to the points, inside, near and beyond the edges, several channels, an
    axis of one voxel (away from whole voxel coordinates, where the gradient jumps)."""
    gen = torch.Generator().manual_seed(len(shape) * 10 + shape[0])
    image = torch.rand(shape, generator=gen)
    size = torch.tensor(shape[1:], dtype=torch.float32)
    points = torch.rand(5000, len(shape) - 1, generator=gen) * (size + 4.0) - 2.0
    points = points[(points - points.round()).abs().min(1).values > 1e-3]
    grad_out = torch.randn(points.shape[0], shape[0], generator=gen)
    results = []
    for fn in (lambda p: _ext.sample_linear_kernel(image, p, padding_mode), lambda p: _grid_sample(image, p, padding_mode)):
        p = points.clone().requires_grad_(True)
        out = fn(p)
        out.backward(grad_out)
        results.append((out.detach(), p.grad))
    (value, gradient), (value_ref, gradient_ref) = results
    torch.testing.assert_close(value, value_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradient, gradient_ref, rtol=1e-4, atol=1e-4)


def test_sampling_kernel_gives_zero_for_points_it_cannot_place():
    image = torch.rand(2, 4, 5, 6)
    points = torch.tensor([[float("nan"), 1.0, 1.0], [1.0, float("inf"), 2.0], [1e30, 1.0, 1.0], [-1.5, 2.0, 2.0]],
                          requires_grad=True)
    out = _ext.sample_linear_kernel(image, points)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(4, 2)) and torch.equal(points.grad, torch.zeros(4, 3))


def test_sample_image_uses_the_kernel_only_for_images_without_gradient():
    image = torch.rand(1, 6, 7, 8)
    points = torch.rand(50, 3) * 5
    torch.testing.assert_close(sample_image(image, points), _ext.sample_linear_kernel(image, points))
    field = image.clone().requires_grad_(True)  # a grid motion's nodes: grid_sample, which differentiates the image
    sample_image(field, points).sum().backward()
    assert field.grad is not None and field.grad.abs().sum() > 0
