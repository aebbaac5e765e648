"""The files of ``save_result`` applied by ANTs (antspyx) and elastix (transformix) equal ``result.warped``.

Same exact analytic results as ``test_itk_bridge``: an oblique, anisotropic 3D pair on different
grids with an affine stage and a smooth residual field, a parametric rigid result, and the 2D
BrainWeb pair with a 30 degree direction cosine (skipped without ../shared/data).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

itk = pytest.importorskip("itk")

from monai_inr_reg import itk_bridge  # noqa: E402
from monai_inr_reg.core.sample import warp_image_mm  # noqa: E402
from test_itk_bridge import (DATA_2D, affine_3d, assert_same_warp, make_result, matrix_about_centres,  # noqa: E402
                             pair_3d, rotation, rotation_2d, smooth_image)

pytestmark = [pytest.mark.itk, pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")]


def to_ants(tensor: torch.Tensor, grid):
    """A ``(1, *S)`` tensor on ``grid`` as an ANTsImage (ANTs uses ITK's index order and LPS geometry)."""
    ants = pytest.importorskip("ants")
    d = grid.ndim
    linear = grid.mm_from_voxel[:d, :d].numpy()
    spacing = np.linalg.norm(linear, axis=0)
    return ants.from_numpy(np.ascontiguousarray(tensor[0].numpy(), dtype=np.float32),
                           origin=grid.mm_from_voxel[:d, d].tolist(), spacing=spacing.tolist(),
                           direction=linear / spacing[None, :])


def ants_warp(result, transformlist, **kwargs) -> np.ndarray:
    ants = pytest.importorskip("ants")
    fixed = to_ants(torch.zeros((1,) + result.fixed_grid.shape), result.fixed_grid)
    moving = to_ants(result.moving_image, result.moving_grid)
    out = ants.apply_transforms(fixed, moving, [str(p) for p in transformlist], interpolator="linear", **kwargs)
    return out.numpy()


def transformix_warp(result, parameter_files) -> np.ndarray:
    if not hasattr(itk, "transformix_filter"):
        pytest.skip("itk-elastix is not installed")
    parameters = itk.ParameterObject.New()
    for path in parameter_files:
        parameters.AddParameterFile(str(path))
    moving = itk_bridge.tensor_to_image(result.moving_image, result.moving_grid)
    out = itk.transformix_filter(moving, parameters, log_to_console=False)
    return itk.array_from_image(out).transpose()


def inverse_reference(result, fixed_image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The fixed image pulled onto the moving grid through the exact inverse, and where that is defined."""
    psi = itk_bridge.inverse_ddf_mm(result)
    y = result.moving_grid.mm_points(dtype=torch.float64)
    x = y + psi.reshape(result.ndim, -1).T
    expected = warp_image_mm(fixed_image, result.fixed_grid, x, result.moving_grid.shape)[0].numpy()
    voxel = result.fixed_grid.mm_to_voxel(x)
    size = torch.tensor(result.fixed_grid.shape, dtype=torch.float64)
    inside = ((voxel >= 1e-3) & (voxel <= size - 1 - 1e-3)).all(1).reshape(result.moving_grid.shape)
    return expected, inside.numpy()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def result_3d():
    fixed_grid, moving_grid = pair_3d()
    return make_result(fixed_grid, moving_grid, affine_3d(fixed_grid, moving_grid), amplitude_mm=1.5)


@pytest.fixture(scope="module")
def files_3d(result_3d, tmp_path_factory):
    return itk_bridge.save_result(result_3d, tmp_path_factory.mktemp("interop3d"),
                                  formats=("h5", "nii", "elastix"), inverse=True)


@pytest.fixture(scope="module")
def rigid_3d():
    fixed_grid, moving_grid = pair_3d()
    matrix = matrix_about_centres(fixed_grid, moving_grid, rotation([1, -1, 2], 9), (2.0, 1.0, -1.5))
    return make_result(fixed_grid, moving_grid, matrix, 0.0, parametric=True, motion="rigid")


@pytest.fixture(scope="module")
def result_2d():
    fixed_path = DATA_2D / "BrainT1SliceBorder20DirectionPlus30.mhd"
    moving_path = DATA_2D / "BrainProtonDensitySliceShifted13x17yDirectionPlus30.mhd"
    if not (fixed_path.is_file() and moving_path.is_file()):
        pytest.skip("../shared/data/2d-brainweb-t1-pd is not available")
    _, fixed_grid = itk_bridge.image_to_tensor(itk.imread(str(fixed_path)), name="fixed")
    moving_image = itk.imread(str(moving_path))
    moving_image.SetOrigin([7.0, -5.0])
    moving_image.SetSpacing([1.1, 0.9])
    moving_tensor, moving_grid = itk_bridge.image_to_tensor(moving_image, name="moving")
    matrix = matrix_about_centres(fixed_grid, moving_grid, rotation_2d(8) @ np.diag([1.04, 0.97]), (3.0, -2.0))
    result = make_result(fixed_grid, moving_grid, matrix, amplitude_mm=2.0)
    result.moving_image = moving_tensor
    return result


# --------------------------------------------------------------------------- ANTs


def test_ants_applies_nifti_warp_and_mat_like_syn(result_3d, files_3d):
    pytest.importorskip("ants")
    # SyN's order [1Warp, 0GenericAffine]: the warp is applied to the points first
    assert_same_warp(result_3d, ants_warp(result_3d, [files_3d["warp_nii"], files_3d["affine_mat"]]))


def test_ants_reads_the_h5_composite(result_3d, files_3d):
    pytest.importorskip("ants")
    assert_same_warp(result_3d, ants_warp(result_3d, [files_3d["h5"]]))


def test_ants_inverse_warp_pulls_fixed_onto_moving(result_3d, files_3d):
    ants = pytest.importorskip("ants")
    fixed_image = smooth_image(result_3d.fixed_grid)
    out = ants.apply_transforms(to_ants(torch.zeros((1,) + result_3d.moving_grid.shape), result_3d.moving_grid),
                                to_ants(fixed_image, result_3d.fixed_grid), [str(files_3d["inverse_warp_nii"])],
                                interpolator="linear").numpy()
    expected, inside = inverse_reference(result_3d, fixed_image)
    assert inside.mean() > 0.3
    error = np.abs(out - expected)[inside].max() / float(fixed_image.abs().max())
    assert error < 1e-4, f"max relative difference {error:.3g}"


def test_ants_rigid_mat_forward_and_inverted(rigid_3d, tmp_path):
    pytest.importorskip("ants")
    files = itk_bridge.save_result(rigid_3d, tmp_path, formats=("nii",))
    assert set(files) == {"affine_mat"}
    assert_same_warp(rigid_3d, ants_warp(rigid_3d, [files["affine_mat"]]))
    # whichtoinvert gives the moving -> fixed direction: equal to our exact inverse
    ants = pytest.importorskip("ants")
    fixed_image = smooth_image(rigid_3d.fixed_grid)
    out = ants.apply_transforms(to_ants(torch.zeros((1,) + rigid_3d.moving_grid.shape), rigid_3d.moving_grid),
                                to_ants(fixed_image, rigid_3d.fixed_grid), [str(files["affine_mat"])],
                                whichtoinvert=[True], interpolator="linear").numpy()
    expected, inside = inverse_reference(rigid_3d, fixed_image)
    assert inside.mean() > 0.3
    assert np.abs(out - expected)[inside].max() / float(fixed_image.abs().max()) < 1e-4


# --------------------------------------------------------------------------- elastix


def test_transformix_deformation_field_then_affine(result_3d, files_3d):
    assert files_3d["elastix_initial"].name == "TransformParameters.0.txt"
    text = files_3d["elastix_initial"].read_text()
    assert '(Transform "DeformationFieldTransform")' in text and str(files_3d["warp_nii"].resolve()) in text
    assert_same_warp(result_3d, transformix_warp(result_3d, [files_3d["elastix_initial"], files_3d["elastix"]]))
    # the last file alone names the first as its initial transform (as `transformix -tp` reads it)
    assert_same_warp(result_3d, transformix_warp(result_3d, [files_3d["elastix"]]))


# --------------------------------------------------------------------------- 2D, 30 degree direction cosine


def test_2d_ants_and_transformix(result_2d, tmp_path):
    files = itk_bridge.save_result(result_2d, tmp_path, formats=("nii", "elastix"), inverse=False)
    nib = pytest.importorskip("nibabel")
    assert nib.load(str(files["warp_nii"])).shape == result_2d.fixed_grid.shape + (1, 1, 2)
    assert_same_warp(result_2d, transformix_warp(result_2d, [files["elastix"]]))
    pytest.importorskip("ants")
    assert_same_warp(result_2d, ants_warp(result_2d, [files["warp_nii"], files["affine_mat"]]))
