"""README's first-pair commands run as written (the blocks marked ``readme-run``), and their results hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block right after a ``<!-- readme-run`` marker, in order."""
    text = (ROOT / "README.md").read_text()
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"<!-- readme-run[^>]*-->\n```(\w+)\n(.*?)\n```", text, flags=re.S)]


def test_readme_first_pairs_run_as_written(tmp_path):
    blocks = readme_blocks()
    assert [language for language, _ in blocks] == ["bash", "bash", "python"]
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the commands name examples/ of the checkout
    for language, code in blocks:
        command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        # the console script lives next to this interpreter
        env = dict(ENV, PATH=f"{Path(sys.executable).parent}{os.pathsep}{ENV.get('PATH', '')}")
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{language} block failed:\n{code}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"

    # the 3D pair: the registration meets the known motion (corners within 1 mm, voxels of 1.5 mm)
    from monai_inr_reg.core.grid import ImageGrid

    truth = torch.from_numpy(np.loadtxt(tmp_path / "example_data" / "truth.txt"))
    fixed = nib.load(str(tmp_path / "example_data" / "fixed.nii.gz"))
    grid = ImageGrid.from_ras_affine(fixed.shape, torch.from_numpy(fixed.affine))
    import itk

    from monai_inr_reg.itk_bridge import ddf_from_transform

    # the default outputs hold the ITK transform (read here with ITK itself)
    transform = itk.transformread(str(tmp_path / "out" / "3d" / "moving_to_fixed" / "itk" / "transform.h5"))[0]
    ddf = ddf_from_transform(transform, grid)
    moved_voxel = grid.voxel_points(dtype=torch.float64) + ddf.reshape(3, -1).T
    moved_mm = grid.voxel_to_mm(moved_voxel)
    expected_mm = grid.mm_points(dtype=torch.float64) @ truth[:3, :3].T + truth[:3, 3]
    assert float((moved_mm - expected_mm).norm(dim=1).max()) < 1.0
    # the applied label map: integer, the fixed grid, labels kept
    label = nib.load(str(tmp_path / "out" / "label_on_fixed.nii.gz"))
    assert np.issubdtype(label.get_data_dtype(), np.integer) and np.allclose(label.affine, fixed.affine)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}
