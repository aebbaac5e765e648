"""The LC2 similarity of benchmarks/similarity_vs_overlap.py (the ultrasound as a local linear combination
of the other image and its gradient magnitude): 1 where that holds exactly, near 0 for noise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from conftest import smooth_image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "similarity_vs_overlap.py"


def _lc2():
    spec = importlib.util.spec_from_file_location("similarity_vs_overlap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.linear_combination_of_linear_correlations


def test_lc2_is_one_for_linear_combinations_and_small_for_unrelated_images():
    lc2 = _lc2()
    mr = torch.from_numpy(smooth_image((24, 28, 20), seed=1))[None]
    gradient = torch.stack(torch.gradient(mr[0].double())).norm(dim=0, keepdim=True).float()
    inside = torch.zeros(mr.shape[1:], dtype=torch.bool)
    inside[4:-4, 4:-4, 4:-4] = True
    for ultrasound in (mr, 1.0 - 2.0 * mr, 0.5 * mr + 3.0 * gradient):  # inverted, and with the edges bright
        assert lc2(ultrasound, mr, inside, 2) > 0.999
    # white noise: two fitted weights explain about 2 of a window's 125 voxels' worth of its variance
    assert lc2(torch.rand(mr.shape, generator=torch.Generator().manual_seed(0)), mr, inside, 2) < 0.1
    assert lc2(mr, mr, inside, 2) > lc2(mr, torch.roll(mr, 3, dims=1), inside, 2) + 0.1  # falls off under a shift
