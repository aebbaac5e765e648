"""InrRegistration (array) and InrRegistrationd (dictionary): conversion, packing, meta, keys, errors.

The optimiser is replaced by an exact stub (a known translation in mm), so every output has an
exact expected value; the Compose test (test_compose.py) runs the real optimiser.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.meta_obj import set_track_meta

from monai_inr_reg.core.grid import ddf_voxel_from_ddf_mm
from monai_inr_reg.result import RegistrationResult
from monai_inr_reg.transforms import InrRegistration, InrRegistrationD, InrRegistrationd

register_module = importlib.import_module("monai_inr_reg.register")  # the package attribute is the function
SHIFT_MM = {2: (3.0, -1.5), 3: (3.0, -1.5, 0.75)}  # LPS, fixed point -> moving point


@pytest.fixture
def stub(monkeypatch):
    """Replace the optimiser by an exact translation; record what it was given."""
    calls = []

    def fake_register(fixed, moving, preset="deformable", *, fixed_mask=None, moving_mask=None, initial_transform=None,
                      seed=0, device=None, progress=None, **overrides):
        fixed_image, fixed_grid = register_module.as_image_and_grid(fixed, "fixed")
        moving_image, moving_grid = register_module.as_image_and_grid(moving, "moving")
        ndim = fixed_grid.ndim
        calls.append({"fixed": fixed, "moving": moving, "preset": preset, "seed": seed, "overrides": overrides})
        matrix = torch.eye(ndim + 1, dtype=torch.float64)
        matrix[:ndim, ndim] = torch.tensor(SHIFT_MM[ndim], dtype=torch.float64)
        ddf_mm = torch.tensor(SHIFT_MM[ndim], dtype=torch.float32).reshape((ndim,) + (1,) * ndim).expand(
            (ndim,) + fixed_grid.shape)
        return RegistrationResult(fixed_grid, moving_grid, ddf_voxel_from_ddf_mm(ddf_mm, fixed_grid.mm_from_voxel),
                                  matrix, True, "rigid", moving_image, seconds=0.5, loss_history=[1.0, 0.25],
                                  config={"preset": preset})

    monkeypatch.setattr(register_module, "register", fake_register)
    return calls


def affine4(ndim, spacing, origin):
    """A MONAI-style 4x4 RAS affine (LoadImage keeps 4x4 also for 2D images)."""
    a = torch.eye(4, dtype=torch.float64)
    for i in range(ndim):
        a[i, i], a[i, 3] = spacing[i], origin[i]
    return a


def make_images(ndim):
    g = torch.Generator().manual_seed(ndim)
    fixed_shape, moving_shape = (12, 10, 8)[:ndim], (14, 12, 9)[:ndim]
    fixed = MetaTensor(torch.rand((1,) + fixed_shape, generator=g),
                       affine=affine4(ndim, [1.5, 1.5, 2.0], [-8.0, -7.0, -6.0]), meta={"filename_or_obj": "fixed.nii.gz"})
    moving = MetaTensor(torch.rand((1,) + moving_shape, generator=g),
                        affine=affine4(ndim, [1.2, 1.3, 1.8], [-9.0, -6.0, -7.0]),
                        meta={"filename_or_obj": "moving.nii.gz"})
    moving.applied_operations = [{"class": "EarlierTransform", "id": 0}]
    label = MetaTensor(torch.randint(0, 4, (1,) + moving_shape, generator=g, dtype=torch.int16),
                       affine=moving.affine.clone(), meta={"filename_or_obj": "moving_label.nii.gz"})
    return fixed, moving, label


@pytest.mark.parametrize("ndim", [2, 3])
def test_outputs_are_exact_and_on_the_fixed_grid(stub, ndim):
    fixed, moving, label = make_images(ndim)
    warped, ddf, warped_label = InrRegistration("rigid", iterations_scale=0.5)(fixed, moving, label)
    call = stub[0]
    # the images reach register() as given (it reduces MONAI's 4x4 affine of a 2D image itself)
    assert call["fixed"] is fixed and call["moving"] is moving and call["overrides"] == {"iterations_scale": 0.5}
    result = register_module.register(call["fixed"], call["moving"])
    assert torch.equal(warped.as_tensor(), result.warp(moving.as_tensor()).as_tensor())
    assert torch.equal(ddf.as_tensor(), result.ddf)
    assert torch.equal(warped_label.as_tensor(), result.warp(label.as_tensor(), mode="nearest").as_tensor())
    for out in (warped, ddf, warped_label):
        assert isinstance(out, MetaTensor)
        assert torch.equal(out.affine, fixed.affine)  # the fixed image's own (4x4) affine
        assert tuple(out.shape[1:]) == tuple(fixed.shape[1:])
    assert ddf.shape[0] == ndim
    # warped images keep their source's file name (SaveImaged names by it), the field the fixed one's
    assert warped.meta["filename_or_obj"] == "moving.nii.gz"
    assert warped_label.meta["filename_or_obj"] == "moving_label.nii.gz"
    assert ddf.meta["filename_or_obj"] == "fixed.nii.gz"
    ops = warped.applied_operations
    assert [op["class"] for op in ops] == ["EarlierTransform", "InrRegistration"]
    info = ops[-1]["extra_info"]
    assert info["preset"] == "rigid" and info["mode"] == "bilinear" and info["final_loss"] == 0.25
    assert np.allclose(info["matrix_mm"][:ndim, ndim], SHIFT_MM[ndim])
    assert list(ops[-1]["orig_size"]) == list(moving.shape[1:])


def test_nearest_keeps_label_values_and_dtype(stub):
    fixed, moving, label = make_images(2)
    _, _, warped_label = InrRegistration("rigid")(fixed, moving, label)
    assert warped_label.dtype == torch.int16
    assert set(torch.unique(warped_label).tolist()) <= set(torch.unique(label).tolist())


def test_label_mode_per_image_and_at_call_time(stub):
    fixed, moving, label = make_images(2)
    reg = InrRegistration("rigid", label_mode=("nearest", "bilinear"))
    _, _, as_label, as_image = reg(fixed, moving, label, moving)
    assert as_label.applied_operations[-1]["extra_info"]["mode"] == "nearest"
    assert as_image.applied_operations[-1]["extra_info"]["mode"] == "bilinear"
    _, _, again = reg(fixed, moving, moving, label_mode="bilinear")
    assert torch.equal(again.as_tensor(), as_image.as_tensor())


def test_plain_tensors_get_identity_affines(stub):
    fixed, moving, _ = make_images(2)
    warped, ddf = InrRegistration("rigid")(fixed.as_tensor(), moving.as_tensor())
    assert isinstance(warped, MetaTensor) and torch.equal(warped.affine, torch.eye(4, dtype=torch.float64))
    assert not isinstance(stub[0]["fixed"], MetaTensor)


def test_untracked_meta_returns_plain_tensors(stub):
    fixed, moving, _ = make_images(2)
    set_track_meta(False)
    try:
        warped, ddf = InrRegistration("rigid")(fixed, moving)
    finally:
        set_track_meta(True)
    assert type(warped) is torch.Tensor and type(ddf) is torch.Tensor


def test_bad_arguments_fail_before_any_work(stub):
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        InrRegistration("nope")
    with pytest.raises(ValueError, match="unknown option 'iteration_scale'"):
        InrRegistration("rigid", iteration_scale=0.5)
    with pytest.raises(ValueError, match="InrRegistration: 'mode' must be one of"):
        InrRegistration("rigid", mode="cubic")
    with pytest.raises(ValueError, match="'label_mode' must be one of"):
        InrRegistration("rigid", label_mode=("nearest", "linear"))
    fixed, moving, label = make_images(2)
    with pytest.raises(ValueError, match="extra image 0 must be on the moving grid"):
        InrRegistration("rigid")(fixed, moving, fixed)
    fixed3, _, _ = make_images(3)
    with pytest.raises(ValueError, match="'fixed' is 3D but 'moving' is 2D"):
        InrRegistration("rigid")(fixed3, moving)
    with pytest.raises(ValueError, match="'fixed' must be channel-first"):
        InrRegistration("rigid")(fixed[0, 0], moving)
    assert stub == []  # nothing reached the optimiser


# ------------------------------------------------------------------------------------------ dictionary
def test_dictionary_equals_array(stub):
    fixed, moving, label = make_images(3)
    out = InrRegistrationd(["moving", "label"], fixed_key="fixed", moving_key="moving", ddf_key="field",
                           mode=("bilinear", "nearest"), preset="rigid")({"fixed": fixed, "moving": moving, "label": label})
    warped, ddf, warped_label = InrRegistration("rigid")(fixed, moving, label)
    assert torch.equal(out["moving"].as_tensor(), warped.as_tensor())
    assert torch.equal(out["label"].as_tensor(), warped_label.as_tensor())
    assert torch.equal(out["field"].as_tensor(), ddf.as_tensor())
    assert out["fixed"] is fixed
    assert out["label"].applied_operations[-1]["extra_info"]["mode"] == "nearest"


def test_warped_key_keeps_the_original_moving_image(stub):
    fixed, moving, label = make_images(2)
    out = InrRegistrationD(["label"], warped_key="warped", mode="nearest", preset="rigid")(
        {"fixed": fixed, "moving": moving, "label": label})
    assert out["moving"] is moving
    assert out["warped"].shape[1:] == fixed.shape[1:] and "ddf" in out


def test_missing_keys(stub):
    fixed, moving, label = make_images(2)
    reg = InrRegistrationd(["moving", "moving_label"], mode=("bilinear", "nearest"), preset="rigid")
    with pytest.raises(KeyError, match="Key `moving_label` of transform `InrRegistrationd` was missing"):
        reg({"fixed": fixed, "moving": moving})
    with pytest.raises(KeyError, match="Key `fixed` of transform `InrRegistrationd` was missing"):
        reg({"moving": moving, "moving_label": label})
    assert stub == []
    lenient = InrRegistrationd(["moving", "moving_label"], mode=("bilinear", "nearest"), preset="rigid",
                               allow_missing_keys=True)
    out = lenient({"fixed": fixed, "moving": moving})
    assert "moving_label" not in out and out["moving"].shape[1:] == fixed.shape[1:]
    data = {"moving": moving}
    assert lenient(data) == data and len(stub) == 1


def test_dictionary_bad_mode():
    with pytest.raises(ValueError, match="InrRegistrationd: 'mode' must be one of"):
        InrRegistrationd(["moving"], mode="spline", preset="rigid")
