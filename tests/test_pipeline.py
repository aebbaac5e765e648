"""pipeline.py: per-pair outputs, resumability, failure isolation, metrics files."""

from __future__ import annotations

import csv
import importlib
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_inr_reg.core.grid import ddf_voxel_from_ddf_mm
from monai_inr_reg.pipeline import PairFailures, load_datalist, register_pair, run_datalist, save_nifti
from monai_inr_reg.result import RegistrationResult
from transforms.synthetic_pairs import write_datalist, write_pair

register_module = importlib.import_module("monai_inr_reg.register")
PAIR_FILES = {"warped.nii.gz", "warped_label.nii.gz", "ddf.nii.gz", "qc.png", "done.json"}
DEFAULT_FILES_NO_ITK = PAIR_FILES - {"ddf.nii.gz"}  # the default outputs less the ITK .h5
WITH_DDF = ("warped", "labels", "ddf", "qc", "metrics")
QUICK = {"iterations_scale": 0.1}


@pytest.fixture
def stub(monkeypatch):
    """An instant optimiser: the true shift of write_pair (4, -3) mm RAS = (-4, 3) mm LPS; counts calls."""
    calls = []

    def fake_register(fixed, moving, preset="deformable", *, seed=0, device=None, progress=None, **overrides):
        fixed_image, fixed_grid = register_module.as_image_and_grid(fixed, "fixed")
        _, moving_grid = register_module.as_image_and_grid(moving, "moving")
        if fixed_grid.ndim != moving_grid.ndim:  # as register() checks before any work
            raise ValueError(f"register(): 'fixed' is {fixed_grid.ndim}D but 'moving' is {moving_grid.ndim}D")
        calls.append(preset)
        ndim = fixed_grid.ndim
        shift_lps = torch.tensor([-4.0, 3.0, 2.0][:ndim])
        ddf_mm = shift_lps.reshape((ndim,) + (1,) * ndim).expand((ndim,) + fixed_grid.shape)
        matrix = torch.eye(ndim + 1, dtype=torch.float64)
        matrix[:ndim, ndim] = shift_lps.double()
        moving_image = torch.as_tensor(moving.as_tensor() if hasattr(moving, "as_tensor") else moving).float()
        return RegistrationResult(fixed_grid, moving_grid, ddf_voxel_from_ddf_mm(ddf_mm, fixed_grid.mm_from_voxel),
                                  matrix, True, "rigid", moving_image, seconds=0.01, loss_history=[0.5, 0.1])

    monkeypatch.setattr(register_module, "register", fake_register)
    return calls


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def snapshot(directory):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir()) if p.is_file()}


def test_register_pair_writes_every_output(tmp_path):
    paths = write_pair(tmp_path / "data", 2)
    pair = load_datalist({"pairs": [paths]})[0]
    row = register_pair(pair, tmp_path / "out", preset="rigid", overrides=QUICK, device="cpu", itk=False,
                        outputs=WITH_DDF)
    pair_dir = tmp_path / "out" / pair["id"]
    assert {p.name for p in pair_dir.iterdir()} == PAIR_FILES  # and no temporary file left
    assert row["status"] == "ok" and row["error"] == ""
    assert row["dice"] > row["dice_before"] + 0.2 and row["dice"] > 0.9
    assert row["hd95_mm"] < row["hd95_mm_before"]
    assert row["folding_percent"] == 0.0 and row["seconds"] > 0 and math.isfinite(row["final_loss"])
    fixed = nib.load(paths["fixed"])
    for name in ("warped.nii.gz", "warped_label.nii.gz", "ddf.nii.gz"):
        image = nib.load(str(pair_dir / name))
        assert np.allclose(image.affine, fixed.affine), name
        assert image.shape[:2] == fixed.shape, name
    label = np.asanyarray(nib.load(str(pair_dir / "warped_label.nii.gz")).dataobj)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}
    assert nib.load(str(pair_dir / "ddf.nii.gz")).shape == fixed.shape + (1, 2)
    record = json.loads((pair_dir / "done.json").read_text())
    assert record["row"] == json.loads(json.dumps(row))
    assert set(record["files"]) == PAIR_FILES - {"done.json"}
    # the saved field re-applied with MONAI transforms (as bundle/docs/README.md shows) gives the saved label
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from monai_inr_reg.transforms import ApplyDdfd

    again = Compose([LoadImaged(["label", "ddf"], image_only=True), EnsureChannelFirstd(["label", "ddf"]),
                     ApplyDdfd(["label"], ddf_key="ddf", mode="nearest")])(
        {"label": paths["moving_label"], "ddf": str(pair_dir / "ddf.nii.gz")})
    assert np.array_equal(again["label"][0].numpy(), label)


