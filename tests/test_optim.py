"""FusedAdam: the updates of torch.optim.Adam(fused=True), bit for bit, without importing torch's compiler stack."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from monai_inr_reg.optim import FusedAdam, adam


def _problem():
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(4096, generator=gen) * 1e-2)           # float32, like hash tables
    weight = torch.nn.Parameter(torch.randn(8, 8, generator=gen))
    rotation = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))              # float64, like the rigid motion
    unused = torch.nn.Parameter(torch.ones(2))                                       # never gets a gradient
    targets = torch.randn(4096, generator=gen), torch.randn(8, 8, generator=gen)
    return [table, weight, rotation, unused], targets


def _run(make, steps: int = 25):
    params, (t_table, t_weight) = _problem()
    table, weight, rotation, unused = params
    groups = [{"params": [table, unused], "lr": 1e-2}, {"params": [weight, rotation], "lr": 1e-3, "base_lr": 1e-3}]
    opt = make(groups)
    for step in range(steps):
        for g in opt.param_groups:  # the fits change learning rates every step
            g["lr"] = g["lr"] * 0.97
        loss = (table - t_table).pow(2).mean() + (weight - t_weight).abs().mean() + (rotation.sin() - 0.3).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in params]


def test_fused_adam_equals_torch_fused_adam_bit_for_bit():
    ours = _run(FusedAdam)
    theirs = _run(lambda groups: torch.optim.Adam(groups, fused=True))
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert not torch.equal(ours[0], _problem()[0][0].detach())  # it moved
    assert torch.equal(ours[3], torch.ones(2))                   # no gradient, no update


def test_adam_picks_the_fused_kernel_on_cpu():
    assert isinstance(adam([{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 1e-3}]), FusedAdam)


@pytest.mark.skipif(not hasattr(torch, "_fused_adam_"), reason="this torch has no fused Adam kernel")
def test_a_registration_does_not_import_the_compiler_stack():
    """torch.optim's first optimiser imports torch._dynamo and sympy (0.75 s); a registration must not."""
    code = ("import sys, torch; from monai_inr_reg import register; "
            "register(torch.rand(1, 24, 24), torch.rand(1, 24, 24), 'rigid', iterations_scale=0.02, progress=False); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
