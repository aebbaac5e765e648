"""Hash-grid encoding: fast pure-PyTorch path vs the plain gather reference, conventions, errors."""

from __future__ import annotations

import math

import pytest
import torch

from monai_inr_reg.core.encoding import (
    HASH_PRIMES,
    hash_grid_encode,
    hash_grid_encode_reference,
    hash_grid_spec,
    init_hash_grid_params,
    level_tables,
    level_weights,
)

# (name, D, config): each mixes what the fast path treats differently
CONFIGS = [
    ("2d_dense_hashed", 2, dict(n_levels=6, n_features_per_level=2, log2_hashmap_size=8, base_resolution=3, finest_resolution=40)),
    ("3d_dense_hashed", 3, dict(n_levels=5, n_features_per_level=2, log2_hashmap_size=9, base_resolution=2, finest_resolution=20)),
    ("3d_scale1", 3, dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.0)),
    ("2d_f3_scale1_hashed", 2, dict(n_levels=3, n_features_per_level=3, log2_hashmap_size=5, base_resolution=9, per_level_scale=1)),
]


def _setup(d, config, n_points=300, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    spec = hash_grid_spec(d, config)
    params = torch.randn(spec.n_params, generator=g, dtype=dtype)
    points = torch.rand(n_points, d, generator=g, dtype=dtype)
    return spec, params, points


def test_spec_resolutions_and_layout():
    spec = hash_grid_spec(2, dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=14, base_resolution=4, finest_resolution=256))
    assert spec.resolutions[0] == 4 and spec.resolutions[-1] == 256
    assert all(a <= b for a, b in zip(spec.resolutions, spec.resolutions[1:]))
    # dense iff (R + 1)^2 <= 2^14, i.e. R <= 127
    assert spec.dense == tuple(r <= 127 for r in spec.resolutions)
    assert math.isclose(spec.per_level_scale, 64 ** (1 / 15))
    expected = sum((r + 1) ** 2 if r <= 127 else 1 << 14 for r in spec.resolutions) * 2
    assert spec.n_params == expected
    rigid = hash_grid_spec(3, dict(n_levels=8, base_resolution=4, finest_resolution=4, log2_hashmap_size=15))
    assert rigid.resolutions == (4,) * 8 and rigid.per_level_scale == 1.0 and all(rigid.dense)


