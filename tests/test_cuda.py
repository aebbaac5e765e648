"""The GPU path: registration, warps and the MONAI adapters on CUDA tensors (marked ``cuda``; skipped
without a CUDA device). Run on a GPU machine with ``pytest -m cuda`` (``benchmarks/gpu_check.sh``).

CPU and GPU runs start from the same weights (the nets are initialised on the CPU from the seed,
then moved), but GPU atomics and kernels sum in other orders, so their results agree to a tolerance,
not bit for bit; what is asserted is the recovered motion and the agreement of the two.
"""

from __future__ import annotations

import os

import pytest
import torch

from monai_inr_reg import register
from monai_inr_reg.core.encoding import hash_grid_encode, hash_grid_spec, init_hash_grid_params
from synthetic_images import phantom, shifted

# the device under test; MONAI_INR_REG_TEST_DEVICE=cpu dry-runs these tests on the CPU (their thresholds, not the GPU)
DEVICE = os.environ.get("MONAI_INR_REG_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")]


def inner_mean(ddf: torch.Tensor, margin: int = 8) -> torch.Tensor:
    inner = ddf[(slice(None),) + (slice(margin, -margin),) * (ddf.ndim - 1)]
    return inner.reshape(ddf.shape[0], -1).mean(1)


def test_encoding_on_cuda_matches_the_cpu_values_and_gradients():
    spec = hash_grid_spec(3, {"n_levels": 8, "finest_resolution": 64, "log2_hashmap_size": 12})
    params = init_hash_grid_params(spec, generator=torch.Generator().manual_seed(0)) * 1e3
    points = torch.rand(5000, 3, generator=torch.Generator().manual_seed(1))
    results = []
    for device in ("cpu", DEVICE):
        p, x = params.to(device).requires_grad_(True), points.to(device).requires_grad_(True)
        features = hash_grid_encode(x, p, spec)
        features.pow(2).sum().backward()
        results.append([t.detach().cpu() for t in (features, p.grad, x.grad)])
    for cpu, gpu in zip(*results):
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("preset, shape, shift", [("rigid", (64, 64), (3.0, -2.0)),
                                                  ("deformable", (64, 64), (3.0, -2.0)),
                                                  ("multimodal-deformable", (40, 36, 32), (2.0, -1.0, 1.5))])
def test_registration_on_cuda_recovers_the_shift_and_agrees_with_the_cpu(preset, shape, shift):
    fixed = phantom(shape, seed=3)
    moving = shifted(fixed, shift)
    if preset.startswith("multimodal"):
        moving = 1.0 - moving
    gpu = register(fixed.to(DEVICE), moving.to(DEVICE), preset, iterations_scale=0.5, progress=False)
    cpu = register(fixed, moving, preset, iterations_scale=0.5, progress=False, device="cpu")
    assert gpu.ddf.device.type == "cpu"  # results live on the CPU whatever the device of the fit
    expected = torch.tensor(shift)
    assert (inner_mean(gpu.ddf) - expected).abs().max() < 0.5
    assert (inner_mean(gpu.ddf) - inner_mean(cpu.ddf)).abs().max() < 0.25


def test_bounded_preset_on_cuda_recovers_the_shift_and_agrees_with_the_cpu():
    """The discrete search and its grid motion on the device: a (4, -2, 2)-voxel shift of an inverted
    phantom, on its 2-voxel steps."""
    fixed = phantom((40, 44, 36), seed=3, blobs=30)
    moving = 1.0 - shifted(fixed, (4.0, -2.0, 2.0))
    gpu = register(fixed.to(DEVICE), moving.to(DEVICE), "bounded", progress=False)
    cpu = register(fixed, moving, "bounded", progress=False, device="cpu")
    assert gpu.ddf.device.type == "cpu"
    assert (inner_mean(gpu.ddf) - torch.tensor([4.0, -2.0, 2.0])).abs().max() < 0.5
    assert (inner_mean(gpu.ddf) - inner_mean(cpu.ddf)).abs().max() < 0.25


def test_warp_of_a_cuda_image_stays_on_cuda_and_matches_the_cpu():
    fixed = phantom((48, 40), seed=3)
    moving = shifted(fixed, (2.0, 1.0))
    result = register(fixed, moving, "rigid", iterations_scale=0.3, progress=False, device="cpu")
    labels = (moving > 0.5).float()
    for image, mode in ((moving, "bilinear"), (labels, "nearest")):
        on_gpu = result.warp(image.to(DEVICE), mode=mode)
        assert on_gpu.device.type == DEVICE
        torch.testing.assert_close(on_gpu.as_tensor().cpu(), result.warp(image, mode=mode).as_tensor(), rtol=0, atol=1e-4)


def test_dictionary_transform_and_apply_ddf_on_cuda_metatensors():
    from monai.data import MetaTensor
    from monai.transforms import Compose

    from monai_inr_reg.transforms import ApplyDdf, InrRegistrationd

    affine = torch.diag(torch.tensor([1.5, 1.5, 1.0, 1.0], dtype=torch.float64))
    fixed = phantom((48, 40), seed=3)
    moving = shifted(fixed, (2.0, 1.0))
    data = {"fixed": MetaTensor(fixed.to(DEVICE), affine=affine), "moving": MetaTensor(moving.to(DEVICE), affine=affine)}
    out = Compose([InrRegistrationd(keys="moving", fixed_key="fixed", moving_key="moving", preset="rigid",
                                    iterations_scale=0.3, progress=False)])(data)
    warped, ddf = out["moving"], out["ddf"]
    assert warped.device.type == DEVICE
    error = (warped.as_tensor().cpu() - fixed)[:, 6:-6, 6:-6].abs().mean()
    assert error < 0.03
    again = ApplyDdf()(MetaTensor(moving.to(DEVICE), affine=affine), ddf)
    torch.testing.assert_close(again.as_tensor().cpu(), warped.as_tensor().cpu(), rtol=0, atol=1e-4)
