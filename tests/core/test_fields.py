"""Jacobian determinant and folding of displacement fields (core/fields.py), against exact answers."""

from __future__ import annotations

import math

import pytest
import torch

from monai_inr_reg.core.fields import folding_fraction, jacobian_determinant, log_jacobian_std
from monai_inr_reg.core.grid import ImageGrid, ddf_voxel_from_ddf_mm


def linear_ddf(matrix: torch.Tensor, shape, offset=None) -> torch.Tensor:
    """ddf_voxel of p -> matrix @ p + offset, shape (D, *shape), float64."""
    ndim = len(shape)
    grid = ImageGrid(tuple(shape), torch.eye(ndim + 1, dtype=torch.float64))
    points = grid.voxel_points(dtype=torch.float64)
    moved = points @ matrix.T + (0.0 if offset is None else torch.as_tensor(offset, dtype=torch.float64))
    return (moved - points).T.reshape((ndim,) + tuple(shape))


@pytest.mark.parametrize("ndim", [2, 3])
def test_identity_and_translation_have_determinant_one(ndim):
    shape = (7, 6, 5)[:ndim]
    for ddf in (torch.zeros((ndim,) + shape), torch.full((ndim,) + shape, 2.5)):
        det = jacobian_determinant(ddf)
        assert det.shape == shape and det.dtype == ddf.dtype
        assert torch.allclose(det, torch.ones(shape), atol=1e-6)
        assert float(folding_fraction(ddf)) == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_linear_map_determinant_is_exact_everywhere_including_edges(ndim):
    g = torch.Generator().manual_seed(ndim)
    matrix = torch.eye(ndim, dtype=torch.float64) + 0.3 * torch.randn(ndim, ndim, generator=g, dtype=torch.float64)
    ddf = linear_ddf(matrix, (6, 5, 4)[:ndim], offset=torch.randn(ndim, generator=g, dtype=torch.float64))
    det = jacobian_determinant(ddf)
    assert torch.allclose(det, torch.linalg.det(matrix).expand_as(det), atol=1e-12)


def test_determinant_is_frame_free_on_an_oblique_anisotropic_grid():
    # the same motion expressed in mm (LPS) and converted to voxels has the determinant of the mm map
    angle = math.radians(25)
    linear = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]],
                          dtype=torch.float64) @ torch.diag(torch.tensor([0.8, 1.6, 2.4], dtype=torch.float64))
    mm_from_voxel = torch.eye(4, dtype=torch.float64)
    mm_from_voxel[:3, :3], mm_from_voxel[:3, 3] = linear, torch.tensor([3.0, -7.0, 11.0])
    grid = ImageGrid((6, 5, 4), mm_from_voxel)
    motion_mm = torch.tensor([[1.2, 0.1, 0.0], [-0.2, 0.9, 0.05], [0.0, 0.1, 1.1]], dtype=torch.float64)
    points = grid.mm_points(dtype=torch.float64)
    ddf_mm = (points @ motion_mm.T - points).T.reshape(3, 6, 5, 4)
    det = jacobian_determinant(ddf_voxel_from_ddf_mm(ddf_mm, grid.mm_from_voxel))
    assert torch.allclose(det, torch.linalg.det(motion_mm).expand_as(det), atol=1e-10)


def test_reflection_folds_every_voxel():
    ddf = linear_ddf(torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), (5, 5))
    assert torch.allclose(jacobian_determinant(ddf), -torch.ones(5, 5, dtype=torch.float64))
    assert float(folding_fraction(ddf)) == 1.0


