"""ApplyDdf / ApplyDdfd: applying a saved MONAI DDF later equals the registration's own warp."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from monai_inr_reg.core.grid import ImageGrid
from monai_inr_reg.pipeline import save_nifti
from monai_inr_reg.result import RegistrationResult
from monai_inr_reg.transforms import ApplyDdf, ApplyDdfd


def oblique_ras(ndim: int, spacing, origin, angle_deg: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    rot = torch.eye(ndim, dtype=torch.float64)
    rot[:2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    m = torch.eye(ndim + 1, dtype=torch.float64)
    m[:ndim, :ndim] = rot @ torch.diag(torch.tensor(spacing, dtype=torch.float64))
    m[:ndim, ndim] = torch.tensor(origin, dtype=torch.float64)
    return m


def analytic_result(ndim: int) -> RegistrationResult:
    """A smooth known field between two oblique grids of different size and spacing."""
    fixed_grid = ImageGrid.from_ras_affine((14, 12, 9)[:ndim], oblique_ras(ndim, [1.4, 1.1, 2.0][:ndim], [-9, -6, -8][:ndim], 10))
    moving_grid = ImageGrid.from_ras_affine((16, 13, 10)[:ndim], oblique_ras(ndim, [1.2, 1.3, 1.7][:ndim], [-10, -8, -8][:ndim], -5))
    index = fixed_grid.voxel_points(dtype=torch.float32).T.reshape((ndim,) + fixed_grid.shape)
    ddf = torch.stack([1.5 * torch.sin(index[(d + 1) % ndim] / 3.0) for d in range(ndim)])
    g = torch.Generator().manual_seed(ndim)
    moving = torch.rand((1,) + moving_grid.shape, generator=g)
    return RegistrationResult(fixed_grid, moving_grid, ddf, torch.eye(ndim + 1, dtype=torch.float64), False,
                              "deformable", moving)


def on_grid(tensor, grid: ImageGrid, name: str) -> MetaTensor:
    return MetaTensor(tensor, affine=grid.affine_ras, meta={"filename_or_obj": name})


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_equals_the_registration_warp(ndim, mode):
    result = analytic_result(ndim)
    image = on_grid(result.moving_image, result.moving_grid, "moving.nii.gz")
    ddf = on_grid(result.ddf, result.fixed_grid, "ddf.nii.gz")
    out = ApplyDdf(mode=mode)(image, ddf)
    assert torch.equal(out.as_tensor(), result.warp(result.moving_image, mode=mode).as_tensor())
    assert torch.allclose(out.affine, result.fixed_grid.affine_ras)
    assert out.meta["filename_or_obj"] == "moving.nii.gz"
    assert out.applied_operations[-1]["class"] == "ApplyDdf"


def test_integer_voxel_shift_on_one_grid_is_exact():
    image = torch.arange(1, 1 + 8 * 9, dtype=torch.float32).reshape(1, 8, 9)
    ddf = torch.zeros(2, 8, 9)
    ddf[0], ddf[1] = 2.0, -1.0  # out(p) = image(p + (2, -1))
    out = ApplyDdf(mode="nearest")(MetaTensor(image), MetaTensor(ddf))
    assert torch.equal(out[0, :6, 1:], image[0, 2:, :8])
    assert torch.equal(out[0, 6:], torch.zeros(2, 9)) and torch.equal(out[0, :, 0], torch.zeros(8))


@pytest.mark.parametrize("ndim", [2, 3])
def test_field_saved_as_nifti_reads_back_and_reapplies(tmp_path, ndim):
    result = analytic_result(ndim)
    save_nifti(tmp_path / "ddf.nii.gz", result.ddf, result.fixed_grid.affine_ras)
    save_nifti(tmp_path / "moving.nii.gz", result.moving_image, result.moving_grid.affine_ras)
    load = LoadImage(image_only=True, ensure_channel_first=True)
    ddf, image = load(str(tmp_path / "ddf.nii.gz")), load(str(tmp_path / "moving.nii.gz"))
    if ndim == 2:
        assert tuple(ddf.shape) == (2,) + result.fixed_grid.shape + (1,)  # MONAI's reading of a 2D vector NIfTI
    out = ApplyDdf()(image, ddf)
    assert tuple(out.shape[1:]) == result.fixed_grid.shape
    assert torch.allclose(out.as_tensor(), result.warp(result.moving_image).as_tensor(), atol=1e-5)


def test_reference_supplies_the_fixed_grid():
    result = analytic_result(2)
    image = on_grid(result.moving_image, result.moving_grid, "moving.nii.gz")
    reference = on_grid(torch.zeros((1,) + result.fixed_grid.shape), result.fixed_grid, "fixed.nii.gz")
    out = ApplyDdf()(image, result.ddf, reference)
    assert torch.equal(out.as_tensor(), result.warp(result.moving_image).as_tensor())
    assert torch.allclose(out.affine, reference.affine)


def test_errors_name_the_argument():
    result = analytic_result(2)
    image = on_grid(result.moving_image, result.moving_grid, "moving.nii.gz")
    with pytest.raises(TypeError, match="ApplyDdf: 'ddf' must be a MetaTensor carrying the fixed affine"):
        ApplyDdf()(image, result.ddf)
    with pytest.raises(ValueError, match=r"ApplyDdf: 'ddf' must have shape \(D, \*S_fixed\) with D = 2"):
        ApplyDdf()(image, MetaTensor(torch.zeros(3, 5, 5)))
    with pytest.raises(ValueError, match="ApplyDdf: 'mode' must be one of"):
        ApplyDdf(mode="bicubic")


def test_dictionary_twin_and_missing_keys():
    result = analytic_result(3)
    image = on_grid(result.moving_image, result.moving_grid, "moving.nii.gz")
    label = on_grid((result.moving_image > 0.5).to(torch.uint8), result.moving_grid, "label.nii.gz")
    ddf = on_grid(result.ddf, result.fixed_grid, "ddf.nii.gz")
    out = ApplyDdfd(["image", "label"], mode=("bilinear", "nearest"))({"image": image, "label": label, "ddf": ddf})
    assert torch.equal(out["image"].as_tensor(), ApplyDdf()(image, ddf).as_tensor())
    assert torch.equal(out["label"].as_tensor(), ApplyDdf(mode="nearest")(label, ddf).as_tensor())
    assert out["label"].dtype == torch.uint8
    with pytest.raises(KeyError, match="Key `ddf` of transform `ApplyDdfd` was missing"):
        ApplyDdfd(["image"])({"image": image})
    with pytest.raises(KeyError, match="Key `label` of transform `ApplyDdfd`"):
        ApplyDdfd(["image", "label"])({"image": image, "ddf": ddf})
    lenient = ApplyDdfd(["image", "label"], allow_missing_keys=True)
    assert lenient({"image": image})["image"] is image
    assert "label" not in lenient({"image": image, "ddf": ddf})
