"""apply_transform / `monai-inr-reg apply`: a saved pair folder applied later equals the registration's own warp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from monai_inr_reg.apply import apply_transform
from monai_inr_reg.cli import main

SHAPES = {2: (48, 40), 3: (20, 18, 16)}
SPACING = {2: (1.5, 0.8), 3: (1.5, 0.8, 1.2)}
SHIFT_MM = np.array([2.0, -1.5, 1.0])  # moving content = fixed content moved by this (RAS mm)


def ras_affine(shape, spacing, offset: float = 0.0) -> np.ndarray:
    """4x4 RAS affine (also for 2D, as nibabel and MONAI keep it), centred, with anisotropic spacing."""
    affine = np.eye(4)
    for axis, (size, step) in enumerate(zip(shape, spacing)):
        affine[axis, axis] = step
        affine[axis, 3] = -(size - 1) * step / 2 + offset
    return affine


def blobs(shape, affine, shift) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth Gaussian blobs at RAS points (intensity) and their cores (labels 0, 3, 300)."""
    ndim = len(shape)
    index = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)
    points = index @ affine[:ndim, :ndim].T + affine[:ndim, 3] - shift[:ndim]
    d1 = ((points - np.array([5.0, -3.0, 2.0][:ndim])) ** 2).sum(-1)
    d2 = ((points - np.array([-6.0, 4.0, -2.0][:ndim])) ** 2).sum(-1)
    image = 100.0 * np.exp(-d1 / 40.0) + 60.0 * np.exp(-d2 / 20.0)
    label = np.where(d1 < 20.0, 3, np.where(d2 < 12.0, 300, 0)).astype(np.int16)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """Per dimension: a fixed/moving pair on different grids, a moving label map, and the registered pair folder."""
    root = tmp_path_factory.mktemp("apply")
    out = {}
    for ndim, shape in SHAPES.items():
        fixed_affine = ras_affine(shape, SPACING[ndim])
        moving_affine = ras_affine(shape, SPACING[ndim], offset=1.0)
        paths = {"dir": root / f"{ndim}d", "fixed_affine": fixed_affine, "moving_affine": moving_affine}
        paths["dir"].mkdir()
        for role, affine, shift in (("fixed", fixed_affine, np.zeros(3)), ("moving", moving_affine, SHIFT_MM)):
            image, label = blobs(shape, affine, shift)
            paths[role] = paths["dir"] / f"{role}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), str(paths[role]))
            if role == "moving":  # uint8 in 2D, int16 (a value over 255) in 3D
                label = np.where(label == 300, 4, label).astype(np.uint8) if ndim == 2 else label
                paths["label"] = paths["dir"] / "moving_label.nii.gz"
                nib.save(nib.Nifti1Image(label, affine), str(paths["label"]))
        code = main(["-q", "register", str(paths["fixed"]), str(paths["moving"]), "-o", str(paths["dir"] / "out"),
                     "--preset", "rigid", "--set", "iterations_scale=0.2", "--outputs", "warped,ddf,h5", "--device", "cpu"])
        assert code == 0
        paths["pair"] = paths["dir"] / "out" / "moving_to_fixed"
        out[ndim] = paths
    return out


def load(path) -> MetaTensor:
    return LoadImage(image_only=True, ensure_channel_first=True)(str(path))


def nd_affine(affine, ndim: int) -> np.ndarray:
    """The (D + 1)^2 part of a 4x4 affine."""
    affine = np.asarray(affine, dtype=np.float64)
    keep = list(range(ndim)) + [3]
    return affine[np.ix_(keep, keep)]