def test_sine_field_matches_analytic_determinant_and_fold_share():
    # u_x = a sin(2 pi x / L): det = 1 + a (2 pi / L) cos(2 pi x / L); with a 2 pi / L = 2 a third folds
    length, n = 40.0, 160
    x = torch.arange(n, dtype=torch.float64)
    amplitude = 2.0 * length / (2 * math.pi)
    ddf = torch.zeros(2, n, 8, dtype=torch.float64)
    ddf[0] = (amplitude * torch.sin(2 * math.pi * x / length))[:, None]
    det = jacobian_determinant(ddf)
    exact = 1 + 2.0 * torch.cos(2 * math.pi * x / length)
    assert (det[1:-1, 0] - exact[1:-1]).abs().max() < 2.0 * (2 * math.pi / length) ** 2  # O(h^2) central differences
    assert abs(float(folding_fraction(ddf)) - 1 / 3) < 0.02


def test_folding_fraction_counts_inside_the_mask_only():
    flip = linear_ddf(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64), (4, 6))
    # fold only in rows 0-1 (rows 2-3 keep the identity): the one-sided edge rows are exact for linear pieces
    mixed = torch.cat([flip[:, :2], torch.zeros(2, 2, 6, dtype=torch.float64)], dim=1)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0] = True
    assert float(folding_fraction(flip, mask=mask)) == 1.0
    assert float(folding_fraction(mixed, mask=mask[None])) == 1.0
    mask_last = torch.zeros(4, 6, dtype=torch.bool)
    mask_last[3] = True
    assert float(folding_fraction(mixed, mask=mask_last)) == 0.0
    assert float(folding_fraction(flip, mask=torch.zeros(4, 6))) == 0.0


def test_gradcheck_float64():
    ddf = (0.3 * torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: jacobian_determinant(f).sum(), (ddf,))


@pytest.mark.parametrize("bad, error, match", [
    (torch.zeros(3, 5, 5), ValueError, "'ddf_voxel' must have shape"),
    (torch.zeros(2, 5, 5, 5), ValueError, "'ddf_voxel' must have shape"),
    (torch.zeros(2, 5, 1), ValueError, "at least 2 voxels"),
    (torch.zeros(2, 5, 5, dtype=torch.int64), TypeError, "floating-point"),
    ([[0.0]], TypeError, "'ddf_voxel' must be a torch.Tensor"),
])
def test_bad_fields_name_the_argument(bad, error, match):
    with pytest.raises(error, match=match):
        jacobian_determinant(bad)


def test_bad_mask_names_the_argument():
    with pytest.raises(ValueError, match="'mask' must have the field's spatial shape"):
        folding_fraction(torch.zeros(2, 5, 5), mask=torch.ones(4, 5))


def test_sdlogj_against_a_hand_computed_field():
    # an affine motion stretches evenly: SDlogJ 0
    affine = linear_ddf(torch.tensor([[1.2, 0.1], [0.0, 0.9]], dtype=torch.float64), (12, 10))
    assert float(log_jacobian_std(affine)) < 1e-12
    # x-displacement with slope a on the left half, b on the right: det = 1 + a and 1 + b away from the seam
    a, b = 0.5, -0.2
    x = torch.arange(20, dtype=torch.float64)
    ux = torch.where(x < 10, a * x, a * 10 + b * (x - 10))
    ddf = torch.stack([ux[:, None].expand(20, 8), torch.zeros(20, 8, dtype=torch.float64)])
    away = torch.ones(20, 8, dtype=torch.bool)
    away[9:11] = False  # central differences straddle the seam there
    expected = abs(math.log(1 + a) - math.log(1 + b)) / 2  # two equal groups of voxels
    assert float(log_jacobian_std(ddf, mask=away)) == pytest.approx(expected, rel=1e-12)
    # a fold counts as a squeeze to 1e-9 (Learn2Reg's clipping)
    folded = ddf.clone()
    folded[0] = -2.0 * x[:, None].expand(20, 8)  # det = -1 everywhere
    assert float(log_jacobian_std(folded)) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(float(log_jacobian_std(ddf, mask=torch.zeros(20, 8))))
    with pytest.raises(ValueError, match="'mask' must have the field's spatial shape"):
        log_jacobian_std(ddf, mask=torch.ones(3, 3))
