"""The method as published, as presets: paper-rigid, paper-deformable and their multi-modal forms."""

from __future__ import annotations

import pytest
import torch

from monai_inr_reg import register
from monai_inr_reg.config import load_preset
from synthetic_images import gaussian_blobs

SHIFT = (3.0, -2.0)


def test_paper_rigid_recovers_a_2d_translation():
    fixed = torch.from_numpy(gaussian_blobs((64, 56)))[None]
    moving = torch.from_numpy(gaussian_blobs((64, 56), SHIFT))[None]
    result = register(fixed, moving, "paper-rigid", iterations_scale=0.3)
    inside = fixed[0] > 0.3  # where the pattern is (a near-rigid net bends where there is nothing to hold it)
    for axis, shift in enumerate(SHIFT):
        assert abs(float(result.ddf[axis][inside].median()) - shift) < 0.5
    assert [name for name, _ in result.stage_ends] == ["near_rigid", "refine"] and result.motion == "near_rigid"


@pytest.mark.parametrize("name", ["paper-deformable", "multimodal-paper-rigid", "multimodal-paper-deformable"])
def test_paper_presets_run_as_published(name):
    config = load_preset(name)
    # the paper's method: no exact parametric stage, no classical refinement, no centre-of-mass start
    assert config["prealign"] == [] and config["refine"]["iterations"] == 0
    assert config["initial_alignment"] == "none" and config["coarse_to_fine"]["enabled"]
    assert config["multimodal"] == name.startswith("multimodal")
    if "deformable" in name:
        assert config["deformable"]["iterations"] > 0 and config["deformable"]["smoothness_weight"] == 0.0
    result = register(torch.rand(1, 24, 20), torch.rand(1, 24, 20), name, iterations_scale=0.02)
    assert torch.isfinite(result.ddf).all() and len(result.loss_history) > 0
