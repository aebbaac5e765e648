"""Baselines and methods return maps in our convention (fixed LPS mm -> moving LPS mm), checked by measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_inr_reg.bench import metrics as bm
from monai_inr_reg.bench import methods, protocols
from monai_inr_reg.core.grid import ImageGrid
from monai_inr_reg.result import RegistrationResult


def _moved(pair, angle, shift):
    true = protocols.rigid_matrix_mm(protocols.RigidCase(1, 0, angle, shift), pair.grid)
    return true, protocols.move_rigid(pair.source, pair.grid, true)


def test_identity_method_scores_zero_on_unmoved_pair(pair_2d):
    out = methods.run_method("identity", pair_2d.fixed, pair_2d.grid, pair_2d.fixed, pair_2d.grid, multimodal=False)
    score = bm.corner_error(pair_2d.grid, torch.eye(3, dtype=torch.float64), matrix_mm=out.matrix_mm)
    assert score["corner_error_mm"] == 0.0 and score["success"]


def test_ants_rigid_recovers_translation_with_its_sign(pair_2d):
    pytest.importorskip("ants")
    from monai_inr_reg.bench.baselines import ants_rigid

    true, moving = _moved(pair_2d, 0.0, (3.0, -2.0))
    found = ants_rigid(pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, metric="meansquares")
    assert torch.allclose(found[:2, 2], torch.tensor([3.0, -2.0], dtype=torch.float64), atol=0.1)
    true, moving = _moved(pair_2d, 6.0, (2.0, 1.0))
    found = ants_rigid(pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, metric="mattes")
    # MI on a tiny image is less exact (0.45-2.1 mm here, by seed, threads and load); a sign or frame error costs > 8 mm
    assert bm.corner_error(pair_2d.grid, true, matrix_mm=found)["corner_error_mm"] < 4.0


def test_ants_rigid_on_oblique_grid_matches_physical_truth(pair_2d):
    """Origin, anisotropic spacing and a rotated direction are handed to ANTs exactly."""
    pytest.importorskip("ants")
    from monai_inr_reg.bench.baselines import ants_rigid

    c, s = np.cos(0.3), np.sin(0.3)
    affine = torch.tensor([[1.2 * c, -0.9 * s, 5.0], [1.2 * s, 0.9 * c, -7.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    grid = ImageGrid.from_ras_affine(pair_2d.fixed.shape, affine)
    true = protocols.rigid_matrix_mm(protocols.RigidCase(1, 0, 4.0, (2.0, -1.5)), grid)
    moving = protocols.move_rigid(pair_2d.source, grid, true)
    found = ants_rigid(pair_2d.fixed, grid, moving, grid, metric="meansquares")
    assert bm.corner_error(grid, true, matrix_mm=found)["corner_error_mm"] < 0.3


def _scaled(pair):
    """A pair whose moving image is the source under anisotropic scaling (1.08, 0.93) about the centre and a shift."""
    center = pair.grid.center_mm()
    linear = torch.diag(torch.tensor([1.08, 0.93], dtype=torch.float64))
    true = torch.eye(3, dtype=torch.float64)
    true[:2, :2], true[:2, 2] = linear, center - linear @ center + torch.tensor([1.5, -2.0], dtype=torch.float64)
    return true, protocols.move_rigid(pair.source, pair.grid, true)


def test_ours_affine_recovers_a_scaling(pair_2d):
    """`ours-affine` (preset affine) finds an anisotropic scaling that no rigid map reaches (ANTs rigid ends
    4.7 mm off at the corners); it refuses a multi-modal pair (the preset is single-modal)."""
    true, moving = _scaled(pair_2d)
    out = methods.run_method("ours-affine", pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, multimodal=False)
    assert bm.corner_error(pair_2d.grid, true, matrix_mm=out.matrix_mm)["corner_error_mm"] < 0.5
    with pytest.raises(ValueError, match="multi-modal"):
        methods.run_method("ours-affine", pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, multimodal=True)


def test_ants_affine_recovers_a_scaling_in_our_convention(pair_2d):
    pytest.importorskip("ants")
    from monai_inr_reg.bench.baselines import ants_affine

    true, moving = _scaled(pair_2d)
    found = ants_affine(pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, metric="meansquares")
    assert bm.corner_error(pair_2d.grid, true, matrix_mm=found)["corner_error_mm"] < 0.2  # measured 0.03
    # with Mattes MI (the bench's setting; as SyN's linear part) this smooth 96 x 80 image is too plain: 3.3 mm


def test_ants_syn_field_of_a_translation(pair_2d):
    pytest.importorskip("ants")
    from monai_inr_reg.bench.baselines import ants_syn

    ddf = torch.zeros(2, *pair_2d.grid.shape, dtype=torch.float64)
    ddf[0], ddf[1] = 2.0, -1.0
    moving, _ = protocols.move_deformable(pair_2d.source, pair_2d.grid, ddf)
    found = ants_syn(pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, metric="CC")
    assert found.shape == ddf.shape
    epe = bm.endpoint_error(found, ddf, pair_2d.mask)
    # of a 2.2 mm shift (no registration: 2.2 mm; a sign error: 4.5 mm); SyN CC leaves 0.1-0.3 mm, and
    # 0.52 mm was seen in a clean-clone CI run (ANTs' threads are not pinned in the test process)
    assert epe["epe_median_mm"] < 1.0


def test_elastix_rigid_multistart(pair_2d, tmp_path, monkeypatch):
    itk = pytest.importorskip("itk")
    if not hasattr(itk, "elastix_registration_method"):
        pytest.skip("itk-elastix is not installed")
    from monai_inr_reg.bench.baselines import elastix_rigid

    monkeypatch.chdir(tmp_path)
    true, moving = _moved(pair_2d, -7.0, (2.5, 3.0))
    found, info = elastix_rigid(pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, resolutions=2, iterations=200)
    assert len(info["metrics"]) == 3 and info["start_rad"] in (-0.4, 0.0, 0.4)
    assert bm.corner_error(pair_2d.grid, true, matrix_mm=found)["corner_error_mm"] < 0.3
    assert not list(tmp_path.iterdir())  # transformix writes nothing into the working directory


def test_ours_output_is_read_from_the_result(pair_2d, monkeypatch):
    """A stub register() returning the exact truth must score 0; the preset and overrides reach it."""
    import importlib

    register_module = importlib.import_module("monai_inr_reg.register")

    true, moving = _moved(pair_2d, 9.0, (-3.0, 2.0))
    seen = {}

    def fake_register(fixed, moving_image, preset, *, seed, progress, **overrides):
        seen.update(preset=preset, overrides=overrides, affine=torch.as_tensor(fixed.affine))
        grid = pair_2d.grid
        points = grid.mm_points(dtype=torch.float64)
        ddf_mm = (points @ true[:2, :2].T + true[:2, 2] - points).T.reshape(2, *grid.shape)
        ddf = torch.einsum("ij,j...->i...", torch.linalg.inv(grid.mm_from_voxel[:2, :2]), ddf_mm).float()
        motion = overrides["stages"][-1]["motion"] if "stages" in overrides else "rigid"
        return RegistrationResult(grid, grid, ddf, true.clone(), motion == "rigid", motion, torch.as_tensor(moving_image))

    monkeypatch.setattr(register_module, "register", fake_register)
    out = methods.run_method("ours-rigid", pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, multimodal=True,
                             iterations_scale=0.1)
    assert seen["preset"] == "multimodal-rigid" and seen["overrides"] == {"iterations_scale": 0.1}
    assert torch.allclose(seen["affine"].double(), pair_2d.grid.affine_ras)  # identity RAS for 2D arrays
    assert bm.corner_error(pair_2d.grid, true, matrix_mm=out.matrix_mm)["corner_error_mm"] < 1e-9
    out = methods.run_method("ours-near-rigid", pair_2d.fixed, pair_2d.grid, moving, pair_2d.grid, multimodal=False)
    assert seen["preset"] == "rigid" and [s["motion"] for s in seen["overrides"]["stages"]] == ["near_rigid"] * 2
    assert out.matrix_mm is None
    assert bm.corner_error(pair_2d.grid, true, ddf_mm=out.ddf_mm)["corner_error_mm"] < 1e-3


def test_unknown_method_raises(pair_2d):
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        methods.run_method("foo", pair_2d.fixed, pair_2d.grid, pair_2d.fixed, pair_2d.grid, multimodal=False)