def test_rerun_skips_complete_pairs_and_redoes_partial_ones(tmp_path, stub):
    datalist = write_datalist(tmp_path, 2)
    run_datalist(datalist, tmp_path / "out", preset="rigid", itk=False)
    assert len(stub) == 2
    pairs = load_datalist(datalist)
    first, second = (tmp_path / "out" / p["id"] for p in pairs)
    before = snapshot(first)
    (second / "qc.png").unlink()  # a partial pair (as if killed before its last files)
    rows = run_datalist(datalist, tmp_path / "out", preset="rigid", itk=False)
    assert len(stub) == 3  # only the partial pair ran again
    assert snapshot(first) == before
    assert {p.name for p in second.iterdir()} == DEFAULT_FILES_NO_ITK
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert len(read_csv(tmp_path / "out" / "metrics.csv")) == 2
    # other settings make the stored outputs stale
    run_datalist(datalist, tmp_path / "out", preset="rigid", overrides={"iterations_scale": 0.5}, itk=False)
    assert len(stub) == 5


def write_garbage(path):
    path.write_bytes(b"this is not an image")
    return str(path)


def test_bad_pairs_are_recorded_and_the_others_go_on(tmp_path, stub):
    good = write_pair(tmp_path / "good", 2)
    other3d = write_pair(tmp_path / "three", 3)
    nan_path = tmp_path / "nan.nii.gz"
    data = nib.load(good["moving"]).get_fdata().astype(np.float32)
    data[3, 4] = np.nan
    nib.save(nib.Nifti1Image(data, nib.load(good["moving"]).affine), str(nan_path))
    small_label = tmp_path / "small_label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5), np.uint8), np.eye(4)), str(small_label))
    entries = [
        dict(good, id="ok"),
        dict(good, id="missing", moving=str(tmp_path / "nope.nii.gz")),
        dict(good, id="unreadable", moving=write_garbage(tmp_path / "garbage.nii.gz")),
        dict(good, id="dims", moving=other3d["moving"], moving_label=other3d["moving_label"]),
        dict(good, id="label-shape", moving_label=str(small_label)),
        dict(good, id="nan", moving=str(nan_path)),
        {"id": "no-moving", "fixed": good["fixed"]},
    ]
    with pytest.raises(PairFailures, match="6 pair"):
        run_datalist({"pairs": entries}, tmp_path / "out", preset="rigid", itk=False)
    rows = read_csv(tmp_path / "out" / "metrics.csv")
    assert [r["pair"] for r in rows] == [e["id"] for e in entries]
    errors = {r["pair"]: r["error"] for r in rows if r["status"] == "failed"}
    assert rows[0]["status"] == "ok" and len(errors) == 6
    assert "does not exist" in errors["missing"] and "nope.nii.gz" in errors["missing"]
    assert "could not be read" in errors["unreadable"]
    assert "'fixed' is 2D" in errors["dims"] and "'moving' is 3D" in errors["dims"]
    assert "'moving_label' has spatial shape (5, 5)" in errors["label-shape"]
    assert "NaN" in errors["nan"]
    assert "no 'moving'" in errors["no-moving"]
    for pid in errors:
        assert (tmp_path / "out" / pid / "error.json").is_file()
        assert not (tmp_path / "out" / pid / "done.json").exists()
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())["summary"]
    assert summary["ok"] == 1 and summary["failed"] == 6


