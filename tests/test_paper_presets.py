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
    assert [name for name, _ in result.stage_ends] == ["near_rigid"] and result.motion == "near_rigid"


@pytest.mark.parametrize("name", ["paper-deformable", "multimodal-paper-rigid", "multimodal-paper-deformable"])
def test_paper_presets_run_as_published(name):
    config = load_preset(name)
    # the paper's method: one image-net stage of a hash motion net, coarse-to-fine on both nets, no exact
    # parametric stage, no classical stage, no regulariser, no centre-of-mass start
    [stage] = config["stages"]
    assert stage["objective"] == "image_net" and config["motions"][stage["motion"]]["model"] == "hash"
    assert stage["image_coarse_to_fine_share"] > 0 and stage["coarse_to_fine_share"] > 0
    assert stage["smoothness_weight"] == stage["folding_weight"] == 0.0
    assert config["initial_alignment"] == "none" and config["multimodal"] == name.startswith("multimodal")
    encoding = config["motions"][stage["motion"]]["encoding"]
    near_rigid = encoding["finest_resolution"] == encoding["base_resolution"]
    assert near_rigid == name.endswith("rigid")
    result = register(torch.rand(1, 24, 20), torch.rand(1, 24, 20), name, iterations_scale=0.02)
    assert torch.isfinite(result.ddf).all() and len(result.loss_history) > 0
