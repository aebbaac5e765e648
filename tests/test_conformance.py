"""Every public door times every file kind a MONAI or ITK user has: a known shift is recovered within 0.5 px.

Each image is a real file written here (grey / RGB PNG, JPEG, 2D NIfTI stored as (X, Y) and as
(X, Y, 1), a 3D NIfTI with an oblique anisotropic affine, MHA, NRRD) and loaded the way users load
it: a path, ``LoadImage(d)`` + ``EnsureChannelFirst(d)``, ``MetaTensor(x)`` with MONAI's default
affine, ``itk.imread``. The moving image is the fixed one moved by ``SHIFT`` voxels along the
loaded array axes, so every door must report a displacement of ``+SHIFT`` voxels (fixed -> moving).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged
from PIL import Image

from monai_inr_reg import register
from monai_inr_reg.cli import main
from monai_inr_reg.transforms import ApplyDdfd, InrRegistration, InrRegistrationd
from synthetic_images import gaussian_blobs

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"iterations_scale": 0.5}
PRESET = "rigid"
SHIFT_2D = (3.0, -2.0)
SHIFT_3D = (2.0, -1.0, 1.5)

# file kind -> (file name, spatial shape of the loaded array)
KINDS = {
    "png": ("img.png", (56, 48)),
    "rgb_png": ("img.png", (56, 48)),
    "jpeg": ("img.jpg", (56, 48)),
    "nifti_2d": ("img.nii.gz", (56, 48)),
    "nifti_2d_slice": ("img.nii.gz", (56, 48, 1)),
    "nifti_3d_oblique": ("img.nii.gz", (30, 28, 24)),
    "mha": ("img.mha", (56, 48)),
    "nrrd": ("img.nrrd", (30, 28, 24)),
}


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 0.9, 1.5])
    affine[:3, 3] = [-20.0, 14.0, 3.0]
    return affine


def write(kind: str, directory: Path, array: np.ndarray) -> str:
    """Write ``array`` (the array a MONAI/ITK reader gives back, array axes x, y[, z]) as ``kind``."""
    import itk

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KINDS[kind][0]
    grey = np.round(255 * array).astype(np.uint8)
    if kind in ("png", "jpeg"):
        Image.fromarray(grey.T).save(path, quality=95) if kind == "jpeg" else Image.fromarray(grey.T).save(path)
    elif kind == "rgb_png":
        rgb = np.stack([grey, np.round(0.8 * grey), np.round(0.3 * grey) + 40], -1).astype(np.uint8)
        Image.fromarray(rgb.transpose(1, 0, 2), mode="RGB").save(path)
    elif kind == "nifti_2d":
        nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([0.9, 1.1, 1.0, 1.0])), path)
    elif kind == "nifti_2d_slice":
        nib.save(nib.Nifti1Image(array.astype(np.float32)[..., None], np.diag([0.9, 1.1, 2.0, 1.0])), path)
    elif kind == "nifti_3d_oblique":
        nib.save(nib.Nifti1Image(array.astype(np.float32), _oblique_affine()), path)
    else:  # ITK's own formats: its arrays are (z, y, x)
        image = itk.image_from_array(np.ascontiguousarray(array.astype(np.float32).T))
        image.SetSpacing([0.8 + 0.2 * i for i in range(array.ndim)])
        image.SetOrigin([5.0 * (i + 1) for i in range(array.ndim)])
        itk.imwrite(image, str(path))
    return str(path)


def shift_for(kind: str) -> tuple[float, ...]:
    return SHIFT_3D if len(KINDS[kind][1]) == 3 and KINDS[kind][1][-1] > 1 else SHIFT_2D


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """kind -> {"fixed": path, "moving": path}; the moving image is the fixed one moved by shift_for(kind)."""
    root = tmp_path_factory.mktemp("conformance")
    out = {}
    for kind, (_, shape) in KINDS.items():
        spatial = shape[:2] if shape[-1] == 1 else shape
        shift = shift_for(kind)
        pair = {}
        for role, moved in (("fixed", (0.0,) * len(spatial)), ("moving", shift)):
            array = gaussian_blobs(spatial, moved)
            pair[role] = write(kind, root / kind / role, array.reshape(shape))
        out[kind] = pair
    return out


def assert_shift(ddf, kind: str, tolerance: float = 0.5) -> None:
    """``ddf``: ``(D, *S_fixed)`` MONAI DDF (voxels); its mean must be the known shift within ``tolerance`` voxels."""
    field = torch.as_tensor(np.asarray(ddf), dtype=torch.float64)
    if field.ndim == 4 and field.shape[-1] == 1:  # a 2D field read back from NIfTI
        field = field[..., 0]
    expected = torch.tensor(shift_for(kind), dtype=torch.float64)
    assert field.shape[0] == expected.shape[0], f"{kind}: {field.shape[0]}D field for a {expected.shape[0]}D shift"
    mean = field.reshape(field.shape[0], -1).mean(1)
    assert (mean - expected).abs().max() < tolerance, f"{kind}: recovered {mean.tolist()}, expected {expected.tolist()}"


def load(path: str):
    return LoadImage(image_only=True, ensure_channel_first=True)(path)


ALL = list(KINDS)


@pytest.mark.parametrize("kind", ALL)
def test_register_on_paths(files, kind):
    result = register(files[kind]["fixed"], files[kind]["moving"], PRESET, **OPTIONS)
    assert_shift(result.ddf, kind)


@pytest.mark.parametrize("kind", ALL)
def test_register_on_loaded_metatensors(files, kind):
    fixed, moving = load(files[kind]["fixed"]), load(files[kind]["moving"])
    if kind in ("png", "rgb_png", "jpeg", "nifti_2d"):
        assert fixed.affine.shape == (4, 4)  # MONAI keeps 4 x 4 for these 2D images
    assert_shift(register(fixed, moving, PRESET, **OPTIONS).ddf, kind)


@pytest.mark.parametrize("kind", ALL)
def test_bounded_preset_on_loaded_metatensors(files, kind):
    """The `bounded` preset (what weak evidence falls back to) through the same doors: its shifts come in
    steps of 2 voxels, so a 1-voxel shift may come back as 0 or 2 and the mean field is the known
    shift within 1 voxel (an axis-order, flip or spacing error would be several voxels off)."""
    result = register(load(files[kind]["fixed"]), load(files[kind]["moving"]), "bounded")
    assert_shift(result.ddf, kind, tolerance=1.05)


@pytest.mark.parametrize("kind", ALL)
def test_register_on_metatensor_with_default_affine(files, kind):
    # MetaTensor(x): MONAI's default 4 x 4 identity affine, whatever the spatial rank
    fixed, moving = (MetaTensor(torch.as_tensor(np.asarray(load(files[kind][r])))) for r in ("fixed", "moving"))
    assert_shift(register(fixed, moving, PRESET, **OPTIONS).ddf, kind)


@pytest.mark.parametrize("kind", ALL)
def test_register_itk_on_imread(files, kind):
    import itk

    from monai_inr_reg import register_itk

    fixed, moving = itk.imread(files[kind]["fixed"]), itk.imread(files[kind]["moving"])
    transform, warped = register_itk(fixed, moving, PRESET, **OPTIONS)
    ndim = transform.GetInputSpaceDimension()
    # the transform's displacement at the fixed centre, back in fixed voxels (ITK index order = array order)
    size = list(fixed.GetLargestPossibleRegion().GetSize())[:ndim]
    centre_index = [(s - 1) / 2 for s in size]
    direction = itk.array_from_matrix(fixed.GetDirection())[:ndim, :ndim]
    linear = direction * np.asarray(fixed.GetSpacing())[None, :ndim]
    centre_mm = np.asarray(fixed.GetOrigin())[:ndim] + linear @ centre_index
    moved_mm = np.asarray(transform.TransformPoint([float(v) for v in centre_mm]))
    shift_voxel = np.linalg.solve(linear, moved_mm - centre_mm)
    expected = np.asarray(shift_for(kind))
    assert np.abs(shift_voxel - expected).max() < 0.5, f"{kind}: {shift_voxel.tolist()} vs {expected.tolist()}"
    assert list(warped.GetLargestPossibleRegion().GetSize())[:ndim] == size


@pytest.mark.parametrize("kind", ALL)
def test_dictionary_transform_in_compose_and_apply_ddf(files, kind):
    keys = ["fixed", "moving"]
    pipeline = Compose([LoadImaged(keys), EnsureChannelFirstd(keys),
                        InrRegistrationd(["moving"], warped_key="warped", preset=PRESET, **OPTIONS)])
    out = pipeline(dict(files[kind]))
    assert_shift(out["ddf"], kind)
    # ApplyDdfd of the saved field on the moving image as loaded again equals the registration's warp
    again = Compose([LoadImaged(["moving"]), EnsureChannelFirstd(["moving"])])({"moving": files[kind]["moving"]})
    again["ddf"] = out["ddf"]
    applied = ApplyDdfd(["moving"], reference_key=None)(again)["moving"]
    assert applied.shape == out["warped"].shape
    assert torch.allclose(applied.as_tensor(), out["warped"].as_tensor(), atol=1e-5)


@pytest.mark.parametrize("kind", ALL)
def test_array_transform(files, kind):
    fixed, moving = load(files[kind]["fixed"]), load(files[kind]["moving"])
    warped, ddf = InrRegistration(PRESET, **OPTIONS)(fixed, moving)
    assert_shift(ddf, kind)
    assert torch.allclose(torch.as_tensor(warped.affine), torch.as_tensor(fixed.affine).to(warped.affine.dtype))


@pytest.mark.parametrize("kind", ALL)
def test_cli_register(files, kind, tmp_path):
    out = tmp_path / "out"
    code = main(["register", files[kind]["fixed"], files[kind]["moving"], "-o", str(out), "--id", "pair",
                 "--preset", PRESET, "--set", "iterations_scale=0.5", "--outputs", "warped,ddf", "--device", "cpu"])
    assert code == 0
    assert_shift(load(str(out / "pair" / "ddf.nii.gz")), kind)


def test_bundle_run_over_every_kind(files, tmp_path):
    datalist = {"pairs": [dict(files[kind], id=kind) for kind in ALL]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "bundle" / "configs" / "inference.yaml"),
         "--dataset_dir", str(tmp_path), "--datalist", str(tmp_path / "datalist.json"), "--output_dir",
         str(tmp_path / "out"), "--preset", PRESET, "--device", "cpu", "--write_itk", "false",
         "--overrides#iterations_scale", "0.5", "--outputs", "warped,ddf"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for kind in ALL:
        assert_shift(load(str(tmp_path / "out" / kind / "ddf.nii.gz")), kind)
