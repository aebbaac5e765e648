"""The examples run as users would run them (tiny data, few iterations): smoke tests with checks that matter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


def test_compose_pipeline(tmp_path):
    out = run_example("compose_pipeline.py", "--ndim", "2", "--iterations-scale", "0.1", "--output-dir", str(tmp_path))
    assert "warped image affine equals the fixed affine: True" in out
    before, after = map(float, re.search(r"label Dice: ([\d.]+) before, ([\d.]+) after", out).groups())
    assert after > before + 0.15
    fixed = nib.load(str(tmp_path / "input" / "fixed_image.nii.gz"))
    for name in ("moving_image_registered", "moving_label_registered", "fixed_image_ddf"):
        saved = nib.load(str(tmp_path / f"{name}.nii.gz"))
        assert np.allclose(saved.affine, fixed.affine), name


def test_bundle_batch(tmp_path):
    out = run_example("bundle_batch.py", "--pairs", "2", "--preset", "rigid", "--iterations-scale", "0.1",
                      "--no-itk", "--output-dir", str(tmp_path))
    assert "bundle exit status 0" in out and "python -m monai.bundle run --config_file" in out
    rows = [line for line in out.splitlines() if line.startswith("case")]
    assert len(rows) == 2 and all(" ok " in line for line in rows)
    assert (tmp_path / "metrics.json").is_file()


def test_multimodal_png_qc(tmp_path):
    out = run_example("multimodal_png_qc.py", "--size", "64", "--iterations-scale", "0.5", "--output-dir", str(tmp_path))
    before, after = map(float, re.search(r"before ([\d.]+), after ([\d.]+)", out).groups())
    assert after < before / 2
    for name in ("qc.png", "warped.png", "ddf.nii.gz", "fixed_t1.png", "moving_pd.png"):
        assert (tmp_path / name).stat().st_size > 0, name
