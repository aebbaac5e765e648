"""The MONAI bundle: `python -m monai.bundle run` over a datalist, resumable, and sharded by torchrun."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from monai_inr_reg.pipeline import load_datalist
from transforms.synthetic_pairs import write_datalist

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
PAIR_FILES = {"warped.nii.gz", "warped_label.nii.gz", "qc.png", "done.json"}  # the default outputs (and itk/)
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def bundle_args(tmp_path, datalist, *extra, config=None):
    config = config or str(CONFIGS / "inference.yaml")
    return ["-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(tmp_path),
            "--datalist", str(datalist), "--output_dir", str(tmp_path / "out"), "--preset", "rigid",
            "--device", "cpu", "--overrides#iterations_scale", "0.1", *extra]


def run(args, log: Path, timeout=600):
    proc = subprocess.run([sys.executable, *args], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log.write_text(proc.stdout + proc.stderr)
    return proc.returncode, proc.stdout + proc.stderr


def rows(out: Path):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def snapshot(directory: Path):
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_bundle_run_fails_one_pair_then_a_rerun_completes_it(tmp_path):
    datalist = write_datalist(tmp_path, 3)
    pairs = load_datalist(datalist, tmp_path)
    missing = Path(pairs[1]["moving"])
    hidden = missing.with_name("hidden.nii.gz")
    missing.rename(hidden)  # inject a failure: the second pair's moving image is absent

    code, log = run(bundle_args(tmp_path, datalist), tmp_path / "run1.log")
    assert code != 0, log
    first = rows(tmp_path / "out")
    assert [r["status"] for r in first] == ["ok", "failed", "ok"], log
    assert pairs[1]["id"] in log and "does not exist" in first[1]["error"] and missing.name in first[1]["error"]
    out_dirs = [tmp_path / "out" / p["id"] for p in pairs]
    for index in (0, 2):
        names = {p.name for p in out_dirs[index].iterdir()}
        assert PAIR_FILES <= names and "itk" in names, names  # ITK transform files too
        assert (out_dirs[index] / "itk" / "transform.h5").is_file()
    before = snapshot(out_dirs[0])

    hidden.rename(missing)  # fix the datalist's file and run again
    code, log = run(bundle_args(tmp_path, datalist), tmp_path / "run2.log")
    assert code == 0, log
    final = rows(tmp_path / "out")
    assert len(final) == 3 and [r["pair"] for r in final] == [p["id"] for p in pairs]
    assert all(r["status"] == "ok" and float(r["dice"]) > float(r["dice_before"]) for r in final), final
    assert log.count("done earlier with the same inputs and settings, skipped") == 2
    assert snapshot(out_dirs[0]) == before  # first outputs untouched (bytes and mtimes)
    for pair_dir in out_dirs:
        assert PAIR_FILES <= {p.name for p in pair_dir.iterdir()}
        assert not list(pair_dir.glob(".tmp-*")) and not (pair_dir / "error.json").exists()
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["summary"]["ok"] == 3 and len(summary["rows"]) == 3


def test_unknown_preset_fails_before_any_work(tmp_path):
    datalist = write_datalist(tmp_path, 1)
    code, log = run(bundle_args(tmp_path, datalist, "--preset", "fancy"), tmp_path / "run.log")
    assert code != 0 and "unknown preset 'fancy'" in log
    assert not (tmp_path / "out").exists() or not any(p.is_dir() for p in (tmp_path / "out").iterdir())


def test_a_missing_import_fails_loudly(tmp_path):
    config = tmp_path / "configs" / "inference.yaml"
    config.parent.mkdir()
    for name in ("metadata.json", "logging.conf"):
        shutil.copy(CONFIGS / name, config.parent / name)
    config.write_text((CONFIGS / "inference.yaml").read_text().replace(
        "monai_inr_reg.pipeline.run_datalist", "monai_inr_reg.pipeline_typo.run_datalist"))
    datalist = write_datalist(tmp_path, 1)
    code, log = run(bundle_args(tmp_path, datalist, config=str(config)), tmp_path / "run.log")
    assert code != 0 and "monai_inr_reg.pipeline_typo.run_datalist" in log
    assert not (tmp_path / "out").exists()


def test_metadata_is_honest():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors",
                "copyright", "network_data_format"):
        assert meta.get(key), key
    assert "no trained weights" in meta["description"].lower()
    assert not (ROOT / "bundle" / "models").exists()
    assert "$import" not in (CONFIGS / "inference.yaml").read_text().split("run:")[1]


def test_torchrun_two_ranks_process_each_pair_exactly_once(tmp_path):
    datalist = write_datalist(tmp_path, 4)
    configs = f"['{CONFIGS / 'inference.yaml'}','{CONFIGS / 'multi_gpu_inference.yaml'}']"
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            *bundle_args(tmp_path, datalist, "--write_itk", "false", config=configs)]
    code, log = run(args, tmp_path / "torchrun.log", timeout=900)
    assert code == 0, log[-3000:]
    pairs = load_datalist(datalist, tmp_path)
    assert "rank 0/2: 2 of 4 pairs" in log and "rank 1/2: 2 of 4 pairs" in log
    for pair in pairs:
        assert log.count(f"pair {pair['id']}: done") == 1, pair["id"]
        assert PAIR_FILES <= {p.name for p in (tmp_path / "out" / pair["id"]).iterdir()}
    merged = rows(tmp_path / "out")
    assert [r["pair"] for r in merged] == [p["id"] for p in pairs] and all(r["status"] == "ok" for r in merged)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == sorted(p["id"] for p in pairs)


def test_preprocessing_is_monai_components_and_counts_for_resume(tmp_path):
    """The bundle spells out how pairs are read (LoadImaged, EnsureChannelFirstd, ...); another
    preprocessing (here Orientationd to LPS) is honoured and redoes the pairs."""
    import nibabel as nib
    import numpy as np
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    from monai_inr_reg.pipeline import run_datalist

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    preprocessing = parser.get_parsed_content("preprocessing")
    assert [type(t).__name__ for t in preprocessing.transforms] == ["LoadImaged", "EnsureChannelFirstd"]
    datalist = write_datalist(tmp_path, 1)
    pair = load_datalist(datalist)[0]
    run_datalist(datalist, tmp_path / "out", preset="rigid", overrides={"iterations_scale": 0.1}, itk=False,
                 preprocessing=preprocessing)
    done = tmp_path / "out" / pair["id"] / "done.json"
    first = done.stat().st_mtime_ns
    keys = ["fixed", "moving", "fixed_label", "moving_label"]
    reoriented = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="LPS")])
    run_datalist(datalist, tmp_path / "out", preset="rigid", overrides={"iterations_scale": 0.1}, itk=False,
                 preprocessing=reoriented)
    assert done.stat().st_mtime_ns != first  # other preprocessing: redone
    warped = nib.load(str(tmp_path / "out" / pair["id"] / "warped.nii.gz"))
    fixed = nib.load(pair["fixed"])
    assert nib.aff2axcodes(warped.affine)[:2] == ("L", "P") and nib.aff2axcodes(fixed.affine)[:2] == ("R", "A")
    assert np.allclose(np.abs(np.diag(warped.affine))[:2], np.abs(np.diag(fixed.affine))[:2])
