"""The `bounded` preset and its grid motion: a field within a search radius, from the images as placed."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_inr_reg import register
from monai_inr_reg.core.grid import ImageGrid
from monai_inr_reg.core.losses import gaussian_smooth
from monai_inr_reg.motion import GridMotion, dense_displacement_mm
from synthetic_images import phantom, shifted


def texture(shape, seed: int = 1, sigma: float = 1.5) -> torch.Tensor:
    """Smoothed noise ``(1, *shape)`` in [0, 1]: structure at every voxel."""
    noise = gaussian_smooth(torch.rand((1,) + tuple(shape), generator=torch.Generator().manual_seed(seed)), sigma)
    return (noise - noise.min()) / (noise.max() - noise.min())


SHIFT = (4.0, -2.0, 2.0)


def shifted_pair_files(folder, shift) -> list[str]:
    """``fixed.nii.gz`` (a texture) and ``moving.nii.gz`` (it inverted, a second contrast, shifted by
    ``shift`` voxels), 1.2 x 1.2 x 1.5 mm voxels with a flipped first axis: their paths."""
    fixed = texture((32, 36, 28))
    moving = 1.0 - shifted(fixed, shift)
    paths = []
    for name, image in (("fixed", fixed), ("moving", moving)):
        paths.append(str(folder / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(image[0].numpy(), np.diag([-1.2, 1.2, 1.5, 1.0])), paths[-1])
    return paths


def test_grid_motion_composes_its_field_before_the_matrix():
    """``phi(x) = M (x + v(x))``: zero field = the matrix; at a node, ``v`` is the node's value; between
    nodes, linear; beyond the last node, the edge value; roughness 0 for a constant field."""
    affine = torch.diag(torch.tensor([-1.5, 2.0, 1.0], dtype=torch.float64))  # RAS -> LPS flips x; 2 mm rows
    grid = ImageGrid.from_ras_affine((24, 20), affine)
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[:2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    matrix[:2, 2] = torch.tensor([5.0, -3.0], dtype=torch.float64)
    motion = GridMotion(grid, 4, matrix)
    assert motion.displacement_mm.shape == (2, 6, 5)
    points = grid.mm_points()
    assert torch.allclose(motion(points), (points.double() @ matrix[:2, :2].T + matrix[:2, 2]).float(), atol=1e-5)
    with torch.no_grad():
        motion.displacement_mm[:, 2, 3] = torch.tensor([1.0, -2.0])
    node_voxel = torch.tensor([[2 * 4 + 1.5, 3 * 4 + 1.5]], dtype=torch.float64)  # node g at g * 4 + (4 - 1) / 2
    node_mm = grid.voxel_to_mm(node_voxel).float()
    expected = (node_mm + torch.tensor([[1.0, -2.0]])).double() @ matrix[:2, :2].T + matrix[:2, 2]
    assert torch.allclose(motion(node_mm).double(), expected, atol=1e-5)
    halfway = grid.voxel_to_mm(node_voxel + torch.tensor([[2.0, 0.0]], dtype=torch.float64)).float()
    expected = (halfway + torch.tensor([[0.5, -1.0]])).double() @ matrix[:2, :2].T + matrix[:2, 2]
    assert torch.allclose(motion(halfway).double(), expected, atol=1e-5)
    assert float(motion.roughness().detach()) > 0
    with torch.no_grad():
        motion.displacement_mm.copy_(torch.tensor([3.0, 1.0]).reshape(2, 1, 1).expand(2, 6, 5))
    assert float(motion.roughness().detach()) == 0.0
    far = grid.voxel_to_mm(torch.tensor([[-10.0, 40.0]], dtype=torch.float64)).float()  # beyond every node
    expected = (far + torch.tensor([[3.0, 1.0]])).double() @ matrix[:2, :2].T + matrix[:2, 2]
    assert torch.allclose(motion(far).double(), expected, atol=1e-4)
    ddf = dense_displacement_mm(motion, grid, "cpu")
    assert ddf.shape == (2, 24, 20)
    assert torch.allclose(ddf.reshape(2, -1).T, (motion(points) - points).double(), atol=1e-5)


def test_bounded_registers_a_shifted_inverted_pair_from_nifti_files(tmp_path):
    """A 3D pair loaded from NIfTI files (anisotropic voxels, a flipped axis): the moving image is the
    fixed one inverted (1 - f, a second contrast) and shifted by (4, -2, 2) voxels. The `bounded`
    preset finds the shift to within a few tenths of a voxel away from the border and moves nothing
    farther than its two searches reach (8 voxels each)."""
    paths = shifted_pair_files(tmp_path, SHIFT)
    shift = SHIFT
    result = register(*paths, "bounded")
    assert result.motion == "bounded" and not result.parametric and result.start["alignment"] == "none"
    inner = result.ddf[:, 8:-8, 8:-8, 8:-8]
    error = (inner - torch.tensor(shift).reshape(3, 1, 1, 1)).abs()
    assert float(error.mean()) < 0.3, error.mean()
    assert float(result.ddf.abs().max()) <= 16.0 + 1e-4
    assert result.quality["metric"] == "mind" and result.quality["final"] < 0.5 * result.quality["no_registration"]


def test_a_fixed_mask_keeps_what_lies_outside_it_out_of_the_search(tmp_path):
    """NIfTI files: the moving image's half inside the fixed mask is shifted by (4, -2, 2) voxels, the
    half outside by the opposite. With the mask file, the cells outside follow those inside: the field
    is the inside shift to a tenth of a voxel on average, up to the mask's edge. Without it, the outside
    half drags the inside one."""
    shape, half = (40, 48, 36), 24
    fixed = texture(shape)
    moving = 1.0 - shifted(fixed, SHIFT)
    moving[:, :, half:] = 1.0 - shifted(fixed, tuple(-s for s in SHIFT))[:, :, half:]
    mask = torch.zeros(shape)
    mask[:, :half] = 1.0
    paths = {}
    for name, image in (("fixed", fixed[0]), ("moving", moving[0]), ("mask", mask)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(image.numpy(), np.diag([-1.2, 1.2, 1.5, 1.0])), paths[name])
    inside = (slice(None), slice(8, -8), slice(8, half), slice(8, -8))
    truth = torch.tensor(SHIFT).reshape(3, 1, 1, 1)
    masked = register(paths["fixed"], paths["moving"], "bounded", fixed_mask=paths["mask"])
    unmasked = register(paths["fixed"], paths["moving"], "bounded")
    assert float((masked.ddf[inside] - truth).abs().mean()) < 0.1
    assert float((unmasked.ddf[inside] - truth).abs().mean()) > 0.5


def test_the_fit_loop_refines_a_grid_motion():
    """A grid stage with iterations: the search finds the shift to its 2-voxel steps; Adam steps on
    MIND-SSC with the smoothness penalty take an odd shift the rest of the way."""
    fixed = phantom((40, 44, 36), seed=3, blobs=30)
    shift = (3.0, -1.0, 1.0)
    moving = 1.0 - shifted(fixed, shift)
    inner = (slice(None),) + (slice(8, -8),) * 3
    truth = torch.tensor(shift).reshape(3, 1, 1, 1)
    searched = register(fixed, moving, "bounded")
    refined = register(fixed, moving, "bounded", stages={"bounded": {"iterations": 200, "smoothness_weight": 0.1}})
    assert float((searched.ddf[inner] - truth).abs().mean()) > 0.5  # (3, -1, 1) is not on the search's 2-voxel steps
    assert float((refined.ddf[inner] - truth).abs().max()) < 0.1
    similarity = refined.stages[-1]["similarity"]
    assert similarity["end"] < 0.1 * similarity["start"] and not similarity["kept_start"]


def test_searches_run_coarse_to_fine_each_from_where_the_last_landed():
    """A 12-voxel shift: one search of 8 voxels cannot reach it; a coarse search (4-voxel blocks, 12-voxel
    cells, 16 voxels) then a fine one (2-voxel blocks, the motion's 6-voxel cells, 8 voxels) finds it
    to within a voxel inside the volume, and nothing moves farther than the two radii (24 voxels). The
    preset's own two searches of 8 voxels get part of the way."""
    fixed = phantom((40, 44, 36), seed=3, blobs=30)
    shift = (12.0, -6.0, 4.0)
    moving = 1.0 - shifted(fixed, shift)
    inner = (slice(None),) + (slice(14, -14),) * 3
    truth = torch.tensor(shift).reshape(3, 1, 1, 1)

    def error(radius, downsample):
        result = register(fixed, moving, "bounded",
                          stages={"bounded": {"search_radius_voxels": radius, "search_downsample": downsample}})
        assert float(result.ddf.abs().max()) <= sum(radius if isinstance(radius, list) else [radius]) + 1e-4
        return float((result.ddf[inner] - truth).abs().mean())

    one, coarse_to_fine, preset = error(8, 2), error([16, 8], [4, 2]), error([8, 8], [2, 2])
    assert one > 2.0 and coarse_to_fine < 1.0 and preset < 0.6 * one, (one, coarse_to_fine, preset)


def test_the_command_line_takes_search_levels_and_a_fixed_mask(tmp_path):
    """``monai-inr-reg register`` on NIfTI files with ``--set`` lists for the search's levels and a
    ``--fixed-mask`` file writes the field ``register()`` returns for the same files and options."""
    from monai_inr_reg.cli import main

    paths = shifted_pair_files(tmp_path, (12.0, -6.0, 4.0))
    mask = np.zeros((32, 36, 28), dtype=np.float32)
    mask[4:-4, 4:-4, 4:-4] = 1.0
    paths.append(str(tmp_path / "mask.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.diag([-1.2, 1.2, 1.5, 1.0])), paths[-1])
    levels = {"search_radius_voxels": [16, 8], "search_downsample": [4, 2]}
    code = main(["register", paths[0], paths[1], "--fixed-mask", paths[2], "-o", str(tmp_path / "out"), "--id", "pair",
                 "--preset", "bounded", "--no-itk", "--outputs", "ddf,metrics",
                 "--set", "stages.bounded.search_radius_voxels=[16, 8]", "--set", "stages.bounded.search_downsample=[4, 2]"])
    assert code == 0
    written = nib.load(str(tmp_path / "out" / "pair" / "ddf.nii.gz")).get_fdata()  # (*S, D), the components last
    result = register(paths[0], paths[1], "bounded", fixed_mask=paths[2], stages={"bounded": levels})
    assert float(result.ddf.abs().max()) > 8.0  # farther than one search of 8 reaches
    assert np.allclose(np.moveaxis(written, -1, 0), result.ddf.numpy(), atol=1e-4)


@pytest.mark.parametrize("overrides, match", [
    ({"stages": {"bounded": {"search_radius_voxels": [5, 8]}}}, r"each 'search_radius_voxels' \[5, 8\] must be a multiple of its"),
    ({"stages": {"bounded": {"search_radius_voxels": 8, "search_downsample": [4, 2]}}}, "must be one integer each or lists of one length"),
    ({"stages": {"bounded": {"search_radius_voxels": 6, "search_downsample": 0}}}, r"'search_downsample' \(integers >= 1\)"),
    ({"stages": {"bounded": {"search_radius_voxels": 6, "search_downsample": 3}}, "motions": {"bounded": {"spacing_voxels": 4}}},
     r"'spacing_voxels' \(4\) of the last"),
    ({"motions": {"bounded": {"spacing_voxels": 0}}}, "'motions.bounded.spacing_voxels' of a grid motion must be an integer >= 1"),
    ({"stages": {"bounded": {"folding_weight": 1.0}}}, "'folding_weight' applies to model hash only"),
])
def test_bad_grid_options_fail_before_work(overrides, match):
    with pytest.raises(ValueError, match=match):
        register(torch.rand(1, 8, 8), torch.rand(1, 8, 8), "bounded", **overrides)


def test_search_options_need_a_grid_motion():
    with pytest.raises(ValueError, match="'search_radius_voxels' applies to model grid only"):
        register(torch.rand(1, 8, 8), torch.rand(1, 8, 8), "deformable", stages={"deformable": {"search_radius_voxels": 4}})


def test_a_grid_stage_after_a_pose_writes_an_itk_transform_that_maps_the_same_points(tmp_path):
    """An affine stage, then a searched grid stage: ``phi(x) = A (x + v(x))``. The ITK transform file
    ``result.save`` writes maps fixed points where the result does (to 1e-4 mm)."""
    import itk

    fixed = phantom((40, 44, 36), seed=3, blobs=30)
    moving = 1.0 - shifted(fixed, (4.0, -2.0, 2.0))
    stages = [{"name": "pose", "motion": "affine", "objective": "mutual_information", "iterations": 60},
              {"name": "bounded", "motion": "bounded", "objective": "mind", "search_radius_voxels": 8,
               "search_downsample": 2}]
    result = register(fixed, moving, "bounded", stages=stages, initial_alignment="center_of_mass")
    assert not result.parametric and not torch.allclose(result.matrix_mm, torch.eye(4, dtype=torch.float64))
    files = result.save(tmp_path)
    transform = itk.transformread(str(files["h5"]))[0]
    mapped = result.mapped_points_mm()
    for index in (0, 1234, 9000, mapped.shape[0] - 1):
        point = result.fixed_grid.mm_points(dtype=torch.float64)[index].tolist()
        assert np.allclose(transform.TransformPoint(point), mapped[index].numpy(), atol=1e-4), index
    inner = result.ddf[:, 8:-8, 8:-8, 8:-8]
    assert float((inner - torch.tensor([4.0, -2.0, 2.0]).reshape(3, 1, 1, 1)).abs().mean()) < 0.5


def test_a_thin_volume_is_searched_too():
    """Three slices: the search's blocks and cells are cut to the axis (no pooling error); the in-plane
    shift is still found and the field stays within the radius."""
    fixed = texture((40, 36, 3))
    moving = 1.0 - shifted(fixed, (4.0, -2.0, 0.0))
    result = register(fixed, moving, "bounded")
    inner = result.ddf[:2, 8:-8, 8:-8, :]
    assert float((inner - torch.tensor([4.0, -2.0]).reshape(2, 1, 1, 1)).abs().mean()) < 0.5
    assert float(result.ddf.abs().max()) <= 16.0 + 1e-4


def test_register_itk_with_bounded_on_imread(tmp_path):
    """The ITK door: ``itk.imread`` images (anisotropic, a flipped axis), the bounded preset; the
    returned ITK transform moves the fixed centre by the shift, and ResampleImageFilter with it
    reproduces the returned warped image."""
    import itk

    from monai_inr_reg import register_itk

    paths = shifted_pair_files(tmp_path, SHIFT)
    shift = SHIFT
    fixed_itk, moving_itk = (itk.imread(p, itk.F) for p in paths)
    transform, warped = register_itk(fixed_itk, moving_itk, "bounded")
    # ITK index order is the NIfTI array order here; both images share one grid
    size = list(fixed_itk.GetLargestPossibleRegion().GetSize())
    linear = itk.array_from_matrix(fixed_itk.GetDirection()) * np.asarray(fixed_itk.GetSpacing())[None, :]
    centre_index = np.array([(s - 1) / 2 for s in size])
    centre_mm = np.asarray(fixed_itk.GetOrigin()) + linear @ centre_index
    moved_mm = np.asarray(transform.TransformPoint([float(v) for v in centre_mm]))
    moved_index = np.linalg.solve(linear, moved_mm - np.asarray(fixed_itk.GetOrigin()))
    assert np.abs(moved_index - centre_index - np.asarray(shift)).max() < 0.5
    again = itk.resample_image_filter(moving_itk, transform=transform, use_reference_image=True,
                                      reference_image=fixed_itk)
    inner = (slice(4, -4),) * 3
    assert np.allclose(itk.array_view_from_image(again)[inner], itk.array_view_from_image(warped)[inner], atol=1e-4)