@pytest.mark.parametrize("name,d,config", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_fast_equals_reference_values_and_gradients(name, d, config):
    spec, params, points = _setup(d, config)
    if "hashed" in name:  # the config really exercises the hashed path
        assert not all(spec.dense)
    p1, x1 = params.clone().requires_grad_(), points.clone().requires_grad_()
    p2, x2 = params.clone().requires_grad_(), points.clone().requires_grad_()
    fast = hash_grid_encode(x1, p1, spec)
    ref = hash_grid_encode_reference(x2, p2, spec)
    assert fast.shape == (300, spec.n_levels * spec.n_features)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(fast.shape, generator=torch.Generator().manual_seed(1))
    (fast * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-3)
    assert x1.grad.abs().max() > 1.0  # random tables: the coordinate gradient is far from zero


@pytest.mark.parametrize("d", [2, 3])
def test_gradcheck_float64(d):
    # tiny: level 0 dense, last level hashed (table of 2^5 entries)
    config = dict(n_levels=3, n_features_per_level=2, log2_hashmap_size=5, base_resolution=2, finest_resolution=5)
    spec = hash_grid_spec(d, config)
    assert spec.dense[0] and not spec.dense[-1]
    g = torch.Generator().manual_seed(3)
    params = torch.randn(spec.n_params, generator=g, dtype=torch.float64, requires_grad=True)
    points = (0.05 + 0.9 * torch.rand(4, d, generator=g, dtype=torch.float64)).requires_grad_()
    weights = torch.tensor([1.0, 0.7, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, p, w: hash_grid_encode(x, p, spec, w), (points, params, weights))
    assert torch.autograd.gradcheck(lambda x, p: hash_grid_encode_reference(x, p, spec), (points, params))


@pytest.mark.parametrize("d", [2, 3])
def test_vertex_convention_dense_and_hashed(d):
    """At vertex x = i / R a level returns the table row of vertex i: dense index or Instant-NGP hash."""
    spec = hash_grid_spec(d, dict(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2, finest_resolution=9))
    assert spec.dense == (True, False)
    params = torch.randn(spec.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tables = level_tables(params, spec)
    vertex = [1, 2, 0][:d]
    for level in range(2):
        res = spec.resolutions[level]
        x = torch.tensor([[v / res for v in vertex]], dtype=torch.float64)
        out = hash_grid_encode(x, params, spec)[0, 2 * level : 2 * level + 2]
        if spec.dense[level]:
            row = sum(v * (res + 1) ** k for k, v in enumerate(vertex))
        else:
            h = 0
            for k, v in enumerate(vertex):
                h ^= (v * HASH_PRIMES[k]) % 2**32  # uint32 maths, as in tiny-cuda-nn
            row = h % 64
        torch.testing.assert_close(out, tables[level][row], rtol=0, atol=1e-12)


def test_dense_level_reproduces_linear_function():
    """A dense table holding f(vertex) = a . x + b is interpolated exactly (d-linear reproduces linear)."""
    spec = hash_grid_spec(3, dict(n_levels=1, n_features_per_level=1, log2_hashmap_size=10, base_resolution=5, per_level_scale=1))
    res = spec.resolutions[0]
    idx = torch.arange(spec.sizes[0])
    ijk = torch.stack([idx % (res + 1), (idx // (res + 1)) % (res + 1), idx // (res + 1) ** 2], 1).double() / res
    a, b = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64), 0.7
    params = ijk @ a + b
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(hash_grid_encode(x, params, spec)[:, 0], x @ a + b, rtol=0, atol=1e-12)


def test_level_weights_schedule():
    w0 = level_weights(0.0, 16)
    assert w0.shape == (16,) and w0.dtype == torch.float32 and torch.all(w0 == 0)
    assert torch.all(level_weights(16.0, 16) == 1) and torch.all(level_weights(100.0, 16) == 1)
    w = level_weights(2.5, 6, dtype=torch.float64)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert math.isclose(float(level_weights(0.25, 2)[0]), (1 - math.cos(math.pi / 4)) / 2, rel_tol=1e-6)


@pytest.mark.parametrize("name,d,config", CONFIGS[:2], ids=[c[0] for c in CONFIGS[:2]])
def test_level_weights_applied_and_zero_levels_skipped(name, d, config):
    spec, params, points = _setup(d, config)
    out0 = hash_grid_encode(points, params, spec, level_weights(0.0, spec.n_levels))
    assert torch.all(out0 == 0)
    # partial weights: some dense and some hashed levels off (the fast path skips them)
    w = torch.zeros(spec.n_levels)
    w[0], w[1], w[-1] = 1.0, 0.5, 0.25
    p1, p2 = params.clone().requires_grad_(), params.clone().requires_grad_()
    x1, x2 = points.clone().requires_grad_(), points.clone().requires_grad_()
    fast = hash_grid_encode(x1, p1, spec, w)
    ref = hash_grid_encode_reference(x2, p2, spec, w)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    full = hash_grid_encode(points, params, spec)
    torch.testing.assert_close(fast, full * w.repeat_interleave(spec.n_features), rtol=1e-6, atol=1e-6)
    fast.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name,d,config", CONFIGS[:2], ids=[c[0] for c in CONFIGS[:2]])
def test_points_outside_box_are_clamped(name, d, config):
    spec, params, _ = _setup(d, config)
    outside = torch.tensor([[-0.5] * d, [1.5] * d, [0.3, -2.0, 7.0][:d], [float(1e6)] * d])
    x = outside.clone().requires_grad_()
    out = hash_grid_encode(x, params, spec)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, hash_grid_encode(outside.clamp(0, 1), params, spec))
    torch.testing.assert_close(out, hash_grid_encode_reference(outside, params, spec), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert torch.all(x.grad[:, 0][[0, 1, 3]] == 0)  # clamped coordinates get no gradient


def test_init_params_range():
    spec = hash_grid_spec(2, dict(n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0))
    p = init_hash_grid_params(spec, generator=torch.Generator().manual_seed(0))
    assert p.shape == (spec.n_params,) and p.dtype == torch.float32
    assert p.abs().max() <= 1e-4 and p.std() > 0.5e-4


@pytest.mark.parametrize(
    "d,config,exc,match",
    [
        (2, dict(n_levels=4, bogus=1), ValueError, "log2_hashmap_size"),  # lists the valid keys
        (2, dict(bogus=1), ValueError, "bogus"),
        (2, dict(per_level_scale=1.5, finest_resolution=64), ValueError, "finest_resolution"),
        (2, dict(per_level_scale=0.5), ValueError, "per_level_scale"),
        (2, dict(base_resolution=16, finest_resolution=8), ValueError, "finest_resolution"),
        (2, dict(otype="DenseGrid"), ValueError, "otype"),
        (2, dict(interpolation="Smoothstep"), ValueError, "interpolation"),
        (2, dict(n_levels=0), ValueError, "n_levels"),
        (2, dict(log2_hashmap_size=2.5), TypeError, "log2_hashmap_size"),
        (4, dict(), ValueError, "n_input_dims"),
    ],
)
def test_bad_config_errors(d, config, exc, match):
    with pytest.raises(exc, match=match):
        hash_grid_spec(d, config)


def test_bad_input_shapes():
    spec = hash_grid_spec(3, dict(n_levels=2, log2_hashmap_size=8, base_resolution=2, per_level_scale=2.0))
    params = torch.zeros(spec.n_params)
    with pytest.raises(ValueError, match="points_unit"):
        hash_grid_encode(torch.zeros(5, 2), params, spec)
    with pytest.raises(ValueError, match="params"):
        hash_grid_encode(torch.zeros(5, 3), params[:-1], spec)
    with pytest.raises(ValueError, match="level_weights"):
        hash_grid_encode(torch.zeros(5, 3), params, spec, torch.ones(3))
