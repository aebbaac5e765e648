"""ITK interface: conversions, transforms and files, checked against ITK itself on exact analytic fields.

The results are built directly from known motions (no registration), so every comparison has an
exact answer: ITK resampling through the exported transform must reproduce ``result.warped``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

itk = pytest.importorskip("itk")

from monai_inr_reg import itk_bridge  # noqa: E402
from monai_inr_reg import register_itk  # noqa: E402
from monai_inr_reg.core.grid import ImageGrid, apply_affine, ddf_voxel_from_ddf_mm  # noqa: E402
from monai_inr_reg.itk_bridge.transforms import _residual_ddf_mm  # noqa: E402
from monai_inr_reg.result import RegistrationResult  # noqa: E402

pytestmark = [pytest.mark.itk, pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")]

DATA_2D = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "2d-brainweb-t1-pd"


# --------------------------------------------------------------------------- helpers (shared with test_itk_interop)


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation about ``axis`` by ``degrees`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def rotation_2d(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def make_grid(shape, spacing, origin, direction) -> ImageGrid:
    d = len(shape)
    m = np.eye(d + 1)
    m[:d, :d] = np.asarray(direction) * np.asarray(spacing)[None, :]
    m[:d, d] = origin
    return ImageGrid(tuple(shape), torch.from_numpy(m))


def smooth_image(grid: ImageGrid) -> torch.Tensor:
    """A smooth test pattern evaluated at the grid's LPS points: ``(1, *S)`` float32."""
    p = grid.mm_points(dtype=torch.float64)
    value = 100.0 + 40.0 * torch.sin(0.31 * p[:, 0]) * torch.cos(0.23 * p[:, 1])
    value = value + 25.0 * torch.cos(0.17 * p[:, -1] + 0.4 * p[:, 0].sign())
    value = value + 30.0 * torch.exp(-((p - grid.center_mm()) ** 2).sum(1) / 60.0)
    return value.reshape((1,) + grid.shape).to(torch.float32)


def make_result(fixed_grid, moving_grid, matrix, amplitude_mm, *, parametric=False, motion="deformable"):
    """A RegistrationResult with ``phi(x) = matrix @ x + r(x)``, ``r`` a smooth sinusoid of ``amplitude_mm``."""
    d = fixed_grid.ndim
    x = fixed_grid.mm_points(dtype=torch.float64)
    c = fixed_grid.center_mm()
    r = torch.stack([amplitude_mm * torch.sin(2 * math.pi * (x[:, (i + 1) % d] - c[(i + 1) % d]) / 30.0 + i)
                     for i in range(d)], dim=1)
    phi = apply_affine(torch.as_tensor(matrix, dtype=torch.float64), x) + r
    ddf_mm = (phi - x).T.reshape((d,) + fixed_grid.shape)
    ddf = ddf_voxel_from_ddf_mm(ddf_mm, fixed_grid.mm_from_voxel).to(torch.float32)
    return RegistrationResult(fixed_grid=fixed_grid, moving_grid=moving_grid, ddf=ddf,
                              matrix_mm=torch.as_tensor(matrix, dtype=torch.float64), parametric=parametric,
                              motion=motion, moving_image=smooth_image(moving_grid))


def matrix_about_centres(fixed_grid, moving_grid, linear, shift) -> torch.Tensor:
    """``x -> c_moving + linear (x - c_fixed) + shift`` as a homogeneous LPS mm matrix."""
    d = fixed_grid.ndim
    m = torch.eye(d + 1, dtype=torch.float64)
    m[:d, :d] = torch.as_tensor(linear, dtype=torch.float64)
    m[:d, d] = moving_grid.center_mm() + torch.as_tensor(shift, dtype=torch.float64) - m[:d, :d] @ fixed_grid.center_mm()
    return m


