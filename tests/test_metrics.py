"""Dice, HD95 (mm) and folding percent (metrics.py), against exact values and MONAI's implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_inr_reg.metrics import dice, folding_percent, hd95_mm, label_masks, label_overlap


def box(shape, low, high) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = True
    return mask


def test_dice_exact_values():
    a = box((20, 20), (0, 0), (10, 10))
    b = box((20, 20), (5, 0), (15, 10))  # half of each overlaps
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, box((20, 20), (12, 12), (20, 20))) == 0.0
    assert math.isnan(dice(np.zeros((4, 4), bool), np.zeros((4, 4), bool)))


def random_blob(shape, seed):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.random(shape), 2.0) > 0.5


@pytest.mark.parametrize("shape, spacing", [((40, 36), (0.7, 1.9)), ((24, 20, 18), (1.0, 2.0, 0.5))])
def test_hd95_equals_monai(shape, spacing):
    from monai.metrics import compute_hausdorff_distance

    a, b = random_blob(shape, 1), random_blob(shape, 2)
    ours = hd95_mm(a, b, spacing)
    reference = compute_hausdorff_distance(torch.as_tensor(a)[None, None], torch.as_tensor(b)[None, None],
                                           percentile=95, spacing=list(spacing))
    assert ours == pytest.approx(float(reference), abs=1e-6)
    assert ours > 0


def test_hd95_uses_the_spacing_of_each_axis():
    a = box((12, 12), (2, 2), (3, 3))
    b = box((12, 12), (2, 7), (3, 8))  # 5 voxels away along axis 1
    assert hd95_mm(a, b, (0.5, 1.5)) == pytest.approx(7.5)
    assert hd95_mm(a, box((12, 12), (6, 5), (7, 6)), (0.5, 1.5)) == pytest.approx(math.hypot(4 * 0.5, 3 * 1.5))
    assert hd95_mm(a, a, (0.5, 1.5)) == 0.0


def test_hd95_of_concentric_discs_is_the_radius_difference():
    index = np.stack(np.meshgrid(np.arange(61), np.arange(61), indexing="ij"), -1) - 30
    radius = np.sqrt((index**2).sum(-1))
    assert hd95_mm(radius <= 20, radius <= 12, (1.0, 1.0)) == pytest.approx(8.0, abs=1.0)


def test_hd95_empty_masks():
    empty, full = np.zeros((5, 5), bool), box((5, 5), (1, 1), (3, 3))
    assert math.isnan(hd95_mm(empty, empty, (1, 1)))
    assert hd95_mm(empty, full, (1, 1)) == math.inf


def test_label_overlap_per_label_and_means():
    fixed = np.zeros((1, 20, 20), np.int16)
    fixed[0, 2:8, 2:8] = 1
    fixed[0, 10:18, 10:18] = 2
    warped = fixed.copy()
    warped[0, 10:18, 10:18] = 0
    warped[0, 12:18, 10:18] = 2  # label 2: 48 of 64 voxels kept
    out = label_overlap(fixed, warped, (1.0, 1.0))
    assert out["per_label"][1] == {"dice": 1.0, "hd95_mm": 0.0}
    assert out["per_label"][2]["dice"] == pytest.approx(2 * 48 / (64 + 48))
    assert out["dice"] == pytest.approx((1.0 + 2 * 48 / 112) / 2)
    assert out["hd95_mm"] == pytest.approx(np.mean([0.0, out["per_label"][2]["hd95_mm"]]))


def test_label_overlap_missing_label_counts_as_zero_dice():
    fixed = np.zeros((1, 10, 10), np.uint8)
    fixed[0, 1:4, 1:4] = 1
    fixed[0, 6:9, 6:9] = 3
    warped = np.where(fixed == 3, 0, fixed)
    out = label_overlap(fixed, warped, (1.0, 1.0))
    assert out["per_label"][3]["dice"] == 0.0 and out["per_label"][3]["hd95_mm"] == math.inf
    assert out["dice"] == pytest.approx(0.5)
    assert out["hd95_mm"] == 0.0  # mean over labels present in both


def test_multichannel_labels_are_one_mask_per_channel():
    labels = np.zeros((2, 6, 6), np.float32)
    labels[0, :3] = 1
    labels[1, 2:] = 1  # overlapping channels are allowed
    masks = label_masks(labels)
    assert sorted(masks) == [1, 2] and masks[1].sum() == 18 and masks[2].sum() == 24


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="'warped_label' must have the shape of 'fixed_label'"):
        label_overlap(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), (1, 1))
    with pytest.raises(ValueError, match="'label' must be channel-first"):
        label_masks(np.zeros((4, 4)))


def test_folding_percent():
    ddf = torch.zeros(2, 5, 5)
    ddf[0] = -2 * torch.arange(5.0)[:, None]  # x -> -x
    assert folding_percent(ddf) == 100.0
    assert folding_percent(torch.zeros(3, 4, 4, 4)) == 0.0
