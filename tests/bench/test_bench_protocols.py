"""Protocol generators: rigid levels within their ranges, and the fixed -> moving convention of the moving images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_inr_reg.bench import protocols
from monai_inr_reg.core.grid import ImageGrid, apply_affine, ddf_voxel_from_ddf_mm
from monai_inr_reg.core.fields import jacobian_determinant
from monai_inr_reg.core.sample import sample_image_mm


def test_rigid_levels_respect_ranges_and_are_reproducible():
    width = 221
    cases = protocols.sample_rigid_cases(40, width, seed=3)
    assert len(cases) == 160
    for level, (r_lo, r_hi, t_lo, t_hi) in enumerate(protocols.RIGID_LEVELS, start=1):
        mine = [c for c in cases if c.level == level]
        angles = np.array([c.angle_deg for c in mine])
        shifts = np.array([c.translation_px for c in mine])
        assert np.all((np.abs(angles) >= r_lo) & (np.abs(angles) < r_hi))
        scale = width / 300
        assert np.all((np.abs(shifts) >= t_lo * scale) & (np.abs(shifts) < t_hi * scale))
        assert (angles > 0).any() and (angles < 0).any()  # random signs
        assert (shifts > 0).any() and (shifts < 0).any()
    assert protocols.sample_rigid_cases(40, width, seed=3) == cases
    assert protocols.sample_rigid_cases(40, width, seed=4) != cases
    # each level has its own stream: asking for level 4 only gives the same level-4 cases
    assert protocols.sample_rigid_cases(40, width, seed=3, levels=(4,)) == [c for c in cases if c.level == 4]
    with pytest.raises(ValueError, match="n_per_level"):
        protocols.sample_rigid_cases(0, width)


def test_rigid_matrix_rotates_about_centre(pair_2d):
    grid = pair_2d.grid
    case = protocols.RigidCase(3, 0, 12.0, (5.0, -2.0))
    m = protocols.rigid_matrix_mm(case, grid)
    r = m[:2, :2]
    assert torch.allclose(r.T @ r, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert math.degrees(math.atan2(float(r[1, 0]), float(r[0, 0]))) == pytest.approx(12.0)
    centre = grid.center_mm()
    assert torch.allclose(apply_affine(m, centre[None])[0], centre + torch.tensor([5.0, -2.0], dtype=torch.float64))


def test_moving_image_follows_fixed_to_moving_convention(pair_2d):
    grid = pair_2d.grid
    true = protocols.rigid_matrix_mm(protocols.RigidCase(2, 0, 8.0, (4.0, -3.0)), grid)
    moving = protocols.move_rigid(pair_2d.source, grid, true)
    # moving(T x) == source(x): sample the moving image at the mapped fixed points
    points = grid.mm_points(dtype=torch.float64)
    back = sample_image_mm(torch.as_tensor(moving)[None], grid, apply_affine(true, points))[:, 0].reshape(grid.shape)
    err = np.abs(back.numpy() - pair_2d.fixed)[pair_2d.mask]
    assert err.max() < 0.02  # two bilinear interpolations of a smooth image (values in [0, 1])
    # a pure shift of +4 mm along LPS x moves the content by -4 voxels along array axis 0 (x = -i)
    shift = protocols.rigid_matrix_mm(protocols.RigidCase(1, 0, 0.0, (4.0, 0.0)), grid)
    moved = protocols.move_rigid(pair_2d.source, grid, shift)
    ci = lambda a: (a * np.arange(a.shape[0])[:, None]).sum() / a.sum()  # noqa: E731
    assert ci(moved) - ci(pair_2d.source) == pytest.approx(-4.0, abs=0.05)


def test_smooth_warp_has_requested_rms_and_is_invertible(pair_2d):
    grid = pair_2d.grid
    ddf = protocols.random_smooth_ddf_mm(grid, rms_mm=2.0, correlation_mm=25.0, seed=1, mask=pair_2d.mask)
    assert ddf.shape == (2,) + grid.shape and ddf.dtype == torch.float64
    length = ddf.norm(dim=0)[torch.as_tensor(pair_2d.mask)]
    assert float(length.pow(2).mean().sqrt()) == pytest.approx(2.0, rel=1e-9)
    assert float(jacobian_determinant(ddf_voxel_from_ddf_mm(ddf, grid.mm_from_voxel)).min()) >= 0.2
    assert torch.equal(ddf, protocols.random_smooth_ddf_mm(grid, rms_mm=2.0, correlation_mm=25.0, seed=1,
                                                           mask=pair_2d.mask))
    inverse, residual = protocols.invert_ddf_mm(ddf, grid)
    assert residual < 1e-3
    moving, residual = protocols.move_deformable(pair_2d.source, grid, ddf)
    # moving(x + u(x)) == source(x)
    points = grid.mm_points(dtype=torch.float64) + ddf.reshape(2, -1).T
    back = sample_image_mm(torch.as_tensor(moving)[None], grid, points)[:, 0].reshape(grid.shape).numpy()
    assert np.abs(back - pair_2d.fixed)[pair_2d.mask].max() < 0.03


def test_smooth_warp_too_large_raises(pair_2d):
    with pytest.raises(ValueError, match="Jacobian"):
        protocols.random_smooth_ddf_mm(pair_2d.grid, rms_mm=40.0, correlation_mm=10.0, seed=0, max_tries=2)


def test_rigid_matrix_rejects_3d():
    grid = ImageGrid.from_ras_affine((4, 4, 4), None)
    with pytest.raises(ValueError, match="'grid' must be 2D"):
        protocols.rigid_matrix_mm(protocols.RigidCase(1, 0, 1.0, (0.0, 0.0)), grid)
