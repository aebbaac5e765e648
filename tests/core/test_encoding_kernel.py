"""Compiled CPU hash-grid kernel vs the pure-PyTorch path, and the fallback switches.

The first test run in a fresh environment compiles the kernel (about 20-35 s on 1 core);
later runs load the cached library. Kernel tests skip when it cannot build; the fallback tests
always run.
"""

from __future__ import annotations

import logging

import pytest
import torch

from monai_inr_reg import _ext
from monai_inr_reg.core.encoding import hash_grid_encode, hash_grid_spec, level_weights
from monai_inr_reg.nn import HashGridEncoding

_AVAILABLE = _ext.kernel_available()
_WHY = f"{_ext.ENV_SWITCH} is set" if _ext.kernel_disabled() else _ext.build_info()["error"]
needs_kernel = pytest.mark.skipif(not _AVAILABLE, reason=f"compiled kernel unavailable: {_WHY}")

CONFIGS = [
    ("2d_dense_hashed", 2, dict(n_levels=6, n_features_per_level=2, log2_hashmap_size=8, base_resolution=3, finest_resolution=40)),
    ("3d_dense_hashed", 3, dict(n_levels=5, n_features_per_level=2, log2_hashmap_size=9, base_resolution=2, finest_resolution=20)),
    ("3d_scale1", 3, dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.0)),
    ("2d_f3_generic", 2, dict(n_levels=4, n_features_per_level=3, log2_hashmap_size=7, base_resolution=4, finest_resolution=30)),
    ("3d_f4", 3, dict(n_levels=3, n_features_per_level=4, log2_hashmap_size=8, base_resolution=2, finest_resolution=12)),
]


def _rel_close(actual, expected, rtol=1e-5):
    """Max abs difference within rtol of the reference's largest magnitude."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol} * {scale:.3g}"


def _run(fn, points, params, spec, weights):
    x = points.clone().requires_grad_()
    p = params.clone().requires_grad_()
    out = fn(x, p, spec, weights)
    out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out))
    return out.detach(), p.grad, x.grad


@needs_kernel
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name,d,config", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_kernel_equals_pure_values_and_gradients(name, d, config, weighted):
    spec = hash_grid_spec(d, config)
    g = torch.Generator().manual_seed(0)
    params = torch.randn(spec.n_params, generator=g)
    points = torch.rand(2000, d, generator=g) * 1.2 - 0.1  # some points outside the box
    weights = None
    if weighted:  # some levels off (skipped by both paths), one partially on
        weights = torch.ones(spec.n_levels)
        weights[1], weights[-1] = 0.0, 0.3
    ref = _run(hash_grid_encode, points, params, spec, weights)
    ker = _run(_ext.hash_grid_encode_kernel, points, params, spec, weights)
    for a, b in zip(ker, ref):
        _rel_close(a, b)
    assert ref[2].abs().max() > 1.0  # coordinate gradients are substantial
    outside = (points < 0) | (points > 1)
    assert torch.all(ker[2][outside] == 0)


@needs_kernel
def test_kernel_two_threads_equals_one_thread():
    """The backward splits levels over threads with per-thread point-gradient buffers; CI runs 1 thread."""
    spec = hash_grid_spec(3, CONFIGS[1][2])
    g = torch.Generator().manual_seed(2)
    params, points = torch.randn(spec.n_params, generator=g), torch.rand(3000, 3, generator=g)
    weights = torch.ones(spec.n_levels)
    weights[2] = 0.0
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(_ext.hash_grid_encode_kernel, points, params, spec, weights)
        torch.set_num_threads(2)
        two = _run(_ext.hash_grid_encode_kernel, points, params, spec, weights)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(two, one):
        _rel_close(a, b, rtol=1e-6)


@needs_kernel
def test_kernel_gradcheck_float64_and_weight_gradient():
    for d in (2, 3):
        spec = hash_grid_spec(d, dict(n_levels=3, n_features_per_level=2, log2_hashmap_size=5, base_resolution=2, finest_resolution=5))
        g = torch.Generator().manual_seed(1)
        params = torch.randn(spec.n_params, generator=g, dtype=torch.float64, requires_grad=True)
        points = (0.05 + 0.9 * torch.rand(4, d, generator=g, dtype=torch.float64)).requires_grad_()
        weights = torch.tensor([1.0, 0.6, 0.2], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, p, w: _ext.hash_grid_encode_kernel(x, p, spec, w), (points, params, weights))
        out_k = _ext.hash_grid_encode_kernel(points, params, spec, weights)
        (gw_k,) = torch.autograd.grad(out_k.sum(), weights)
        (gw_t,) = torch.autograd.grad(hash_grid_encode(points, params, spec, weights).sum(), weights)
        torch.testing.assert_close(gw_k, gw_t)


@needs_kernel
def test_module_picks_kernel_automatically_and_torch_on_request():
    cfg = dict(n_levels=4, log2_hashmap_size=8, base_resolution=4, finest_resolution=32)
    x = torch.rand(100, 3, requires_grad=True)
    auto = HashGridEncoding(3, cfg)
    assert "_HashGridFunction" in type(auto(x).grad_fn).__name__
    forced = HashGridEncoding(3, cfg, backend="torch")
    assert "_HashGridFunction" not in type(forced(x).grad_fn).__name__
    w = level_weights(2.5, 4)
    with torch.no_grad():
        forced.params.copy_(auto.params)
    _rel_close(auto(x, w), forced(x, w))


def test_env_switch_forces_fallback(monkeypatch):
    monkeypatch.setenv(_ext.ENV_SWITCH, "1")
    assert _ext.kernel_disabled() and not _ext.kernel_available()

    def boom(*args):
        raise AssertionError("kernel called although disabled")

    monkeypatch.setattr(_ext, "hash_grid_encode_kernel", boom)
    enc = HashGridEncoding(2, dict(n_levels=3, log2_hashmap_size=8, base_resolution=4, finest_resolution=32))
    x = torch.rand(50, 2)
    torch.testing.assert_close(enc(x), hash_grid_encode(x, enc.params, enc.spec))
    monkeypatch.setenv(_ext.ENV_SWITCH, "0")
    assert not _ext.kernel_disabled()


def test_failed_build_falls_back_with_a_log_line(monkeypatch, caplog, tmp_path):
    # pretend nothing was tried yet and point the build at a missing source
    for key, value in dict(tried=False, ok=False, error=None, seconds=None).items():
        monkeypatch.setitem(_ext._STATE, key, value)
    monkeypatch.setattr(_ext, "_SOURCE", tmp_path / "missing.cpp")
    monkeypatch.delenv(_ext.ENV_SWITCH, raising=False)
    with caplog.at_level(logging.WARNING, logger="monai_inr_reg._ext"):
        assert not _ext.kernel_available()
    assert "pure-PyTorch" in caplog.text and "missing.cpp" in caplog.text
    assert _ext.build_info()["tried"] and "missing.cpp" in _ext.build_info()["error"]
    enc = HashGridEncoding(3, dict(n_levels=2, log2_hashmap_size=8, base_resolution=4, finest_resolution=16))
    x = torch.rand(20, 3)
    torch.testing.assert_close(enc(x), hash_grid_encode(x, enc.params, enc.spec))
    with pytest.raises(RuntimeError, match="unavailable"):
        _ext.hash_grid_encode_kernel(x, enc.params, enc.spec)