def inside_moving(result, margin: float = 1e-3) -> torch.Tensor:
    """``(*S_fixed)`` bool: the fixed voxels whose moving point lies inside the moving voxel-centre box."""
    voxel = result.moving_grid.mm_to_voxel(result.mapped_points_mm())
    size = torch.tensor(result.moving_grid.shape, dtype=torch.float64)
    return ((voxel >= margin) & (voxel <= size - 1 - margin)).all(1).reshape(result.fixed_grid.shape)


def interior(grid: ImageGrid, layers: int) -> torch.Tensor:
    """``(prod(S),)`` bool, C order: voxels at least ``layers`` voxels from the grid's border."""
    voxel = grid.voxel_points(dtype=torch.float64)
    return (torch.minimum(voxel, torch.tensor(grid.shape) - 1 - voxel) >= layers).all(1)


def assert_same_warp(result, warped_xyz: np.ndarray, *, rtol: float = 1e-4, min_inside: float = 0.5):
    """``warped_xyz`` (array order (x, y, z)) equals ``result.warped`` to ``rtol`` of the image range inside."""
    mask = inside_moving(result).numpy()
    assert mask.mean() > min_inside, f"only {mask.mean():.2f} of the fixed voxels map inside the moving image"
    expected = result.warped.as_tensor()[0].numpy()
    scale = float(result.moving_image.abs().max())
    error = np.abs(np.asarray(warped_xyz, dtype=np.float64) - expected)[mask].max() / scale
    assert error < rtol, f"max relative difference {error:.3g} over {mask.sum()} voxels"


def resample_itk(result, transform) -> np.ndarray:
    """Resample the moving image through ``transform`` onto the fixed grid with ITK; (x, y, z) order."""
    fixed = itk_bridge.tensor_to_image(torch.zeros((1,) + result.fixed_grid.shape), result.fixed_grid)
    moving = itk_bridge.tensor_to_image(result.moving_image, result.moving_grid)
    out = itk.resample_image_filter(moving, transform=transform, use_reference_image=True, reference_image=fixed)
    return itk.array_from_image(out).transpose()


def pair_3d():
    fixed_grid = make_grid((24, 20, 16), (1.2, 0.9, 1.5), (-14.0, 8.0, 21.0), rotation([1, 2, 3], 25))
    moving_grid = make_grid((30, 28, 24), (1.0, 1.1, 1.3), (0.0, 0.0, 0.0), rotation([-1, 1, 2], -15))
    # put the moving centre near the fixed centre (different grids, overlapping extents)
    m = moving_grid.mm_from_voxel.clone()
    m[:3, 3] += fixed_grid.center_mm() - moving_grid.center_mm() + torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)
    return fixed_grid, ImageGrid(moving_grid.shape, m)


def affine_3d(fixed_grid, moving_grid):
    linear = rotation([0, 1, 1], 6) @ np.array([[1.05, 0.03, 0.0], [0.0, 0.96, 0.02], [0.01, 0.0, 1.02]])
    return matrix_about_centres(fixed_grid, moving_grid, linear, (1.0, -0.5, 0.8))


# --------------------------------------------------------------------------- fixtures (module scope: ITK types are slow to load)


@pytest.fixture(scope="module")
def result_3d():
    fixed_grid, moving_grid = pair_3d()
    return make_result(fixed_grid, moving_grid, affine_3d(fixed_grid, moving_grid), amplitude_mm=1.5)


