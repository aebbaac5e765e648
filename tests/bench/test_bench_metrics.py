"""Benchmark scores on cases with known answers: corner error, end-point error, folding, Dice, centroids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_inr_reg.bench import metrics as bm
from monai_inr_reg.bench.baselines import matrix_to_ddf_mm
from monai_inr_reg.bench.protocols import RigidCase, rigid_matrix_mm
from monai_inr_reg.core.grid import ImageGrid


@pytest.fixture
def grid():
    return ImageGrid.from_ras_affine((101, 121), None)  # 2D, no affine: LPS x = -i, y = -j


def test_identity_corner_error_is_zero(grid):
    true = rigid_matrix_mm(RigidCase(3, 0, 12.0, (10.0, -6.0)), grid)
    out = bm.corner_error(grid, true, matrix_mm=true)
    assert out["corner_error_mm"] < 1e-9 and out["success"]
    # the same map given as a field, read at the corner voxels
    out = bm.corner_error(grid, true, ddf_mm=matrix_to_ddf_mm(true, grid))
    assert out["corner_error_mm"] < 1e-9


def test_translation_corner_error_is_its_length(grid):
    true = rigid_matrix_mm(RigidCase(1, 0, 0.0, (3.0, 4.0)), grid)
    out = bm.corner_error(grid, true, matrix_mm=torch.eye(3, dtype=torch.float64))
    assert out["corner_error_mm"] == pytest.approx(5.0, abs=1e-9)
    assert out["relative_error"] == pytest.approx(5.0 / 121, abs=1e-12)  # width = 121 columns x 1 mm
    assert out["success"] == (5.0 / 121 < 0.02)


def test_rotation_corner_error_is_chord_length(grid):
    angle = 10.0
    true = rigid_matrix_mm(RigidCase(2, 0, angle, (0.0, 0.0)), grid)
    radius = math.hypot(50.0, 60.0)  # centre to corner voxel centre, mm
    expected = 2 * radius * math.sin(math.radians(angle) / 2)
    out = bm.corner_error(grid, true, matrix_mm=torch.eye(3, dtype=torch.float64))
    assert out["corner_error_mm"] == pytest.approx(expected, rel=1e-9)


def test_corner_error_rejects_both_inputs(grid):
    with pytest.raises(ValueError, match="exactly one"):
        bm.corner_points_mm(grid, matrix_mm=torch.eye(3), ddf_mm=torch.zeros(2, 101, 121))


def test_endpoint_error_of_known_offset(grid):
    true = torch.randn(2, *grid.shape, dtype=torch.float64)
    est = true.clone()
    est[0] += 0.3
    est[1] -= 0.4
    mask = np.zeros(grid.shape, dtype=bool)
    mask[10:50, 20:70] = True
    out = bm.endpoint_error(est, true, mask)
    assert out["epe_median_mm"] == pytest.approx(0.5) and out["epe_p90_mm"] == pytest.approx(0.5)
    est[:, 0, 0] += 100.0  # outside the mask: ignored
    assert bm.endpoint_error(est, true, mask)["epe_max_mm"] == pytest.approx(0.5)
    assert bm.endpoint_error(est, true)["epe_max_mm"] > 100.0


def test_folding_percent_known_fields(grid):
    ddf = torch.zeros(2, *grid.shape, dtype=torch.float64)
    assert bm.folding_percent_mm(ddf, grid) == 0.0
    points = grid.mm_points(dtype=torch.float64).T.reshape(2, *grid.shape)
    mirror = ddf.clone()
    mirror[0] = -2.0 * points[0]  # x -> -x: Jacobian determinant -1 everywhere
    assert bm.folding_percent_mm(mirror, grid) == pytest.approx(100.0)
    half = torch.zeros_like(ddf)
    half[0, :50] = -2.0 * points[0, :50]  # mirrored on the first 50 of 101 rows, identity on the rest
    assert 100.0 * 48 / 101 <= bm.folding_percent_mm(half, grid) <= 100.0 * 51 / 101  # +-1 row at the seam


def test_identity_labels_give_dice_one_and_centroids_match():
    grid = ImageGrid.from_ras_affine((20, 22, 24), torch.diag(torch.tensor([2.0, 1.0, 1.5, 1.0])))
    labels = np.zeros((1, 20, 22, 24), dtype=np.float32)
    labels[0, 2:8, 3:9, 4:12] = 3
    labels[0, 10:16, 10:20, 5:9] = 7
    out = bm.label_overlap(labels, labels.copy(), grid.spacing.tolist())
    assert out["dice"] == 1.0 and out["hd95_mm"] == 0.0
    shifted = np.roll(labels, 2, axis=1)  # 2 voxels along axis 0 = 4 mm
    errors = bm.centroid_error_mm(labels, shifted, grid, skip=())
    assert errors == {3: pytest.approx(4.0), 7: pytest.approx(4.0)}
