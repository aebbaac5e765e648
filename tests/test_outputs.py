"""The command line as a newcomer meets it: chosen outputs and their sizes, appended metrics, content-keyed
resume, the kernel cached per installed copy, progress on a terminal, --labels, --version, --threads."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_inr_reg.cli import main
from transforms.synthetic_pairs import write_pair

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--preset", "rigid", "--set", "iterations_scale=0.1", "--device", "cpu"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def pair_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_outputs_are_chosen(tmp_path):
    paths = write_pair(tmp_path / "data", 2)
    out = tmp_path / "out"
    assert main(["register", paths["fixed"], paths["moving"], "--moving-label", paths["moving_label"], "-o", str(out),
                 "--id", "default", *QUICK]) == 0
    assert pair_files(out / "default") == {"warped.nii.gz", "warped_label.nii.gz", "itk/transform.h5", "qc.png",
                                           "done.json"}
    assert main(["register", paths["fixed"], paths["moving"], "-o", str(out), "--id", "few", "--outputs", "warped",
                 *QUICK]) == 0
    assert pair_files(out / "few") == {"warped.nii.gz", "done.json"}
    everything = "warped,labels,h5,qc,metrics,ddf,tfm,ants,inverse,jacobian"
    assert main(["register", paths["fixed"], paths["moving"], "--moving-label", paths["moving_label"], "-o", str(out),
                 "--id", "all", "--outputs", everything, *QUICK]) == 0
    assert pair_files(out / "all") >= {"warped.nii.gz", "warped_label.nii.gz", "ddf.nii.gz", "jacobian.nii.gz",
                                       "qc.png", "itk/transform.h5", "itk/transform.tfm", "itk/affine.mat",
                                       "itk/inverse.h5", "itk/inverse.tfm"}
    jacobian = nib.load(str(out / "all" / "jacobian.nii.gz")).get_fdata()
    assert np.allclose(jacobian, 1.0, atol=1e-3)  # a rigid motion keeps volumes
    assert main(["register", paths["fixed"], paths["moving"], "-o", str(out), "--outputs", "warped,fancy"]) == 2


def test_field_transform_is_compressed_float32_and_reads_back(tmp_path):
    """A deformable result's .h5: single-precision field, compressed; reading it back gives the field."""
    import itk

    from monai_inr_reg.core.grid import ImageGrid
    from monai_inr_reg.itk_bridge import ddf_from_transform, save_result
    from monai_inr_reg.result import RegistrationResult

    shape = (40, 36, 32)
    grid = ImageGrid.from_ras_affine(shape, torch.diag(torch.tensor([1.2, 1.0, 1.5, 1.0], dtype=torch.float64)))
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn((1, 3, 5, 5, 4), generator=g)
    ddf = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, 3] = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    ddf = ddf + torch.tensor([-2.0 / 1.2, 1.0, 0.5 / 1.5]).reshape(3, 1, 1, 1)  # matrix stage's shift, in voxels
    result = RegistrationResult(grid, grid, ddf.float(), matrix, False, "deformable", torch.rand((1,) + shape))
    files = save_result(result, tmp_path)
    assert set(files) == {"h5"}  # no text, no inverse unless asked
    raw_double = 3 * int(np.prod(shape)) * 8
    assert files["h5"].stat().st_size < 0.6 * raw_double
    back = ddf_from_transform(itk.transformread(str(files["h5"]))[0], grid)
    assert torch.allclose(back.float(), result.ddf, atol=1e-4)


def test_metrics_are_appended_never_lost(tmp_path):
    a = write_pair(tmp_path / "a", 2, prefix="a_")
    b = write_pair(tmp_path / "b", 2, prefix="b_", shift=(2.0, 1.0, 0.0))
    out = tmp_path / "out"
    assert main(["register", a["fixed"], a["moving"], "-o", str(out), "--no-itk", *QUICK]) == 0
    assert main(["register", b["fixed"], b["moving"], "-o", str(out), "--no-itk", *QUICK]) == 0
    assert sorted(r["pair"] for r in rows(out)) == ["a_moving_to_a_fixed", "b_moving_to_b_fixed"]
    # two commands at once into one folder: both rows, whole files
    c = write_pair(tmp_path / "c", 2, prefix="c_")
    d = write_pair(tmp_path / "d", 2, prefix="d_")
    procs = [subprocess.Popen([sys.executable, "-m", "monai_inr_reg.cli", "-q", "register", p["fixed"], p["moving"],
                               "-o", str(out), "--no-itk", *QUICK], env=ENV, cwd=tmp_path)
             for p in (c, d)]
    assert [proc.wait(timeout=300) for proc in procs] == [0, 0]
    assert sorted(r["pair"] for r in rows(out)) == ["a_moving_to_a_fixed", "b_moving_to_b_fixed",
                                                    "c_moving_to_c_fixed", "d_moving_to_d_fixed"]
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["pairs"] == 4 and summary["ok"] == 4
    assert not list(out.glob(".partial-*"))