@pytest.fixture(scope="module")
def saved_3d(result_3d, tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved3d")
    return itk_bridge.save_result(result_3d, directory, formats=("h5", "tfm", "nii"), inverse=True)


@pytest.fixture(scope="module")
def rigid_3d():
    fixed_grid, moving_grid = pair_3d()
    matrix = matrix_about_centres(fixed_grid, moving_grid, rotation([1, -1, 2], 9), (2.0, 1.0, -1.5))
    return make_result(fixed_grid, moving_grid, matrix, amplitude_mm=0.0, parametric=True, motion="rigid")


# --------------------------------------------------------------------------- images


def test_image_round_trip_keeps_geometry_and_axis_order(result_3d):
    grid = result_3d.moving_grid
    tensor = result_3d.moving_image
    image = itk_bridge.tensor_to_image(tensor, grid)
    # ITK's array view is (z, y, x): the tensor is its transpose
    assert np.array_equal(itk.array_view_from_image(image).transpose(), tensor[0].numpy())
    back, back_grid = itk_bridge.image_to_tensor(image)
    assert back.dtype == torch.float32 and back.shape == tensor.shape
    assert torch.equal(back, tensor)
    assert back_grid.shape == grid.shape
    assert torch.allclose(back_grid.mm_from_voxel, grid.mm_from_voxel, atol=1e-12, rtol=0)
    # ITK's own index -> physical point agrees with the grid
    for index in ([0, 0, 0], [29, 3, 17], [5, 27, 23]):
        itk_point = np.array(image.TransformIndexToPhysicalPoint(index))
        ours = grid.voxel_to_mm(torch.tensor([index], dtype=torch.float64))[0].numpy()
        assert np.abs(itk_point - ours).max() < 1e-9


def test_image_to_tensor_reads_integer_pixels_2d():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)  # (y, x)
    image = itk.image_from_array(array)
    image.SetSpacing([0.5, 2.0])
    tensor, grid = itk_bridge.image_to_tensor(image)
    assert tensor.shape == (1, 4, 3) and tensor.dtype == torch.float32
    assert tensor[0, 3, 1] == array[1, 3]
    assert torch.allclose(grid.spacing, torch.tensor([0.5, 2.0], dtype=torch.float64))


def test_image_to_tensor_keeps_components_as_channels():
    rgb_array = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)  # (y, x, RGB)
    rgb = itk.image_from_array(rgb_array, is_vector=True)
    tensor, grid = itk_bridge.image_to_tensor(rgb, name="moving")
    assert tuple(tensor.shape) == (3, 5, 4) and grid.shape == (5, 4)
    assert tensor[2, 3, 1] == rgb_array[1, 3, 2]
    volume = itk.image_from_array(np.zeros((3, 4, 5, 2), np.float32), is_vector=True)
    assert tuple(itk_bridge.image_to_tensor(volume)[0].shape) == (2, 5, 4, 3)


def test_image_to_tensor_rejects_bad_input():
    nan = np.zeros((4, 5), np.float32)
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="'fixed' has 1 NaN voxels"):
        itk_bridge.image_to_tensor(itk.image_from_array(nan), name="fixed")
    singular = itk.image_from_array(np.zeros((4, 5), np.float32))
    singular.SetDirection(itk.matrix_from_array(np.array([[1.0, 1.0], [1.0, 1.0 + 1e-9]])))  # ITK accepts det 1e-9
    with pytest.raises(ValueError, match="'moving' has a singular direction matrix"):
        itk_bridge.image_to_tensor(singular, name="moving")
    with pytest.raises(ValueError, match="'image' must be a 2D or 3D image, got 4D"):
        itk_bridge.image_to_tensor(itk.image_from_array(np.zeros((2, 3, 4, 5), np.float32)))
    with pytest.raises(TypeError, match="'image' must be an itk.Image, got ndarray"):
        itk_bridge.image_to_tensor(np.zeros((4, 5)))
    grid = ImageGrid((4, 5), torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"tensor_to_image\(\): 'tensor' must have shape \(1, 4, 5\)"):
        itk_bridge.tensor_to_image(torch.zeros(2, 4, 5), grid)


# --------------------------------------------------------------------------- the one field conversion