@pytest.mark.parametrize("ndim", [2, 3])
def test_equals_the_registration_warp(pairs, ndim):
    p = pairs[ndim]
    ddf = load(p["pair"] / "ddf.nii.gz")
    assert float(ddf.abs().max()) > 0.5  # the registration moved something: the comparison means something
    expected = load(p["pair"] / "warped.nii.gz")  # RegistrationResult.warp of the moving image, as saved
    for args in ((p["pair"], p["moving"]), (p["pair"] / "ddf.nii.gz", p["moving"]),
                 (str(p["pair"]), load(p["moving"]), p["fixed"])):
        out = apply_transform(*args)
        assert isinstance(out, MetaTensor) and out.shape == (1, *SHAPES[ndim]) and out.dtype == torch.float32
        assert torch.allclose(out.as_tensor(), expected.as_tensor(), atol=1e-5, rtol=0)
        assert np.allclose(nd_affine(out.affine, ndim), nd_affine(p["fixed_affine"], ndim), atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_nearest_keeps_label_values_and_dtype(pairs, ndim):
    p = pairs[ndim]
    array = np.asarray(nib.load(str(p["label"])).dataobj)
    label = MetaTensor(torch.from_numpy(array.astype(np.int16))[None], affine=torch.as_tensor(p["moving_affine"]))
    out = apply_transform(p["pair"], label, mode="nearest")
    assert out.dtype == torch.int16
    assert set(out.unique().tolist()) == set(np.unique(array).tolist())  # a small motion: every label survives
    bilinear = apply_transform(p["pair"], label.float(), mode="bilinear")
    assert not set(bilinear.unique().tolist()) <= set(np.unique(array).tolist())  # mode is honoured


@pytest.mark.parametrize("ndim", [2, 3])
def test_cli_writes_warped_images_and_labels(pairs, ndim, tmp_path, capsys):
    p = pairs[ndim]
    common = ["apply", "--transform", str(p["pair"]), "--reference", str(p["fixed"])]
    assert main([*common, "--input", str(p["label"]), "-o", str(tmp_path / "sub" / "label.nii.gz"), "--nearest"]) == 0
    assert main([*common, "--input", str(p["moving"]), "-o", str(tmp_path / "image.nii.gz")]) == 0
    assert "wrote" in capsys.readouterr().out
    label_in = np.asarray(nib.load(str(p["label"])).dataobj)
    written = nib.load(str(tmp_path / "sub" / "label.nii.gz"))
    values = np.asarray(written.dataobj)
    assert np.issubdtype(written.get_data_dtype(), np.integer)
    assert written.get_data_dtype() == label_in.dtype  # the smallest integer type of these values
    assert values.shape == SHAPES[ndim] and set(np.unique(values)) <= set(np.unique(label_in))
    assert len(np.unique(values)) == len(np.unique(label_in))
    assert np.allclose(written.affine, p["fixed_affine"], atol=1e-5)
    image = nib.load(str(tmp_path / "image.nii.gz"))
    expected = nib.load(str(p["pair"] / "warped.nii.gz"))
    assert np.allclose(image.get_fdata(), expected.get_fdata(), atol=1e-5)
    assert np.allclose(image.affine, expected.affine)
    written_files = sorted(f.name for f in tmp_path.rglob("*") if f.is_file())
    assert written_files == ["image.nii.gz", "label.nii.gz"]  # no temporary files left


def test_cli_bad_input_exits_2_and_writes_nothing(pairs, tmp_path, capsys):
    p2, p3 = pairs[2], pairs[3]
    output = tmp_path / "out" / "warped.nii.gz"
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.nii.gz").write_text("not an image")
    cases = [
        (["--transform", str(tmp_path / "nope"), "--input", str(p2["moving"])],
         ["'transform'", "nope", "does not exist"]),
        (["--transform", str(tmp_path / "empty"), "--input", str(p2["moving"])], ["holds neither ddf.nii.gz nor itk/transform.h5"]),
        (["--transform", str(p2["pair"].parent), "--input", str(p2["moving"])], ["moving_to_fixed"]),
        (["--transform", str(p2["pair"]), "--input", str(tmp_path / "missing.nii.gz")],
         ["'--input'", "missing.nii.gz", "does not exist"]),
        (["--transform", str(p2["pair"]), "--input", str(tmp_path / "broken.nii.gz")],
         ["'--input'", "broken.nii.gz", "could not be read"]),
        (["--transform", str(p2["pair"]), "--input", str(p2["moving"]), "--reference", str(p3["fixed"])],
         ["'reference'", str(SHAPES[2])]),
        (["--transform", str(p3["pair"]), "--input", str(p2["moving"])], ["'transform'", "D = 2"]),
    ]
    for args, words in cases:
        assert main(["apply", *args, "-o", str(output)]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("monai-inr-reg: error: ") and err.count("\n") == 1, err
        for word in words:
            assert word in err, (word, err)
        assert not (tmp_path / "out").exists()
    mha = output.with_name("warped.mha")
    assert main(["apply", "--transform", str(p2["pair"]), "--input", str(p2["moving"]), "-o", str(mha)]) == 2
    assert "'-o' must be a NIfTI file name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_errors_name_the_argument(pairs, tmp_path):
    p = pairs[2]
    with pytest.raises(FileNotFoundError, match="'transform'.*does not exist"):
        apply_transform(tmp_path / "nope", p["moving"])
    with pytest.raises(FileNotFoundError, match="'image' file .*does not exist"):
        apply_transform(p["pair"], tmp_path / "nope.nii.gz")
    with pytest.raises(ValueError, match="'mode' must be one of"):
        apply_transform(p["pair"], p["moving"], mode="linear")
    with pytest.raises(TypeError, match="'transform' must be"):
        apply_transform(load(p["pair"] / "ddf.nii.gz"), p["moving"])
    moved = load(p["fixed"])
    moved.affine[0, 3] += 5.0  # right shape, other grid: the voxel DDF would point elsewhere
    with pytest.raises(ValueError, match="'reference' has the field's shape but another RAS affine"):
        apply_transform(p["pair"], p["moving"], moved)
    with pytest.raises(ValueError, match="'image' must be channel-first"):
        apply_transform(p["pair"], torch.zeros(4))


def test_lazy_top_level_export():
    code = ("import sys, monai_inr_reg; assert 'monai' not in sys.modules; "
            "from monai_inr_reg.apply import apply_transform; assert monai_inr_reg.apply_transform is apply_transform")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("ndim", [2, 3])
def test_itk_transform_of_the_pair_applies_like_its_field(pairs, ndim):
    """Without ddf.nii.gz (not a default output) the pair's itk/transform.h5 is used, on the fixed grid."""
    p = pairs[ndim]
    via_field = apply_transform(p["pair"] / "ddf.nii.gz", p["moving"])
    via_itk = apply_transform(p["pair"] / "itk" / "transform.h5", p["moving"], p["fixed"])
    assert via_itk.shape == via_field.shape
    assert torch.allclose(via_itk.as_tensor(), via_field.as_tensor(), atol=1e-3 * float(via_field.abs().max()))
    folder_only_itk = p["dir"] / "only_itk"
    folder_only_itk.mkdir(exist_ok=True)
    (folder_only_itk / "itk").mkdir(exist_ok=True)
    for name in ("warped.nii.gz", "itk/transform.h5"):
        (folder_only_itk / name).write_bytes((p["pair"] / name).read_bytes())
    via_folder = apply_transform(folder_only_itk, p["moving"])
    assert torch.allclose(via_folder.as_tensor(), via_itk.as_tensor())
    assert np.allclose(np.asarray(via_folder.affine), np.asarray(load(p["fixed"]).affine), atol=1e-6)