def test_unknown_preset_or_option_fails_before_any_work(tmp_path, stub):
    datalist = write_datalist(tmp_path, 1)
    with pytest.raises(ValueError, match="unknown preset 'fancy'"):
        run_datalist(datalist, tmp_path / "out", preset="fancy")
    with pytest.raises(ValueError, match="unknown option 'iteration_scale'"):
        run_datalist(datalist, tmp_path / "out", preset="rigid", overrides={"iteration_scale": 0.1})
    assert not (tmp_path / "out").exists() and stub == []
    with pytest.raises(ValueError, match="'pairs' list"):
        run_datalist({"pair": []}, tmp_path / "out", preset="rigid")


def test_load_datalist_resolves_paths_and_names_pairs(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps({"pairs": [
        {"fixed": "a/f.nii.gz", "moving": "a/m.nii.gz"},
        {"fixed": "b/f.nii.gz", "moving": "b/m.nii.gz", "moving_label": "/abs/l.nii.gz"},
        {"fixed": "f.png", "moving": "m.png", "id": "my pair"},
    ]}))
    pairs = load_datalist(tmp_path / "list.json", tmp_path / "data")
    assert pairs[0]["fixed"] == str(tmp_path / "data" / "a" / "f.nii.gz")
    assert pairs[1]["moving_label"] == "/abs/l.nii.gz"
    assert [p["id"] for p in pairs] == ["m_to_f", "m_to_f-1", "my_pair"]
    assert load_datalist(tmp_path / "list.json")[0]["fixed"] == str(tmp_path / "a" / "f.nii.gz")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_datalist(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_datalist(tmp_path / "none.json")


@pytest.mark.parametrize("shape", [(1, 6, 5), (1, 6, 5, 4), (3, 6, 5, 4), (2, 6, 5)])
def test_save_nifti_round_trips_through_monai(tmp_path, shape):
    from monai.transforms import LoadImage

    data = torch.rand(shape)
    affine = torch.diag(torch.tensor([1.5, 2.0, 2.5, 1.0], dtype=torch.float64))
    path = save_nifti(tmp_path / "x.nii.gz", data, affine)
    back = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    if len(shape) == 3 and shape[0] > 1:
        back = back[..., 0]  # MONAI reads a 2D multi-channel NIfTI with a trailing singleton axis
    assert torch.allclose(back.as_tensor(), data) and torch.allclose(back.affine, affine)
    assert not list(tmp_path.glob(".partial-*"))


def test_save_nifti_picks_a_label_type(tmp_path):
    for values, dtype in (([0, 3, 255], np.uint8), ([-1, 7], np.int16), ([0, 70000], np.int32), ([0.5], np.float32)):
        data = torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1).expand(1, 2, len(values))
        path = save_nifti(tmp_path / "l.nii.gz", data, np.eye(4), label=True)
        assert np.asanyarray(nib.load(str(path)).dataobj).dtype == dtype


@pytest.mark.itk
def test_itk_transform_files_are_written_and_listed(tmp_path):
    pytest.importorskip("itk")
    paths = write_pair(tmp_path / "data", 2)
    pair = load_datalist({"pairs": [paths]})[0]
    row = register_pair(pair, tmp_path / "out", preset="rigid", overrides=QUICK, device="cpu", itk=True)
    pair_dir = tmp_path / "out" / pair["id"]
    assert row["itk"] == "itk/", row
    itk_files = sorted(p.name for p in (pair_dir / "itk").iterdir())
    assert "transform.h5" in itk_files
    listed = json.loads((pair_dir / "done.json").read_text())["files"]
    assert {f"itk/{name}" for name in itk_files} <= set(listed)
