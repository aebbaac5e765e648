"""End-to-end smoke runs of every suite's command line on the real data (2 cases, identity / quick baselines)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_inr_reg.bench import data as bdata
from monai_inr_reg.bench import main, metrics, protocols


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _run(suite, data_dir, out, *extra):
    code = main([suite, "--data-dir", str(data_dir), "--out", str(out), "--cases", "2", *extra])
    assert code == 0
    payload = json.loads((out / f"{suite}.json").read_text())
    assert (out / f"{suite}.md").read_text().startswith(f"## {suite}")
    assert payload["suite"] == suite and payload["machine"]["cpu_count"] >= 1
    return payload


def test_rigid_levels_cli(data_dir, tmp_path, capsys):
    methods = "identity,ants" if _have("ants") else "identity"
    payload = _run("rigid-levels", data_dir, tmp_path, "--datasets", "brainweb", "--methods", methods)
    cases = payload["cases"]
    n_methods = len(methods.split(","))
    assert len(cases) == 2 * 4 * 2 * n_methods  # (multi, single) x 4 levels x 2 cases x methods
    pair = bdata.brainweb_pair(data_dir, multimodal=True)
    for rec in (r for r in cases if r["method"] == "identity"):
        true = torch.tensor(rec["true_matrix_mm"], dtype=torch.float64)
        expected = metrics.corner_error(pair.grid, true, matrix_mm=torch.eye(3, dtype=torch.float64))
        assert rec["relative_error"] == pytest.approx(expected["relative_error"], rel=1e-12)
        assert rec["relative_error"] > 0.01  # even level 1 moves the corners (>= 0 deg, >= 0 px, but not both 0)
    if n_methods == 2:  # ANTs MeanSquares recovers every single-modal case on BrainWeb
        ants_single = [r for r in cases if r["method"] == "ants" and not r["multimodal"]]
        assert all(r["success"] and r["relative_error"] < 1e-3 for r in ants_single)
    printed = capsys.readouterr().out
    assert "| no registration |" in printed and "L4 success" in printed
    assert list((tmp_path / "qc").glob("*.png"))


def test_rigid_levels_cli_runs_our_preset_with_few_iterations(data_dir, tmp_path):
    """Our method through the suite (2 cases per level, half the iterations): the small
    single-modal motions are recovered, and every case is scored."""
    payload = _run("rigid-levels", data_dir, tmp_path, "--datasets", "brainweb", "--methods", "ours-rigid",
                   "--iterations-scale", "0.5", "--qc", "0")
    ours = payload["cases"]
    assert len(ours) == 2 * 4 * 2 and all(r["error"] is None and r["seconds"] > 0 for r in ours)
    assert all(r["info"]["overrides"] == {"iterations_scale": 0.5} for r in ours)
    easy = [r for r in ours if not r["multimodal"] and r["level"] <= 2]
    errors = sorted(r["relative_error"] for r in easy)
    assert all(r["success"] for r in easy) and errors[len(errors) // 2] < 1e-3, errors  # 0.0001-0.006 measured


def test_deformable2d_cli(data_dir, tmp_path):
    methods = "identity,ants-syn" if _have("ants") else "identity"
    payload = _run("deformable2d", data_dir, tmp_path, "--datasets", "brainweb", "--methods", methods, "--qc", "0")
    pair = bdata.brainweb_pair(data_dir, multimodal=False)
    for rec in (r for r in payload["cases"] if r["method"] == "identity"):
        true = protocols.random_smooth_ddf_mm(pair.grid, rms_mm=3.0, correlation_mm=30.0, seed=rec["case"],
                                              mask=pair.mask)
        length = true.norm(dim=0).numpy()[pair.mask]
        assert rec["epe_median_mm"] == pytest.approx(float(np.median(length)), rel=1e-9)  # no motion: EPE = |u|
        assert rec["folding_percent"] == 0.0 and rec["inverse_residual_mm"] < 1e-2
    if "ants-syn" in methods:
        for group in {r["group"] for r in payload["cases"]}:
            before = np.mean([r["epe_median_mm"] for r in payload["cases"] if r["group"] == group and r["method"] == "identity"])
            after = np.mean([r["epe_median_mm"] for r in payload["cases"] if r["group"] == group and r["method"] == "ants-syn"])
            assert after < 0.6 * before  # SyN (MI) on T1<-PD measured 2.55 -> 1.31 mm: a real fix, not a wrong sign


def test_deformable2d_cli_runs_the_peers(data_dir, tmp_path):
    if not (_have("convexAdam") and _have("fireants")):
        pytest.skip("convexadam / fireants not installed (extra bench)")
    payload = _run("deformable2d", data_dir, tmp_path, "--datasets", "brainweb", "--methods",
                   "identity,convexadam,fireants", "--qc", "0")
    assert any("FireANTs" in note for note in payload["notes"]) and any("convexAdam" in n for n in payload["notes"])
    for group in {r["group"] for r in payload["cases"]}:
        mine = [r for r in payload["cases"] if r["group"] == group]
        before = np.mean([r["epe_median_mm"] for r in mine if r["method"] == "identity"])
        for peer in ("convexadam", "fireants"):
            runs = [r for r in mine if r["method"] == peer]
            assert len(runs) == 2 and all(r["error"] is None for r in runs)
            assert np.mean([r["epe_median_mm"] for r in runs]) < 0.7 * before, (group, peer)  # a real fix, not a sign error


def test_brain3d_cli(data_dir, tmp_path):
    payload = _run("brain3d", data_dir, tmp_path, "--methods", "identity", "--downsample", "4", "--qc", "0")
    groups = {}
    for r in payload["cases"]:
        groups.setdefault(r["group"], []).append(r)
    assert list(groups) == ["aseg T1 inter-subject", "IXI T1 heads inter-subject (DLMUSE)"]
    assert [r["case"] for r in groups["IXI T1 heads inter-subject (DLMUSE)"]] == ["IXI013->IXI012", "IXI014->IXI013"]
    cases = groups["aseg T1 inter-subject"]
    assert [r["case"] for r in cases] == ["subject_1->test_scan", "test_scan->subject_1"]
    # no registration: Dice of the two brains (about 0.52 at full resolution), symmetric in the direction
    assert 0.4 < cases[0]["dice"] < 0.65 and cases[0]["dice"] == pytest.approx(cases[1]["dice"], abs=1e-12)
    assert cases[0]["hd95_mm"] > 1.0 and cases[0]["folding_percent"] == 0.0
    assert len(cases[0]["per_label"]) >= 28


def test_brain3d_dlmuse_heads_register(data_dir, tmp_path):
    """The DLMUSE heads lie apart in their scanners' coordinates (Dice about 0.1 as placed, every one of about
    148 labels scored); `deformable` aligns them (0.51 / 0.55 here, at 4 mm and half its iterations; 0.62 / 0.64
    at 2 mm, ANTs SyN (MI) 0.56)."""
    payload = _run("brain3d", data_dir, tmp_path, "--methods", "identity,ours", "--datasets", "dlmuse",
                   "--downsample", "2", "--qc", "0", "--iterations-scale", "0.5")
    by_method = {m: [r for r in payload["cases"] if r["method"] == m] for m in ("identity", "ours")}
    assert len(by_method["identity"]) == 2 and all(len(r["per_label"]) > 140 for r in by_method["identity"])
    assert all(r["dice"] < 0.2 for r in by_method["identity"])
    assert all(r["error"] is None and r["dice"] > 0.45 for r in by_method["ours"]), [r["dice"] for r in by_method["ours"]]


def test_multimodal3d_cli(data_dir, tmp_path):
    payload = _run("multimodal3d", data_dir, tmp_path, "--methods", "identity", "--downsample", "2", "--qc", "1")
    groups = {r["group"] for r in payload["cases"]}
    assert groups == {"stroke T2<-T1c (multi-modal)", "ixi002 T2<-T1 (multi-modal)", "prostate MR->TRUS"}
    warps = [r for r in payload["cases"] if r["group"] != "prostate MR->TRUS"]
    assert all(2.0 < r["epe_mean_mm"] < 4.0 for r in warps)  # identity: EPE = |u|, RMS 3 mm over the mask
    prostate = [r for r in payload["cases"] if r["group"] == "prostate MR->TRUS"]
    assert len(prostate) == 2 and all(0.0 < r["gland_dice"] < 1.0 for r in prostate)
    assert list((tmp_path / "qc").glob("multimodal3d_prostate_*.png"))


def test_volume_slices_are_aligned_1mm_axial_cuts(data_dir):
    pairs = bdata.volume_slice_pairs(data_dir, "stroke", multimodal=False, n_slices=5)
    assert len(pairs) == 5 and len({p.meta["slice"] for p in pairs}) == 5
    for p in pairs:
        assert p.fixed.shape == pairs[0].fixed.shape and np.array_equal(p.fixed, p.source)
        assert p.mask.mean() > 0.15  # a brain slice, not an edge cut
        assert torch.equal(p.grid.mm_from_voxel, torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)))


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["brain3d", "--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path)]) == 2
    assert "'--data-dir'" in capsys.readouterr().err


def test_cli_rejects_unknown_method(data_dir, tmp_path, capsys):
    assert main(["brain3d", "--data-dir", str(data_dir), "--out", str(tmp_path), "--methods", "elastix"]) == 2
    assert "'--methods' ['elastix']" in capsys.readouterr().err
