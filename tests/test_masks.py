"""Masks (ANTs' -x, elastix's -fMask) through every door: a pair whose region outside the masks moves the
other way registers by what is inside."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged

from monai_inr_reg import register
from monai_inr_reg.cli import main
from monai_inr_reg.config import load_preset
from monai_inr_reg.transforms import InrRegistrationd

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (64, 48)
INSIDE_SHIFT = 3.0    # voxels along axis 0, the left blob (inside the masks)
INSIDE_CENTRE = (14, 20)  # the left blob's centre in the fixed image (voxels)
OUTSIDE_SHIFT = -4.0  # the right blob (outside), larger and brighter: it wins without masks
OPTIONS = {"iterations_scale": 0.5}
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def blob(center, width, weight):
    x, y = np.meshgrid(np.arange(SHAPE[0], dtype=np.float64), np.arange(SHAPE[1], dtype=np.float64), indexing="ij")
    return weight * np.exp(-((x - center[0]) ** 2 + (y - center[1]) ** 2 / 1.6) / (2 * width ** 2))


def make_pair():
    fixed = blob(INSIDE_CENTRE, 3.5, 0.6) + blob((48, 26), 5.0, 1.0)
    moving = blob((INSIDE_CENTRE[0] + INSIDE_SHIFT, INSIDE_CENTRE[1]), 3.5, 0.6) + blob((48 + OUTSIDE_SHIFT, 26), 5.0, 1.0)
    mask = np.zeros(SHAPE, np.uint8)
    mask[:30] = 1
    return fixed.astype(np.float32), moving.astype(np.float32), mask


def shift_of(ddf) -> float:
    """The displacement along axis 0 (voxels) at the inside blob's centre: where the masks say to look (a
    mean over the image would mix in the rotation, which one round blob hardly fixes)."""
    field = torch.as_tensor(np.asarray(ddf), dtype=torch.float64)
    if field.ndim == 4:
        field = field[..., 0]
    return float(field[0][INSIDE_CENTRE])


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("masks")
    fixed, moving, mask = make_pair()
    paths = {}
    for name, array in (("fixed", fixed), ("moving", moving), ("fixed_mask", mask), ("moving_mask", mask)):
        paths[name] = str(root / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(array, AFFINE), paths[name])
    return paths


def test_masks_register_by_what_is_inside():
    fixed, moving, mask = make_pair()
    f, m = torch.from_numpy(fixed)[None], torch.from_numpy(moving)[None]
    without = shift_of(register(f, m, "rigid", **OPTIONS).ddf)
    assert abs(without - INSIDE_SHIFT) > 1.5, f"the pair must need the masks (got {without:.2f} without them)"
    both = shift_of(register(f, m, "rigid", fixed_mask=mask, moving_mask=mask, **OPTIONS).ddf)
    assert abs(both - INSIDE_SHIFT) < 0.5, both
    fixed_only = shift_of(register(f, m, "rigid", fixed_mask=torch.from_numpy(mask)[None], **OPTIONS).ddf)
    assert abs(fixed_only - INSIDE_SHIFT) < 0.5, fixed_only


def test_masks_in_the_image_net_stage_and_deformable_presets():
    fixed, moving, mask = make_pair()
    f, m = torch.from_numpy(fixed)[None], torch.from_numpy(moving)[None]
    pose = load_preset("multimodal-deformable")["stages"][:2]  # the image-net stage, then the rigid pyramid
    result = register(f, m, "multimodal-deformable", stages=pose, fixed_mask=mask, moving_mask=mask, **OPTIONS)
    assert abs(shift_of(result.ddf) - INSIDE_SHIFT) < 0.5
    deformable = register(f, m, "deformable", fixed_mask=mask, moving_mask=mask, iterations_scale=0.3)
    inside = torch.from_numpy(mask).bool()
    mean_inside = float(deformable.ddf[0][inside & (f[0] > 0.1)].mean())
    assert abs(mean_inside - INSIDE_SHIFT) < 0.75, mean_inside


def test_register_itk_masks(pair_files):
    import itk

    from monai_inr_reg import register_itk

    images = {k: itk.imread(v) for k, v in pair_files.items()}
    transform, _ = register_itk(images["fixed"], images["moving"], "rigid", fixed_mask=images["fixed_mask"],
                                moving_mask=images["moving_mask"], **OPTIONS)
    # at the inside blob; LPS: array axes of a NIfTI with identity RAS affine point to -x, -y
    moved = transform.TransformPoint([-14.0, -20.0])
    assert abs(-(moved[0] + 14.0) - INSIDE_SHIFT) < 0.5 and abs(moved[1] + 20.0) < 0.5, moved


def test_dictionary_transform_mask_keys(pair_files):
    keys = ["fixed", "moving", "fixed_mask", "moving_mask"]
    pipeline = Compose([LoadImaged(keys), EnsureChannelFirstd(keys),
                        InrRegistrationd(["moving"], preset="rigid", fixed_mask_key="fixed_mask",
                                         moving_mask_key="moving_mask", **OPTIONS)])
    out = pipeline(dict(pair_files))
    assert abs(shift_of(out["ddf"]) - INSIDE_SHIFT) < 0.5
    with pytest.raises(KeyError, match="fixed_mask"):
        InrRegistrationd(["moving"], preset="rigid", fixed_mask_key="fixed_mask")(
            {"fixed": torch.rand(1, 8, 8), "moving": torch.rand(1, 8, 8)})


def test_cli_and_bundle_masks(pair_files, tmp_path):
    from monai.bundle import run as bundle_run

    code = main(["register", pair_files["fixed"], pair_files["moving"], "--fixed-mask", pair_files["fixed_mask"],
                 "--moving-mask", pair_files["moving_mask"], "-o", str(tmp_path / "cli"), "--id", "pair",
                 "--preset", "rigid", "--set", "iterations_scale=0.5", "--outputs", "warped,ddf"])
    assert code == 0
    load = LoadImage(image_only=True, ensure_channel_first=True)
    assert abs(shift_of(load(str(tmp_path / "cli" / "pair" / "ddf.nii.gz"))) - INSIDE_SHIFT) < 0.5
    (tmp_path / "list.json").write_text(json.dumps({"pairs": [dict(pair_files, id="pair")]}))
    bundle_run(config_file=str(ROOT / "bundle" / "configs" / "inference.yaml"), dataset_dir=str(tmp_path),
               datalist=str(tmp_path / "list.json"), output_dir=str(tmp_path / "bundle"), preset="rigid",
               device="cpu", write_itk=False, overrides={"iterations_scale": 0.5}, outputs="warped,ddf")
    assert abs(shift_of(load(str(tmp_path / "bundle" / "pair" / "ddf.nii.gz"))) - INSIDE_SHIFT) < 0.5


def test_bad_masks_are_named(pair_files, tmp_path, capsys):
    fixed, moving, mask = make_pair()
    f, m = torch.from_numpy(fixed)[None], torch.from_numpy(moving)[None]
    with pytest.raises(ValueError, match="'fixed_mask' must be on the grid of 'fixed'.*spatial shape"):
        register(f, m, "rigid", fixed_mask=np.ones((10, 10)))
    with pytest.raises(ValueError, match="'moving_mask' is 3D but 'moving' is 2D"):
        register(f, m, "rigid", moving_mask=np.ones((1,) + SHAPE + (4,)))
    with pytest.raises(ValueError, match="'fixed_mask' must be a one-channel 3D mask"):
        volume = torch.rand(1, 12, 10, 8)
        register(volume, volume, "rigid", fixed_mask=np.ones((12, 10)))
    shifted = MetaTensor(torch.from_numpy(mask)[None], affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0])))
    shifted.affine[0, 3] = 5.0
    with pytest.raises(ValueError, match="'fixed_mask' must be on the grid of 'fixed'.*differs by up to 5"):
        register(MetaTensor(f), m, "rigid", fixed_mask=shifted)
    with pytest.raises(ValueError, match="'moving_mask' has no voxel inside"):
        register(f, m, "rigid", moving_mask=np.zeros(SHAPE))
    with pytest.raises(FileNotFoundError, match="'fixed_mask' file"):
        register(f, m, "rigid", fixed_mask=str(tmp_path / "absent.nii.gz"))
    # the command line names the mask and writes no registration output
    out = tmp_path / "out"
    small = tmp_path / "small_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10), np.uint8), AFFINE), str(small))
    code = main(["register", pair_files["fixed"], pair_files["moving"], "--fixed-mask", str(small), "-o", str(out),
                 "--preset", "rigid"])
    assert code != 0
    assert "'fixed_mask' must be on the grid of 'fixed'" in capsys.readouterr().err
    assert not any(out.rglob("*.nii.gz"))


def test_masks_in_a_mind_stage():
    """A MIND-SSC stage (``objective: mind``) keeps the features of the fixed voxels inside the fixed
    mask, in the order of the kept values, computed on the whole image (not on the masked one)."""
    from monai_inr_reg.config import load_preset
    from monai_inr_reg.core.grid import ImageGrid
    from monai_inr_reg.core.losses import mind_ssc
    from monai_inr_reg.pair import normalise_intensity, prepare_pair

    fixed, moving, mask = make_pair()
    grid = ImageGrid.from_ras_affine(SHAPE, torch.eye(3, dtype=torch.float64))
    config = load_preset("rigid")
    f, m = torch.from_numpy(fixed)[None], torch.from_numpy(moving)[None]
    pair = prepare_pair(f, grid, m, grid, config, "cpu", fixed_mask=torch.from_numpy(mask))
    features, moving_features = pair.mind_features(0.0)
    norm = config["normalise"]
    whole = mind_ssc(normalise_intensity(f, norm["low_percentile"], norm["high_percentile"]))
    inside = torch.from_numpy(mask).bool()
    assert features.shape == (int(inside.sum()), 4) and moving_features.shape == (4,) + SHAPE
    assert torch.equal(features, whole[:, inside].T)
    assert pair.mind_features(0.0)[0] is features  # computed once per level
