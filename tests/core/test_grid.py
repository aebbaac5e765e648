"""The conventions of core/grid.py: tested once, thoroughly (every adapter relies on them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_inr_reg.core.grid import (
    ImageGrid,
    NormalisedBox,
    as_mm_from_voxel,
    ddf_mm_from_ddf_voxel,
    ddf_voxel_from_ddf_mm,
    grid_sample_coords,
    lps_from_ras,
)


def oblique_affine_ras(ndim: int) -> torch.Tensor:
    """An oblique, anisotropic, off-origin voxel -> RAS matrix."""
    if ndim == 3:
        a, b = math.radians(20), math.radians(-35)
        rz = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64)
        rx = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]], dtype=torch.float64)
        linear = rz @ rx @ torch.diag(torch.tensor([0.7, 1.3, 2.5], dtype=torch.float64))
        origin = torch.tensor([-40.0, 12.5, 7.0], dtype=torch.float64)
    else:
        a = math.radians(30)
        linear = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
        linear = linear @ torch.diag(torch.tensor([0.8, 1.7], dtype=torch.float64))
        origin = torch.tensor([5.0, -3.0], dtype=torch.float64)
    m = torch.eye(ndim + 1, dtype=torch.float64)
    m[:ndim, :ndim], m[:ndim, ndim] = linear, origin
    return m


@pytest.mark.parametrize("ndim", [2, 3])
def test_lps_from_ras_is_an_involution_flipping_x_and_y(ndim):
    ras = oblique_affine_ras(ndim)
    lps = lps_from_ras(ras)
    assert torch.allclose(lps_from_ras(lps), ras)
    assert torch.allclose(lps[0], -ras[0]) and torch.allclose(lps[1], -ras[1])
    if ndim == 3:
        assert torch.allclose(lps[2], ras[2])


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxel_mm_round_trip_on_oblique_anisotropic_grid(ndim):
    grid = ImageGrid.from_ras_affine((7, 9, 5)[:ndim], oblique_affine_ras(ndim))
    voxels = torch.rand(50, ndim, dtype=torch.float64) * 8
    assert torch.allclose(grid.mm_to_voxel(grid.voxel_to_mm(voxels)), voxels, atol=1e-10)
    expected_spacing = torch.tensor([0.7, 1.3, 2.5] if ndim == 3 else [0.8, 1.7], dtype=torch.float64)
    assert torch.allclose(grid.spacing, expected_spacing)
    assert torch.allclose(grid.affine_ras, oblique_affine_ras(ndim))


def test_mm_points_are_c_ordered_like_reshape():
    grid = ImageGrid((3, 4), torch.eye(3, dtype=torch.float64))
    points = grid.voxel_points(dtype=torch.float64)
    assert points.shape == (12, 2)
    assert points[5].tolist() == [1.0, 1.0] and points[4].tolist() == [1.0, 0.0]


def test_grid_matches_itk_physical_points(tmp_path):
    """Our LPS mm of a voxel equals ITK's TransformIndexToPhysicalPoint for a NIfTI read by both."""
    itk = pytest.importorskip("itk")
    nib = pytest.importorskip("nibabel")
    ras = oblique_affine_ras(3)
    path = str(tmp_path / "oblique.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((7, 9, 5), np.float32), ras.numpy()), path)
    image = itk.imread(path)
    grid = ImageGrid.from_ras_affine((7, 9, 5), torch.as_tensor(nib.load(path).affine))
    for index in [(0, 0, 0), (6, 8, 4), (3, 1, 2)]:
        itk_point = np.array(image.TransformIndexToPhysicalPoint(index))
        ours = grid.voxel_to_mm(torch.tensor([index], dtype=torch.float64))[0].numpy()
        np.testing.assert_allclose(ours, itk_point, atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_ddf_voxel_mm_round_trip_and_meaning(ndim):
    grid = ImageGrid.from_ras_affine((4, 5, 3)[:ndim], oblique_affine_ras(ndim))
    ddf_voxel = torch.randn((ndim,) + grid.shape, dtype=torch.float64)
    ddf_mm = ddf_mm_from_ddf_voxel(ddf_voxel, grid.mm_from_voxel)
    assert torch.allclose(ddf_voxel_from_ddf_mm(ddf_mm, grid.mm_from_voxel), ddf_voxel, atol=1e-10)
    # meaning: mm(p + ddf_voxel(p)) == mm(p) + ddf_mm(p)
    p = grid.voxel_points(dtype=torch.float64)
    moved = grid.voxel_to_mm(p + ddf_voxel.reshape(ndim, -1).T)
    assert torch.allclose(moved, grid.voxel_to_mm(p) + ddf_mm.reshape(ndim, -1).T, atol=1e-10)


def test_grid_sample_coords_span_first_to_last_voxel_reversed():
    coords = grid_sample_coords(torch.tensor([[0.0, 0.0, 0.0], [4.0, 9.0, 19.0]]), (5, 10, 20))
    assert coords.tolist() == [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
    coords = grid_sample_coords(torch.tensor([[4.0, 0.0]]), (5, 10))
    assert coords.tolist() == [[-1.0, 1.0]]  # x (last array axis) first


def test_box_holds_both_grids_and_is_cubic():
    a = ImageGrid.from_ras_affine((10, 20), None)
    b = ImageGrid.from_ras_affine((30, 5), oblique_affine_ras(2))
    box = NormalisedBox.around(a, b, margin=0.1)
    for g in (a, b):
        unit = box.to_unit(g.corners_mm())
        assert (unit > 0).all() and (unit < 1).all()
    assert box.size_mm[0] == box.size_mm[1]


@pytest.mark.parametrize("bad, match", [(torch.zeros(4, 4), "not invertible"), (torch.eye(3), r"\(4, 4\)"),
                                        (torch.full((4, 4), float("nan")), "non-finite")])
def test_bad_affine_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        as_mm_from_voxel(bad, 3, name="affine")


def test_downsampled_grid_keeps_corners():
    grid = ImageGrid.from_ras_affine((21, 41), oblique_affine_ras(2))
    coarse = grid.downsampled(2)
    assert coarse.shape == (11, 21)
    assert torch.allclose(coarse.corners_mm(), grid.corners_mm())


@pytest.mark.parametrize("ndim", [2, 3])
def test_center_of_mass_is_the_physical_position_of_a_single_bright_voxel(ndim):
    grid = ImageGrid.from_ras_affine((7, 9, 5)[:ndim], oblique_affine_ras(ndim))
    image = torch.zeros((1,) + grid.shape)
    voxel = (5, 2, 3)[:ndim]
    image[(0,) + voxel] = 4.0
    image[(0,) + (0,) * ndim] = -9.0  # negative intensities weigh nothing
    expected = grid.voxel_to_mm(torch.tensor([voxel], dtype=torch.float64))[0]
    assert torch.allclose(grid.center_of_mass_mm(image), expected, atol=1e-9)
    # two equal voxels: the midpoint; an empty image: the grid centre
    other = (1, 7, 0)[:ndim]
    image[(0,) + other] = 4.0
    both = grid.voxel_to_mm(torch.tensor([voxel, other], dtype=torch.float64)).mean(0)
    assert torch.allclose(grid.center_of_mass_mm(image), both, atol=1e-9)
    assert torch.allclose(grid.center_of_mass_mm(torch.zeros(grid.shape)), grid.center_mm())


def test_affine_for_ndim_matches_monai_to_affine_nd():
    from monai.data.utils import to_affine_nd

    from monai_inr_reg.core.grid import affine_for_ndim

    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        affine = torch.eye(4, dtype=torch.float64)
        affine[:3, :] = torch.randn(3, 4, generator=g, dtype=torch.float64)
        reduced = affine_for_ndim(affine, 2)
        assert torch.equal(reduced, torch.as_tensor(to_affine_nd(2, affine), dtype=torch.float64))
        assert torch.equal(affine_for_ndim(affine, 3), affine)
        assert torch.equal(affine_for_ndim(reduced, 2), reduced)
    with pytest.raises(ValueError, match=r"affine must be a \(4, 4\) homogeneous matrix for a 3D image, got \(3, 3\)"):
        affine_for_ndim(torch.eye(3), 3)
    with pytest.raises(ValueError, match=r"\(3, 3\) or \(4, 4\) homogeneous matrix for a 2D image, got \(5, 5\)"):
        affine_for_ndim(torch.eye(5), 2)
    # the grid of a 2D image from MONAI's 4 x 4 affine: the same as from its 3 x 3 part
    affine = torch.tensor([[0.9, 0.1, 0.0, -4.0], [-0.2, 1.1, 0.0, 7.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
                          dtype=torch.float64)
    assert torch.equal(ImageGrid.from_ras_affine((6, 5), affine).mm_from_voxel,
                       ImageGrid.from_ras_affine((6, 5), affine_for_ndim(affine, 2)).mm_from_voxel)


def test_itk_geometry_recomposes_the_grid():
    """``itk_geometry``: origin, spacing and an orthonormal direction whose columns scaled by the
    spacing, with the origin, are the grid's voxel -> LPS mm map (an oblique, anisotropic grid)."""
    import numpy as np

    angle = 0.3
    ras = torch.eye(4, dtype=torch.float64)
    ras[:2, :2] = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * torch.tensor([0.8, 1.5])
    ras[2, 2], ras[:3, 3] = 2.5, torch.tensor([10.0, -20.0, 5.0])
    grid = ImageGrid.from_ras_affine((7, 6, 5), ras)
    origin, spacing, direction = grid.itk_geometry()
    assert np.allclose(spacing, [0.8, 1.5, 2.5]) and np.allclose(direction.T @ direction, np.eye(3))
    recomposed = np.eye(4)
    recomposed[:3, :3], recomposed[:3, 3] = direction * spacing[None, :], origin
    assert np.allclose(recomposed, grid.mm_from_voxel.numpy(), atol=1e-12)