def test_resume_is_keyed_by_content(tmp_path, caplog):
    import logging

    paths = write_pair(tmp_path / "data", 2)
    out = tmp_path / "out"
    args = ["register", paths["fixed"], paths["moving"], "-o", str(out), "--no-itk", *QUICK]
    assert main(args) == 0
    done = out / "moving_to_fixed" / "done.json"
    first = done.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert done.stat().st_mtime_ns == first and "skipped" in caplog.text
    # the same file name with other content: redone
    moving = nib.load(paths["moving"])
    nib.save(nib.Nifti1Image(np.roll(moving.get_fdata().astype(np.float32), 1, axis=0), moving.affine), paths["moving"])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert done.stat().st_mtime_ns != first and "inputs changed" in caplog.text
    settings = json.loads(done.read_text())["settings"]
    assert set(settings["inputs"]) == {"fixed", "moving"} and settings["device"] == "cpu"


def test_kernel_cache_is_per_installed_copy(tmp_path):
    from monai_inr_reg import _ext

    source = Path(_ext.__file__).parent / "csrc" / "hash_grid_cpu.cpp"
    copy = tmp_path / "checkout2" / "hash_grid_cpu.cpp"
    copy.parent.mkdir()
    copy.write_bytes(source.read_bytes())
    here = _ext.build_directory("k", ["-O3"], source)
    assert here == _ext.build_directory("k", ["-O3"], source)  # stable: built once, then loaded
    assert _ext.build_directory("k", ["-O3"], copy) != here  # another checkout: its own folder
    assert _ext.build_directory("k", ["-O3", "-march=x86-64-v3"], source) != here
    before_edit = _ext.build_directory("k", ["-O3"], copy)
    copy.write_text(source.read_text() + "\n// edited\n")
    assert _ext.build_directory("k", ["-O3"], copy) != before_edit  # a new version of the source: rebuilt


def test_kernel_build_time_is_not_registration_time(monkeypatch):
    import time

    from monai_inr_reg import _ext, register

    def slow_build():
        time.sleep(1.0)
        _ext._STATE.update(tried=True, ok=False, error="test: no kernel", seconds=1.0)

    monkeypatch.setattr(_ext, "_STATE", dict(_ext._STATE, tried=False, ok=False))
    monkeypatch.setattr(_ext, "_build", slow_build)
    start = time.perf_counter()
    result = register(torch.rand(1, 16, 14), torch.rand(1, 16, 14), "rigid", iterations_scale=0.05, device="cpu")
    assert time.perf_counter() - start > 1.0 and result.seconds < time.perf_counter() - start - 0.9


def test_progress_on_a_terminal_only(tmp_path):
    pty = pytest.importorskip("pty")
    paths = write_pair(tmp_path / "data", 2)
    command = [sys.executable, "-m", "monai_inr_reg.cli", "register", paths["fixed"], paths["moving"], "--no-itk",
               "--preset", "rigid", "--set", "iterations_scale=4"]  # at 1x it can end before the bar's first refresh
    # a pseudo-terminal: a bar with the stage's name
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal has a size
    proc = subprocess.Popen(command + ["-o", str(tmp_path / "tty")], stdin=follower, stdout=follower, stderr=follower,
                            env=ENV, cwd=tmp_path)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    # a stage's name and loss (tqdm redraws at most every 0.1 s: a 0.3 s pair may not show its last stage)
    assert "it/s" in shown and re.search(r"(rigid|refine) loss \d", shown), shown[-2000:]
    # not a terminal, or --quiet: no bar; --set progress=true is the progress switch, not a crash
    piped = subprocess.run(command + ["-o", str(tmp_path / "pipe")], env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert piped.returncode == 0 and "it/s" not in piped.stderr
    forced = subprocess.run(command + ["-o", str(tmp_path / "forced"), "--set", "progress=true"], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0 and "it/s" in forced.stderr, forced.stderr[-2000:]


def test_labels_version_threads(tmp_path, capsys):
    paths = write_pair(tmp_path / "data", 2)
    out = tmp_path / "out"
    assert main(["--threads", "1", "register", paths["fixed"], paths["moving"], "--fixed-label", paths["fixed_label"],
                 "--moving-label", paths["moving_label"], "-o", str(out), "--no-itk", "--labels", "2", *QUICK]) == 0
    assert torch.get_num_threads() == 1
    record = json.loads((out / "moving_to_fixed" / "done.json").read_text())
    assert set(record["per_label"]) == {"2"} and record["settings"]["labels"] == [2]
    assert float(rows(out)[0]["dice"]) == pytest.approx(record["per_label"]["2"]["dice"])
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and "monai-inr-reg 0.1.0" in capsys.readouterr().out
    assert main(["--threads", "0", "register", paths["fixed"], paths["moving"], "-o", str(out)]) == 2


def test_qc_shows_three_views_in_3d(tmp_path):
    from PIL import Image

    from monai_inr_reg.qc import write_qc_png

    volume = np.random.default_rng(0).random((12, 10, 8)).astype(np.float32)
    flat = write_qc_png(tmp_path / "2d.png", volume[..., 0], volume[..., 0], volume[..., 0], np.ones((12, 10)))
    three = write_qc_png(tmp_path / "3d.png", volume, volume, volume, np.ones((12, 10, 8)), note="error 0.1 mm")
    (w2, h2), (w3, h3) = Image.open(flat).size, Image.open(three).size
    assert w2 == w3 and h3 > 2.5 * h2
