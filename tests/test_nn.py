"""HashGridEncoding and CoordinateNet modules: module == function, init, parameter groups, errors."""

from __future__ import annotations

import pytest
import torch

from monai_inr_reg import _ext
from monai_inr_reg.core.encoding import hash_grid_encode, level_weights
from monai_inr_reg.core.mlp import mlp_forward
from monai_inr_reg.nn import CoordinateNet, HashGridEncoding

ENC = dict(otype="HashGrid", n_levels=6, n_features_per_level=2, log2_hashmap_size=8, base_resolution=3, finest_resolution=40)
NET = dict(otype="FullyFusedMLP", activation="ReLU", output_activation="None", n_neurons=16, n_hidden_layers=2)

BACKENDS = [
    "torch",
    pytest.param("kernel", marks=pytest.mark.skipif(not _ext.kernel_available(), reason="compiled kernel unavailable")),
]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [2, 3])
def test_encoding_module_equals_function(d, backend):
    enc = HashGridEncoding(d, ENC, backend=backend, generator=_gen())
    assert enc.n_output_dims == 12 and enc.n_levels == 6
    with torch.no_grad():
        enc.params.normal_(generator=_gen(1))
    x = torch.rand(200, d, generator=_gen(2))
    w = level_weights(3.5, 6)
    out = enc(x, w)
    assert out.shape == (200, 12) and out.dtype == torch.float32
    torch.testing.assert_close(out, hash_grid_encode(x, enc.params, enc.spec, w), rtol=1e-5, atol=1e-5)


def test_encoding_generator_is_reproducible():
    a = HashGridEncoding(3, ENC, generator=_gen(5)).params
    b = HashGridEncoding(3, ENC, generator=_gen(5)).params
    c = HashGridEncoding(3, ENC, generator=_gen(6)).params
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_coordinate_net_zero_init_is_identity_and_trains(backend):
    net = CoordinateNet(3, 3, ENC, NET, zero_init_output=True, backend=backend, generator=_gen())
    x = torch.rand(128, 3, generator=_gen(1), requires_grad=True)
    u = net(x)
    assert u.shape == (128, 3) and torch.all(u == 0)
    opt = torch.optim.Adam([{"params": net.encoding_parameters(), "lr": 1e-2},
                            {"params": net.network_parameters(), "lr": 1e-2}])
    target = torch.sin(3 * x.detach())
    for _ in range(60):
        opt.zero_grad()
        loss = (net(x.detach()) - target).square().mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * target.square().mean().item()


def test_coordinate_net_forward_equals_functions_and_point_gradient():
    net = CoordinateNet(2, 1, ENC, NET, backend="torch", generator=_gen())
    with torch.no_grad():
        net.encoding.params.normal_(generator=_gen(3))
    x = torch.rand(64, 2, generator=_gen(4), requires_grad=True)
    out = net(x)
    ref = mlp_forward(hash_grid_encode(x, net.encoding.params, net.encoding.spec), list(net.weights), list(net.biases), net.mlp_spec)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the image net is queried at x + u(x)


def test_coordinate_net_alpha_zero_gives_constant_output():
    net = CoordinateNet(2, 2, ENC, NET, generator=_gen())
    out = net(torch.rand(50, 2, generator=_gen(1)), level_weights(0.0, net.n_levels))
    torch.testing.assert_close(out, out[:1].expand_as(out))


def test_parameter_groups_partition_parameters():
    net = CoordinateNet(3, 2, ENC, NET)
    enc_ids = {id(p) for p in net.encoding_parameters()}
    mlp_ids = {id(p) for p in net.network_parameters()}
    assert enc_ids.isdisjoint(mlp_ids)
    assert enc_ids | mlp_ids == {id(p) for p in net.parameters()}
    assert len(mlp_ids) == 2 * (NET["n_hidden_layers"] + 1)
    assert [tuple(w.shape) for w in net.weights] == [(16, 12), (16, 16), (2, 16)]


def test_default_backend_picks_kernel_when_available(monkeypatch):
    enc = HashGridEncoding(2, ENC)
    calls = []
    monkeypatch.setattr(_ext, "kernel_available", lambda: True)
    monkeypatch.setattr(_ext, "hash_grid_encode_kernel", lambda *a: calls.append(a) or torch.zeros(1))
    enc(torch.rand(4, 2))
    assert len(calls) == 1
    HashGridEncoding(2, ENC, backend="torch")(torch.rand(4, 2))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(network_config=dict(n_neurons=16, depth=3)), ValueError, "n_hidden_layers"),
        (dict(network_config=dict(activation="GELU")), ValueError, "activation"),
        (dict(network_config=dict(otype="ResNet")), ValueError, "otype"),
        (dict(network_config=dict(n_neurons=0)), ValueError, "n_neurons"),
        (dict(encoding_config=dict(ENC, n_levels_typo=2)), ValueError, "n_features_per_level"),
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(backend="tcnn"), ImportError, "tinycudann"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    kwargs = {"encoding_config": ENC, "network_config": NET, **kwargs}
    with pytest.raises(exc, match=match):
        CoordinateNet(2, 2, **kwargs)
