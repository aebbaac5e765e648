"""The command line: `register` writes what the bundle writes for one pair; exit codes; --set; passthrough."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_inr_reg.cli import main, parse_set
from transforms.synthetic_pairs import write_pair

ROOT = Path(__file__).resolve().parents[1]


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def read_rows(out: Path):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_register_writes_the_same_files_as_one_bundle_pair(tmp_path):
    from monai.bundle import run as bundle_run

    paths = write_pair(tmp_path / "data", 2)
    common = ["--preset", "rigid", "--set", "iterations_scale=0.1", "--seed", "3", "--device", "cpu", "--no-itk",
              "--outputs", "warped,labels,ddf,qc,metrics"]
    code = main(["register", paths["fixed"], paths["moving"], "--fixed-label", paths["fixed_label"],
                 "--moving-label", paths["moving_label"], "-o", str(tmp_path / "cli"), *common])
    assert code == 0
    (tmp_path / "list.json").write_text(
        '{"pairs": [{"fixed": "data/fixed.nii.gz", "moving": "data/moving.nii.gz",'
        ' "fixed_label": "data/fixed_label.nii.gz", "moving_label": "data/moving_label.nii.gz"}]}')
    bundle_run(config_file=str(ROOT / "bundle" / "configs" / "inference.yaml"), dataset_dir=str(tmp_path),
               datalist=str(tmp_path / "list.json"), output_dir=str(tmp_path / "bundle"), preset="rigid",
               device="cpu", seed=3, write_itk=False, overrides={"iterations_scale": 0.1},
               outputs="warped,labels,ddf,qc,metrics")
    cli, bundle = tmp_path / "cli", tmp_path / "bundle"
    assert files(cli) == files(bundle)
    assert files(cli) >= {"metrics.csv", "metrics.json", "moving_to_fixed/warped.nii.gz", "moving_to_fixed/ddf.nii.gz",
                          "moving_to_fixed/warped_label.nii.gz", "moving_to_fixed/qc.png", "moving_to_fixed/done.json"}
    for name in ("ddf.nii.gz", "warped.nii.gz", "warped_label.nii.gz"):
        a, b = (nib.load(str(d / "moving_to_fixed" / name)) for d in (cli, bundle))
        assert np.allclose(a.get_fdata(), b.get_fdata(), atol=1e-5) and np.allclose(a.affine, b.affine), name
    row_cli, row_bundle = read_rows(cli)[0], read_rows(bundle)[0]
    for key in ("pair", "status", "fixed", "moving", "preset", "dice", "dice_before", "hd95_mm", "folding_percent"):
        assert row_cli[key] == row_bundle[key], key


def test_exit_codes(tmp_path, capsys):
    paths = write_pair(tmp_path / "data", 2)
    out = str(tmp_path / "out")
    # one pair: a bad input is a usage error (exit 2, one line naming it, nothing written)
    nan_path = tmp_path / "nan.nii.gz"
    data = nib.load(paths["moving"]).get_fdata().astype(np.float32)
    data[2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, nib.load(paths["moving"]).affine), str(nan_path))
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(6, 6, 6).astype(np.float32), np.eye(4)), str(volume))
    for moving, message in ((str(tmp_path / "nope.nii.gz"), "nope.nii.gz' does not exist"),
                            (str(nan_path), "'moving' has 1 NaN or infinite voxels"),
                            (str(volume), "'fixed' is 2D (28, 24) but 'moving' is 3D")):
        assert main(["register", paths["fixed"], moving, "-o", out, "--preset", "rigid"]) == 2, message
        err = capsys.readouterr().err.strip()
        assert err.startswith("monai-inr-reg: error: ") and message in err and "\n" not in err, err
        assert not Path(out).exists()
    # many pairs: a failed pair is recorded and the run exits 1
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"pairs": [dict(paths), dict(paths, moving=str(tmp_path / "nope.nii.gz"), id="bad")]}))
    assert main(["batch", str(datalist), "-o", out, "--preset", "rigid", "--set", "iterations_scale=0.1",
                 "--no-itk"]) == 1
    assert "1 pair(s) failed" in capsys.readouterr().err
    assert [r["status"] for r in read_rows(Path(out))] == ["ok", "failed"]
    assert main(["register", paths["fixed"], paths["moving"], "-o", out, "--preset", "fancy"]) == 2
    assert "unknown preset 'fancy'" in capsys.readouterr().err
    assert main(["register", paths["fixed"], paths["moving"], "-o", out, "--set", "iteration_scale=1"]) == 2
    assert "unknown option 'iteration_scale'" in capsys.readouterr().err
    assert main(["register", paths["fixed"], paths["moving"], "-o", out, "--set", "novalue"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["register", paths["fixed"]])  # argparse: missing arguments


def test_batch_runs_a_datalist(tmp_path, monkeypatch):
    import monai_inr_reg.pipeline as pipeline

    seen = {}

    def fake_run_datalist(datalist, output_dir, **kwargs):
        seen.update(kwargs, datalist=datalist, output_dir=output_dir)
        return []

    monkeypatch.setattr(pipeline, "run_datalist", fake_run_datalist)
    code = main(["batch", "list.json", "-o", str(tmp_path), "--dataset-dir", "data", "--preset", "affine",
                 "--set", "deformable.iterations=5", "--set", "iterations_scale=0.5", "--distributed"])
    assert code == 0
    assert seen["datalist"] == "list.json" and seen["dataset_dir"] == "data" and seen["preset"] == "affine"
    assert seen["overrides"] == {"deformable": {"iterations": 5}, "iterations_scale": 0.5}
    assert seen["distributed"] is True and seen["itk"] is True and seen["device"] == "auto"


def test_parse_set_reads_yaml_values_and_dotted_keys():
    assert parse_set(["a=1", "b=0.5", "c=true", "d=[1, 2]", "e=text", "f.g.h=1.0e-3"]) == {
        "a": 1, "b": 0.5, "c": True, "d": [1, 2], "e": "text", "f": {"g": {"h": 1e-3}}}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_set(["=3"])


def test_passthrough_subcommands_hand_over_their_arguments(monkeypatch, capsys):
    received = []
    fake = types.ModuleType("monai_inr_reg.demo")
    fake.main = lambda argv: received.append(argv) or 7
    monkeypatch.setitem(sys.modules, "monai_inr_reg.demo", fake)
    assert main(["demo", "--output-dir", "x", "--fast"]) == 7
    assert received == [["--output-dir", "x", "--fast"]]
    monkeypatch.setitem(sys.modules, "monai_inr_reg.bench", None)  # an absent module
    assert main(["bench"]) == 2
    assert "'bench' is not available" in capsys.readouterr().err


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "monai_inr_reg.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for command in ("register", "batch", "demo", "bench"):
        assert command in proc.stdout