def test_field_image_round_trip_and_frame(result_3d):
    grid = result_3d.fixed_grid
    field = itk_bridge.field_image_from_ddf(result_3d.ddf, grid)
    assert type(field) is itk.Image[itk.Vector[itk.D, 3], 3]
    # the field holds LPS mm displacements: at a voxel, equal to result.ddf_mm there
    index = (7, 11, 5)
    pixel = np.array(field.GetPixel(list(index)))
    assert np.abs(pixel - result_3d.ddf_mm[(slice(None),) + index].numpy()).max() < 1e-5
    ddf_voxel, back_grid = itk_bridge.ddf_from_field_image(field)
    assert torch.allclose(ddf_voxel, result_3d.ddf.double(), atol=1e-9, rtol=0)
    assert torch.allclose(back_grid.mm_from_voxel, grid.mm_from_voxel, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- transforms


def test_transform_is_composite_affine_then_field_and_maps_points(result_3d):
    transform = result_3d.to_itk()
    assert transform.GetNameOfClass() == "CompositeTransform"
    assert transform.GetNumberOfTransforms() == 2
    assert transform.GetNthTransform(0).GetNameOfClass() == "AffineTransform"
    assert transform.GetNthTransform(1).GetNameOfClass() == "DisplacementFieldTransform"
    fixed_mm = result_3d.fixed_grid.mm_points(dtype=torch.float64)
    mapped = result_3d.mapped_points_mm()
    picks = torch.randperm(fixed_mm.shape[0], generator=torch.Generator().manual_seed(0))[:60]
    got = np.array([transform.TransformPoint(fixed_mm[i].tolist()) for i in picks.tolist()])
    assert np.abs(got - mapped[picks].numpy()).max() < 1e-5  # mm; ddf is float32


def test_field_only_result_gives_displacement_field_transform():
    fixed_grid, moving_grid = pair_3d()
    result = make_result(fixed_grid, fixed_grid, torch.eye(4, dtype=torch.float64), amplitude_mm=1.0)
    transform = itk_bridge.transform_from_result(result)
    assert transform.GetNameOfClass() == "DisplacementFieldTransform"
    field = transform.GetDisplacementField()
    assert np.allclose(np.array(field.GetOrigin()), fixed_grid.mm_from_voxel[:3, 3].numpy())
    assert np.allclose(np.array(field.GetSpacing()), fixed_grid.spacing.numpy())
    p = fixed_grid.voxel_to_mm(torch.tensor([[3.0, 4.0, 5.0]], dtype=torch.float64))[0]
    expected = p + result.ddf_mm[:, 3, 4, 5].double()
    assert np.abs(np.array(transform.TransformPoint(p.tolist())) - expected.numpy()).max() < 1e-5
    assert_same_warp(result, resample_itk(result, transform), min_inside=0.7)


def test_parametric_rigid_is_euler_and_affine_is_affine(rigid_3d):
    transform = rigid_3d.to_itk()
    assert transform.GetNameOfClass() == "Euler3DTransform"
    matrix = rigid_3d.matrix_mm
    assert np.abs(itk.array_from_matrix(transform.GetMatrix()) - matrix[:3, :3].numpy()).max() < 1e-12
    assert np.abs(np.array(transform.GetOffset()) - matrix[:3, 3].numpy()).max() < 1e-9
    assert np.allclose(np.array(transform.GetCenter()), rigid_3d.fixed_grid.center_mm().numpy())
    assert_same_warp(rigid_3d, resample_itk(rigid_3d, transform))
    fixed_grid, moving_grid = pair_3d()
    affine = make_result(fixed_grid, moving_grid, affine_3d(fixed_grid, moving_grid), 0.0, parametric=True,
                         motion="affine")
    transform = affine.to_itk()
    assert transform.GetNameOfClass() == "AffineTransform"
    assert_same_warp(affine, resample_itk(affine, transform))


def test_resampling_through_transform_equals_warped(result_3d):
    assert_same_warp(result_3d, resample_itk(result_3d, result_3d.to_itk()))


# --------------------------------------------------------------------------- files


def test_save_writes_expected_files_atomically(saved_3d):
    assert set(saved_3d) == {"h5", "tfm", "affine_mat", "warp_nii", "inverse_h5", "inverse_tfm", "inverse_warp_nii"}
    directory = saved_3d["h5"].parent
    assert all(p.is_file() and p.parent == directory for p in saved_3d.values())
    assert not [p for p in directory.iterdir() if p.name.startswith(".partial")]


@pytest.mark.parametrize("key", ["h5", "tfm"])
def test_transform_file_round_trip_resamples_like_warped(result_3d, saved_3d, key):
    transform = itk.transformread(str(saved_3d[key]))[0]
    assert transform.GetNameOfClass() == "CompositeTransform"
    assert_same_warp(result_3d, resample_itk(result_3d, transform))
    same = itk_bridge.read_transform(saved_3d[key])
    p = result_3d.fixed_grid.center_mm().tolist()
    assert np.allclose(same.TransformPoint(p), result_3d.to_itk().TransformPoint(p), atol=1e-9)


def test_ants_nifti_header(result_3d, saved_3d):
    nib = pytest.importorskip("nibabel")
    image = nib.load(str(saved_3d["warp_nii"]))
    assert image.shape == result_3d.fixed_grid.shape + (1, 3)
    assert int(image.header["intent_code"]) == 1007
    # the header affine is the fixed image's (RAS, as nibabel reads it)
    assert np.abs(image.affine - result_3d.fixed_grid.affine_ras.numpy()).max() < 1e-4
    # the data are the residual field in LPS mm, components (x, y, z), applied before the matrix stage
    residual = _residual_ddf_mm(result_3d).numpy()
    data = np.asarray(image.dataobj)[:, :, :, 0, :]
    assert np.abs(np.moveaxis(data, -1, 0) - residual).max() < 1e-5


def test_inverse_field_maps_points_back(result_3d, saved_3d):
    forward = itk.transformread(str(saved_3d["h5"]))[0]
    inverse = itk.transformread(str(saved_3d["inverse_h5"]))[0]
    assert inverse.GetNameOfClass() == "DisplacementFieldTransform"
    field = inverse.GetDisplacementField()  # lives on the moving grid
    assert np.allclose(np.array(field.GetOrigin()), result_3d.moving_grid.mm_from_voxel[:3, 3].numpy())
    # at the moving voxels whose preimage lies on the fixed grid (where the forward field is defined),
    # the fixed-point iteration solved phi(x) = y to < 1e-3 fixed voxel
    psi = itk_bridge.inverse_ddf_mm(result_3d)
    y = result_3d.moving_grid.mm_points(dtype=torch.float64)
    x = y + psi.reshape(3, -1).T
    voxel_x = result_3d.fixed_grid.mm_to_voxel(x)
    on_grid = ((voxel_x >= 0) & (voxel_x <= torch.tensor(result_3d.fixed_grid.shape) - 1.0)).all(1)
    assert on_grid.float().mean() > 0.3
    picks = torch.nonzero(on_grid)[:, 0][::11]
    mapped = np.array([forward.TransformPoint(p) for p in x[picks].tolist()])
    voxel = float(result_3d.fixed_grid.spacing.min())
    assert np.abs(mapped - y[picks].numpy()).max() / voxel < 2e-3
    # fixed voxels -> moving -> back through the linearly interpolated inverse field: 0.036 voxel
    # measured (the outermost fixed voxel layer, where the field is continued by its border value,
    # reaches 0.10 voxel, so it is left out)
    mask = inside_moving(result_3d, margin=1.0).reshape(-1) & interior(result_3d.fixed_grid, 1)
    fixed_mm = result_3d.fixed_grid.mm_points(dtype=torch.float64)[mask][::5]
    back = np.array([inverse.TransformPoint(forward.TransformPoint(p)) for p in fixed_mm.tolist()])
    error = np.abs(back - fixed_mm.numpy()).max() / voxel
    assert error < 0.05, f"round trip error {error:.3g} voxel"


def test_rigid_save_writes_mat_and_exact_inverse(rigid_3d, tmp_path):
    files = itk_bridge.save_result(rigid_3d, tmp_path, prefix="r_", formats=("h5", "tfm", "nii"), inverse=True)
    assert set(files) == {"h5", "tfm", "affine_mat", "inverse_h5", "inverse_tfm"}
    assert files["h5"].name == "r_transform.h5"
    forward = itk_bridge.read_transform(files["h5"])
    assert forward.GetNameOfClass() == "AffineTransform"  # the .h5 is written without ITK: an exact matrix
    assert itk_bridge.read_transform(files["tfm"]).GetNameOfClass() == "Euler3DTransform"
    inverse = itk_bridge.read_transform(files["inverse_h5"])
    mat = itk_bridge.read_transform(files["affine_mat"])
    p = [3.0, -4.0, 25.0]
    assert np.abs(np.array(inverse.TransformPoint(forward.TransformPoint(p))) - p).max() < 1e-9
    assert np.abs(np.array(mat.TransformPoint(p)) - np.array(forward.TransformPoint(p))).max() < 1e-9


def test_read_transform_rejects_non_transform_files(saved_3d, tmp_path):
    not_transform = tmp_path / "notes.h5"
    not_transform.write_text("hello")
    with pytest.raises(ValueError, match="notes.h5' is not a transform file"):
        itk_bridge.read_transform(not_transform)
    with pytest.raises(ValueError, match="warp.nii.gz' is not a transform file"):
        itk_bridge.read_transform(saved_3d["warp_nii"])
    with pytest.raises(FileNotFoundError, match="'path'"):
        itk_bridge.read_transform(tmp_path / "missing.h5")


def test_save_failure_leaves_no_partial_files(result_3d, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(itk, "imwrite", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        itk_bridge.save_result(result_3d, tmp_path / "out", formats=("h5", "nii"), inverse=False)
    assert list((tmp_path / "out").iterdir()) == []  # the .h5 written first was removed too
    with pytest.raises(ValueError, match="'formats' must be a non-empty selection"):
        itk_bridge.save_result(result_3d, tmp_path, formats=("png",))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="'directory' .* is not a directory"):
        itk_bridge.save_result(result_3d, tmp_path / "file")


def test_register_itk_rejects_mixed_dimensions():
    image_2d = itk.image_from_array(np.zeros((4, 5), np.float32))
    image_3d = itk.image_from_array(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="'fixed' and 'moving' must have the same dimension, got 2D and 3D"):
        register_itk(image_2d, image_3d)


# --------------------------------------------------------------------------- 2D, 30 degree direction cosine


@pytest.fixture(scope="module")
def result_2d():
    path = DATA_2D / "BrainT1SliceBorder20DirectionPlus30.mhd"
    moving_path = DATA_2D / "BrainProtonDensitySliceShifted13x17yDirectionPlus30.mhd"
    if not (path.is_file() and moving_path.is_file()):
        pytest.skip("../shared/data/2d-brainweb-t1-pd is not available")
    fixed_tensor, fixed_grid = itk_bridge.image_to_tensor(itk.imread(str(path)), name="fixed")
    moving_image = itk.imread(str(moving_path))
    moving_image.SetOrigin([7.0, -5.0])  # a different grid from the fixed one
    moving_image.SetSpacing([1.1, 0.9])
    moving_tensor, moving_grid = itk_bridge.image_to_tensor(moving_image, name="moving")
    assert abs(float(fixed_grid.mm_from_voxel[1, 0]) - 0.5) < 1e-6  # the 30 degree cosine
    matrix = matrix_about_centres(fixed_grid, moving_grid, rotation_2d(8) @ np.diag([1.04, 0.97]), (3.0, -2.0))
    result = make_result(fixed_grid, moving_grid, matrix, amplitude_mm=2.0)
    result.moving_image = moving_tensor
    return result


def test_2d_transform_files_and_inverse(result_2d, tmp_path_factory):
    files = itk_bridge.save_result(result_2d, tmp_path_factory.mktemp("saved2d"), formats=("h5", "tfm", "nii"),
                                   inverse=True)
    for key in ("h5", "tfm"):
        transform = itk.transformread(str(files[key]))[0]
        assert transform.GetNthTransform(1).GetNameOfClass() == "DisplacementFieldTransform"
        assert_same_warp(result_2d, resample_itk(result_2d, transform))
    fixed_mm = result_2d.fixed_grid.mm_points(dtype=torch.float64)[::97]
    transform = itk.transformread(str(files["h5"]))[0]
    got = np.array([transform.TransformPoint(p) for p in fixed_mm.tolist()])
    assert np.abs(got - result_2d.mapped_points_mm()[::97].numpy()).max() < 1e-4
    inverse = itk.transformread(str(files["inverse_h5"]))[0]
    mask = inside_moving(result_2d, margin=1.0).reshape(-1) & interior(result_2d.fixed_grid, 1)
    inner = result_2d.fixed_grid.mm_points(dtype=torch.float64)[mask][::53]
    back = np.array([inverse.TransformPoint(transform.TransformPoint(p)) for p in inner.tolist()])
    assert np.abs(back - inner.numpy()).max() < 0.05  # mm = voxel here (1 mm spacing)


# --------------------------------------------------------------------------- end to end (register_itk, the example)


def _load_example():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "itk_register.py"
    spec = importlib.util.spec_from_file_location("itk_register_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_register_itk_recovers_a_known_shift_on_oblique_grids(tmp_path):
    pytest.importorskip("monai_inr_reg.register")
    # tiny 2D pair on different oblique grids; the moving content is shifted by (3, -2) mm (LPS)
    fixed_path, moving_path = _load_example().make_pair(tmp_path, shift_mm=(3.0, -2.0))
    fixed, moving = itk.imread(str(fixed_path), itk.F), itk.imread(str(moving_path), itk.F)
    transform, warped = register_itk(fixed, moving, "rigid", iterations_scale=0.6)
    assert transform.GetNameOfClass() == "Euler2DTransform"
    assert np.abs(itk.array_from_matrix(transform.GetMatrix()) - np.eye(2)).max() < 0.01  # < 0.6 degree
    centre = [25.0, 20.0]
    shift = np.array(transform.TransformPoint(centre)) - centre
    assert np.abs(shift - [3.0, -2.0]).max() < 0.15, f"recovered shift {shift}"  # mm; voxels are 1-1.2 mm
    # warped lives on the fixed grid with the fixed geometry
    assert tuple(warped.GetLargestPossibleRegion().GetSize()) == tuple(fixed.GetLargestPossibleRegion().GetSize())
    assert np.allclose(warped.GetOrigin(), fixed.GetOrigin()) and np.allclose(warped.GetSpacing(), fixed.GetSpacing())
    assert np.allclose(itk.array_from_matrix(warped.GetDirection()), itk.array_from_matrix(fixed.GetDirection()))
    fixed_array, warped_array = itk.array_from_image(fixed), itk.array_from_image(warped)
    before = np.abs(itk.array_from_image(itk.resample_image_filter(
        moving, use_reference_image=True, reference_image=fixed)) - fixed_array).mean()
    assert np.abs(warped_array - fixed_array).mean() < 0.2 * before


def test_example_script_runs(tmp_path):
    pytest.importorskip("monai_inr_reg.register")
    report = _load_example().main(["--out", str(tmp_path), "--iterations-scale", "0.2"])
    assert report["transform_path"].is_file() and (tmp_path / "warped.nii.gz").is_file()
    assert report["inside"].mean() > 0.5
    assert report["itk_difference"] < 1e-4
    if "ants_difference" in report:
        assert report["ants_difference"] < 1e-4
