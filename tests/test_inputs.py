"""monai_inr_reg.inputs: the one conversion of user inputs (colour, channels, 2D stored as 3D, masks, starts)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_inr_reg.inputs import LUMINANCE_WEIGHTS, as_image_and_grid, as_initial_matrix, as_mask


def test_rgb_becomes_pil_luminance(caplog):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)  # PIL (rows, cols, RGB)
    expected = np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"), dtype=np.float32)
    with caplog.at_level(logging.INFO, logger="monai_inr_reg.inputs"):
        tensor, grid = as_image_and_grid(torch.from_numpy(rgb).permute(2, 0, 1), "fixed")
    assert "'fixed' has 3 channels (RGB); registering its luminance" in caplog.text
    assert tuple(tensor.shape) == (1, 9, 7) and grid.shape == (9, 7)
    assert np.abs(tensor[0].numpy() - expected).max() <= 0.5  # PIL rounds to integers
    rgba = torch.cat([torch.from_numpy(rgb).permute(2, 0, 1).float(), torch.full((1, 9, 7), 7.0)])
    assert torch.allclose(as_image_and_grid(rgba, "fixed")[0], tensor)
    assert LUMINANCE_WEIGHTS == (0.299, 0.587, 0.114)


def test_several_channels_in_3d_are_refused_with_advice():
    with pytest.raises(ValueError, match=r"'moving' has 3 channels \(shape \(3, 6, 5, 4\)\); registration takes one: "
                                         r"pick it first, e.g. image\[k:k \+ 1\]"):
        as_image_and_grid(torch.rand(3, 6, 5, 4), "moving")


def test_2d_stored_as_3d_and_monai_affines():
    affine = torch.tensor([[0.0, 1.5, 0.0, 3.0], [-0.8, 0.0, 0.0, 2.0], [0.0, 0.0, 2.5, -1.0], [0, 0, 0, 1.0]],
                          dtype=torch.float64)
    image = MetaTensor(torch.rand(1, 6, 5, 1), affine=affine)
    tensor, grid = as_image_and_grid(image, "fixed")
    assert tuple(tensor.shape) == (1, 6, 5) and grid.ndim == 2
    flat, flat_grid = as_image_and_grid(MetaTensor(image[..., 0], affine=affine), "fixed")
    assert torch.equal(tensor, flat) and torch.equal(grid.mm_from_voxel, flat_grid.mm_from_voxel)
    # LPS from RAS in 2D flips both axes: voxel (1, 0) is at RAS (3, 1.2) -> LPS (-3, -1.2)
    assert torch.allclose(grid.voxel_to_mm(torch.tensor([[1.0, 0.0]], dtype=torch.float64)),
                          torch.tensor([[-3.0, -1.2]], dtype=torch.float64))


def test_masks_and_starts_are_checked():
    _, grid = as_image_and_grid(torch.rand(1, 6, 5), "fixed")
    assert as_mask(None, "fixed_mask", grid, "fixed") is None
    mask = as_mask(np.array([[0, 1, 2, 0, 0]] * 6), "fixed_mask", grid, "fixed")
    assert mask.dtype == torch.bool and int(mask.sum()) == 12
    assert as_initial_matrix(None, 2) is None
    assert torch.equal(as_initial_matrix(np.eye(3), 2), torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="'initial_transform' must be finite and invertible"):
        as_initial_matrix(np.zeros((3, 3)), 2)
