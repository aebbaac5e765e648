"""InrRegistrationd and ApplyDdfd inside a MONAI Compose pipeline, from NIfTI files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ResampleToMatch,
    SaveImaged,
    ScaleIntensityRanged,
    Spacingd,
)

from monai_inr_reg.metrics import label_overlap
from monai_inr_reg.transforms import ApplyDdfd, InrRegistrationd
from transforms.synthetic_pairs import write_pair

PRESET = {2: "deformable", 3: "rigid"}
# iterations that register these tiny pairs reliably: 3D rigid with fewer than the preset's (0.1-0.5) lands
# in a wrong optimum on this 22x18x16 pair
SCALE = {2: 0.1, 3: 1.0}


def pipeline(out_dir: Path, ndim: int) -> Compose:
    # not "moving" next to "moving_label": Spacingd takes keys starting with "<key>_" for meta dicts
    images, labels = ["fixed_image", "moving_image"], ["fixed_label", "moving_label"]
    return Compose([
        LoadImaged(images + labels, image_only=True),
        EnsureChannelFirstd(images + labels),
        Orientationd(images + labels, axcodes="RAS"[:ndim] if ndim == 3 else "RA"),
        # the moving pair goes onto a third grid (1.1 mm): fixed and moving grids differ in size and spacing
        Spacingd(["moving_image", "moving_label"], pixdim=[1.1] * ndim, mode=["bilinear", "nearest"]),
        ScaleIntensityRanged(images, a_min=0.0, a_max=180.0, b_min=0.0, b_max=1.0, clip=True),
        InrRegistrationd(keys=["moving_image", "moving_label"], fixed_key="fixed_image", moving_key="moving_image", ddf_key="ddf",
                         mode=["bilinear", "nearest"], preset=PRESET[ndim], seed=0, progress=False, iterations_scale=SCALE[ndim]),
        SaveImaged(["moving_image", "moving_label", "ddf"], output_dir=str(out_dir), output_postfix="warped",
                   separate_folder=False, resample=False),
    ])


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def registered(request, tmp_path_factory):
    ndim = request.param
    root = tmp_path_factory.mktemp(f"compose{ndim}d")
    written = write_pair(root / "data", ndim)
    paths = {"fixed_image": written["fixed"], "moving_image": written["moving"], "fixed_label": written["fixed_label"],
             "moving_label": written["moving_label"]}
    loaded = Compose([LoadImaged(list(paths), image_only=True), EnsureChannelFirstd(list(paths))])(dict(paths))
    out = pipeline(root / "out", ndim)(dict(paths))
    return ndim, paths, loaded, out, root / "out"


def test_outputs_live_on_the_fixed_grid(registered):
    ndim, _, loaded, out, _ = registered
    fixed = out["fixed_image"]
    for key in ("moving_image", "moving_label", "ddf"):
        assert isinstance(out[key], MetaTensor)
        assert tuple(out[key].shape[1:]) == tuple(fixed.shape[1:]), key
        assert torch.allclose(out[key].affine, fixed.affine, atol=1e-6), key
        assert torch.allclose(out[key].affine, loaded["fixed_image"].affine, atol=1e-6), key
    assert out["ddf"].shape[0] == ndim
    op = out["moving_image"].applied_operations[-1]
    assert op["class"] == "InrRegistration" and op["extra_info"]["preset"] == PRESET[ndim]
    # the history before registration (Orientation, Spacing of the moving image) is kept
    assert [o["class"] for o in out["moving_image"].applied_operations][:2] == ["Orientation", "SpatialResample"]  # Spacing records itself so


def test_nearest_labels_keep_their_values(registered):
    _, _, _, out, _ = registered
    values = set(np.unique(out["moving_label"].numpy()).tolist())
    assert values <= {0.0, 1.0, 2.0} and {1.0, 2.0} <= values


def test_dice_improves_over_no_registration(registered):
    ndim, _, loaded, out, _ = registered
    fixed_label = loaded["fixed_label"]
    # no registration: the moving label resampled onto the fixed grid through the two affines (MONAI's own code)
    before = ResampleToMatch(mode="nearest")(loaded["moving_label"], fixed_label)
    spacing = [1.5] * ndim
    dice_before = label_overlap(fixed_label.numpy(), before.numpy(), spacing, hd95=False)["dice"]
    dice_after = label_overlap(fixed_label.numpy(), out["moving_label"].numpy(), spacing, hd95=False)["dice"]
    assert dice_before < 0.75
    assert dice_after > dice_before + 0.15
    assert dice_after > 0.85


def test_saved_files_carry_the_fixed_affine_and_the_ddf_reapplies(registered):
    ndim, paths, loaded, out, out_dir = registered
    import nibabel as nib

    saved = {key: out_dir / f"{Path(out[key].meta['filename_or_obj']).name.split('.')[0]}_warped.nii.gz"
             for key in ("moving_image", "moving_label")}
    for key, file in saved.items():
        assert file.is_file(), f"{key}: {sorted(p.name for p in out_dir.iterdir())}"
        assert np.allclose(nib.load(str(file)).affine, loaded["fixed_image"].affine.numpy(), atol=1e-5)
    ddf_files = [p for p in out_dir.iterdir() if p.name.startswith("fixed_")]
    assert len(ddf_files) == 1  # the ddf carries the fixed image's meta, hence its name
    # later: load the saved field and warp the moving label again -> the same label image
    later = Compose([
        LoadImaged(["moving_label", "ddf"], image_only=True),
        EnsureChannelFirstd(["moving_label", "ddf"]),
        Orientationd(["moving_label"], axcodes="RAS"[:ndim] if ndim == 3 else "RA"),
        Spacingd(["moving_label"], pixdim=[1.1] * ndim, mode="nearest"),
        ApplyDdfd(["moving_label"], ddf_key="ddf", mode="nearest"),
    ])({"moving_label": paths["moving_label"], "ddf": str(ddf_files[0])})
    assert torch.equal(later["moving_label"].as_tensor(), out["moving_label"].as_tensor())
    assert torch.allclose(later["moving_label"].affine, loaded["fixed_image"].affine, atol=1e-5)


def test_images_with_too_little_in_common_come_back_as_placed(tmp_path):
    """Two unrelated textures loaded from NIfTI files: the registration's trace says ``as_placed``
    and the moving image comes out as the fixed grid places it (here the same grid: unchanged)."""
    import nibabel as nib

    from monai_inr_reg.core.losses import gaussian_smooth

    paths = {}
    for key, seed in (("fixed_image", 1), ("moving_image", 2)):
        noise = gaussian_smooth(torch.rand(1, 64, 56, generator=torch.Generator().manual_seed(seed)), 2.0)[0]
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(((noise - noise.min()) / (noise.max() - noise.min())).numpy(), np.diag([1.5, 1.5, 1.0, 1.0])),
                 paths[key])
    out = Compose([
        LoadImaged(list(paths), image_only=True),
        EnsureChannelFirstd(list(paths)),
        InrRegistrationd(keys="moving_image", fixed_key="fixed_image", moving_key="moving_image",
                         preset="multimodal-deformable", seed=0, progress=False, iterations_scale=0.3,
                         on_weak_evidence="as_placed"),
    ])(dict(paths))
    info = out["moving_image"].applied_operations[-1]["extra_info"]
    assert info["returned"] == "as_placed" and info["weak_evidence"] and info["parametric"]
    loaded = LoadImaged("moving_image", image_only=True)({"moving_image": paths["moving_image"]})["moving_image"]
    assert torch.allclose(out["moving_image"].as_tensor()[0], loaded.as_tensor(), atol=1e-5)
