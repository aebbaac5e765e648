"""register(): recovered motion, conventions (MONAI Warp, physical space), presets and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthetic_images import phantom, shifted
from monai_inr_reg import register
from monai_inr_reg.config import load_preset
from monai_inr_reg.core.grid import ImageGrid, apply_affine
from monai_inr_reg.core.sample import warp_image_mm

FAST = {"iterations_scale": 0.5}


def non_monotone(image: torch.Tensor) -> torch.Tensor:
    """An inverted, non-monotone intensity map: another 'modality' of the same anatomy."""
    return 1.0 - (2.0 * image - 0.8).abs()


def interior_mean(ddf: torch.Tensor, margin: int = 8) -> torch.Tensor:
    inner = ddf[(slice(None),) + (slice(margin, -margin),) * (ddf.ndim - 1)]
    return inner.reshape(ddf.shape[0], -1).mean(1)


@pytest.fixture(scope="module")
def fixed2d():
    return phantom((64, 64), seed=3)


@pytest.mark.parametrize("preset, modality", [("rigid", None), ("multimodal-rigid", non_monotone)])
def test_translation_recovered_within_half_voxel(fixed2d, preset, modality):
    moving = shifted(fixed2d, (3.0, -2.0))
    if modality is not None:
        moving = modality(moving)
    result = register(fixed2d, moving, preset, seed=0)  # the presets as shipped (2-4 s here)
    recovered = interior_mean(result.ddf)
    assert torch.allclose(recovered, torch.tensor([3.0, -2.0]), atol=0.5), recovered


def test_large_translation_starts_from_the_centres_of_mass(fixed2d):
    """A shift of a fifth of the field of view: the default start (centres of mass, as ANTs does)
    puts it within reach; the recovered shift is exact to half a voxel."""
    moving = shifted(fixed2d, (12.0, -11.0))
    result = register(fixed2d, moving, "rigid", seed=0, **FAST)
    assert torch.allclose(interior_mean(result.ddf), torch.tensor([12.0, -11.0]), atol=0.5), interior_mean(result.ddf)


def pose_stages(rigid: dict | None = None, refine: dict | None = None) -> list[dict]:
    """The deformable presets' pose without its affine stage: a rigid image-net stage, then the rigid
    pyramid from its result or from the start (``candidates: [previous, start]``), each with changes."""
    capture, pyramid = load_preset("deformable")["stages"][:2]
    return [capture | (rigid or {}), pyramid | (refine or {})]


def test_run_away_stage_is_dropped_for_the_start(fixed2d):
    """A rigid image-net stage driven off by a learning rate 100x too high: with
    ``candidates: [previous, start]`` the refinement's first level also runs from the initial alignment,
    which ends better and is kept, and the shift is recovered; without it, it is not (the second
    candidate is what rescues the pair). A sound stage is kept."""
    moving = shifted(fixed2d, (3.0, -2.0))
    # the refinement's learning rate is a factor of the stage's: keep it at the preset's 3e-3
    wild = {"motions": {"rigid": {"learning_rate": 1.0}}, **FAST}
    rigid, refine = {"final_learning_rate_factor": 1.0, "warmup": 0.0}, {"learning_rate_factor": 3e-3}
    rescued = register(fixed2d, moving, "deformable", seed=0, stages=pose_stages(rigid, refine), **wild)
    assert rescued.refined_from_start
    assert torch.allclose(interior_mean(rescued.ddf), torch.tensor([3.0, -2.0]), atol=0.5), interior_mean(rescued.ddf)
    lost = register(fixed2d, moving, "deformable", seed=0, stages=pose_stages(rigid, refine | {"candidates": ["previous"]}),
                    **wild)
    assert not lost.refined_from_start
    assert (interior_mean(lost.ddf) - torch.tensor([3.0, -2.0])).abs().max() > 2.0, interior_mean(lost.ddf)
    sound = register(fixed2d, shifted(fixed2d, (9.0, -2.0)), "deformable", seed=0, stages=pose_stages(),
                     initial_alignment="none", **FAST)
    assert not sound.refined_from_start  # 9 px from the identity start: the stage's result is the better one


def test_rigid_preset_is_exactly_rigid(fixed2d):
    angle = math.radians(6.0)
    grid = ImageGrid.from_ras_affine((64, 64), None)
    c = grid.center_mm()
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    truth = torch.eye(3, dtype=torch.float64)
    truth[:2, :2], truth[:2, 2] = rot, c + torch.tensor([1.5, -1.0], dtype=torch.float64) - rot @ c
    # moving(truth(x)) = fixed(x): sample fixed at truth^-1 of every voxel
    moving = warp_image_mm(fixed2d, grid, apply_affine(torch.linalg.inv(truth), grid.mm_points(dtype=torch.float64)), (64, 64))
    result = register(fixed2d, moving, "rigid", **FAST)
    linear = result.matrix_mm[:2, :2]
    assert result.parametric and result.motion == "rigid"
    assert torch.allclose(linear.T @ linear, torch.eye(2, dtype=torch.float64), atol=1e-10)
    assert abs(float(torch.linalg.det(linear)) - 1.0) < 1e-10
    # the field is the matrix, exactly
    points = grid.mm_points(dtype=torch.float64)
    expected = (apply_affine(result.matrix_mm, points) - points).T.reshape(2, 64, 64)
    assert torch.allclose(result.ddf_mm.to(torch.float64), expected, atol=1e-4)
    # and it is the right one: corners within half a voxel
    corners = grid.corners_mm()
    error = (apply_affine(result.matrix_mm, corners) - apply_affine(truth, corners)).norm(dim=1).mean()
    assert error < 0.5, float(error)


def test_monai_warp_reproduces_warped(fixed2d):
    from monai.networks.blocks import Warp

    moving = shifted(fixed2d, (2.0, 1.0))
    result = register(fixed2d, moving, "rigid", iterations_scale=0.2)
    by_monai = Warp(mode="bilinear", padding_mode="zeros")(moving[None], result.ddf[None])[0]
    assert torch.allclose(by_monai, result.warped.as_tensor(), atol=1e-4)
    assert torch.allclose(result.warped.affine.to(torch.float64), torch.eye(3, dtype=torch.float64))


def test_pair_on_different_grids_registers_in_physical_space(fixed2d):
    """Moving sampled on a coarser, shifted grid (MetaTensors with affines) plus a 3 mm motion."""
    from monai.data import MetaTensor

    fixed_affine = torch.diag(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    moving_affine = torch.tensor([[1.5, 0.0, -6.0], [0.0, 1.25, 4.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    fixed_grid = ImageGrid.from_ras_affine((64, 64), fixed_affine)
    moving_grid = ImageGrid.from_ras_affine((48, 56), moving_affine)
    shift_mm = torch.tensor([3.0, -2.0], dtype=torch.float64)  # LPS mm, fixed -> moving
    # moving(x + shift) = fixed(x)  =>  moving(y) = fixed(y - shift)
    moving = warp_image_mm(fixed2d, fixed_grid, moving_grid.mm_points(dtype=torch.float64) - shift_mm, moving_grid.shape)
    result = register(MetaTensor(fixed2d, affine=fixed_affine), MetaTensor(moving, affine=moving_affine), "rigid", **FAST)
    recovered_mm = interior_mean(result.ddf_mm)
    assert torch.allclose(recovered_mm.to(torch.float64), shift_mm, atol=0.5), recovered_mm
    assert result.warped.shape == (1, 64, 64)
    assert torch.allclose(result.warped.affine.to(torch.float64), fixed_affine)
    # warping a moving-grid label with nearest keeps its values
    labels = (moving > 0.5).to(torch.int64)
    warped_labels = result.warp(labels, mode="nearest")
    assert set(torch.unique(warped_labels.as_tensor()).tolist()) <= {0, 1}


def test_seeded_runs_are_deterministic(fixed2d):
    """On the CPU (the default device where CUDA is present; its atomics make GPU runs differ in the last bits)."""
    moving = shifted(fixed2d, (1.0, 1.0))
    a = register(fixed2d, moving, "rigid", seed=5, iterations_scale=0.05, device="cpu")
    b = register(fixed2d, moving, "rigid", seed=5, iterations_scale=0.05, device="cpu")
    assert a.loss_history == b.loss_history
    assert torch.equal(a.ddf, b.ddf)


@pytest.mark.parametrize("fixed, moving, match", [
    (torch.full((1, 8, 8), float("nan")), torch.rand(1, 8, 8), "'fixed' has 64 NaN"),
    (torch.rand(1, 8, 8), torch.ones(1, 8, 8), "'moving' is constant"),
    (torch.rand(1, 8, 8), torch.rand(1, 8, 8, 8), "2D but 'moving' is 3D"),
    (torch.rand(2, 8, 8, 8), torch.rand(1, 8, 8, 8), "'fixed' has 2 channels .* pick it first"),
    (torch.rand(8, 8), torch.rand(1, 8, 8), "'fixed' must be channel-first"),
    (torch.rand(1, 0, 8), torch.rand(1, 8, 8), "'fixed' is empty"),
])
def test_bad_images_fail_before_work(fixed, moving, match):
    with pytest.raises(ValueError, match=match):
        register(fixed, moving, "rigid")


def test_singular_affine_and_missing_file_are_named(tmp_path):
    from monai.data import MetaTensor

    with pytest.raises(ValueError, match="'moving' affine is not invertible"):
        register(torch.rand(1, 8, 8), MetaTensor(torch.rand(1, 8, 8), affine=torch.zeros(3, 3)), "rigid")
    with pytest.raises(FileNotFoundError, match="'fixed' file"):
        register(str(tmp_path / "absent.nii.gz"), torch.rand(1, 8, 8), "rigid")


@pytest.mark.parametrize("kwargs, match", [({"preset": "rigd"}, "unknown preset 'rigd'"),
                                           ({"preset": "rigid", "iterashuns": 3}, "unknown option 'iterashuns'"),
                                           ({"preset": "rigid", "motions": {"rigid": {"lr": 1}}},
                                            "unknown option 'motions.rigid.lr'"),
                                           ({"preset": "deformable", "stages": {"rigid": {"lr": 1}}},
                                            r"stage 0 \('rigid'\): unknown option 'lr'; valid stage options: bins, candidates"),
                                           ({"preset": "deformable", "stages": {"rigid": {"motion": "elastic"}}},
                                            "'motion' must be one of"),
                                           ({"preset": "rigid", "stages": {"rigd": {"iterations": 1}}},
                                            r"no stage named 'rigd' to change; the stages are \['refine'\]"),
                                           ({"preset": "rigid", "initial_alignment": "moments"},
                                            "'initial_alignment' must be one of"),
                                           ({"preset": "multimodal-deformable", "on_weak_evidence": "ignore"},
                                            r"'on_weak_evidence' must be one of \('bounded', 'as_placed', 'warn'\), got 'ignore'"),
                                           ({"preset": "rigid", "stages": {"refine": {"candidates": "yes"}}},
                                            "'candidates' must be a list of distinct"),
                                           ({"preset": "rigid", "stages": {"refine": {"learning_rate_factor": [0.3, 0.1]}}},
                                            r"'learning_rate_factor' must be one number or one per level \(4"),
                                           # an option its objective ignores is an error, not silently dropped
                                           ({"preset": "deformable", "stages": {"deformable": {"robust_scale": 0.5}}},
                                            "'robust_scale' applies to objective mapped_l2 only"),
                                           ({"preset": "rigid", "stages": {"refine": {"smoothness_weight": 1.0}}},
                                            "'smoothness_weight' applies to model hash or grid only"),
                                           ({"preset": "deformable", "stages": {"deformable": {"candidates": ["previous", "start"]}}},
                                            "candidate 'start' needs a rigid or affine motion")])
def test_bad_options_fail_before_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        register(torch.rand(1, 8, 8), torch.rand(1, 8, 8), **kwargs)


def test_file_inputs(tmp_path, fixed2d):
    nib = pytest.importorskip("nibabel")
    moving = shifted(fixed2d, (2.0, 0.0))
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    for name, image in (("fixed", fixed2d), ("moving", moving)):
        nib.save(nib.Nifti1Image(image[0].numpy()[..., None], affine), str(tmp_path / f"{name}.nii.gz"))
    result = register(str(tmp_path / "fixed.nii.gz"), tmp_path / "moving.nii.gz", "rigid", **FAST)
    assert result.fixed_grid.shape[:2] == (64, 64)
    recovered = interior_mean(result.ddf)[:2]
    assert torch.allclose(recovered, torch.tensor([2.0, 0.0]), atol=0.5), recovered


def test_a_stage_list_of_your_own(fixed2d):
    """``stages=[...]``: one rigid stage on mutual information over two smoothing levels recovers a
    shift; ``result.stages`` says what ran."""
    moving = shifted(fixed2d, (3.0, -2.0))
    stage = {"name": "pose", "motion": "rigid", "objective": "mutual_information", "iterations": 300,
             "smoothing_voxels": [2, 0], "fixed_points": [512, 2048]}  # points per level
    result = register(fixed2d, moving, stages=[stage], initial_alignment="none")
    assert torch.allclose(interior_mean(result.ddf), torch.tensor([3.0, -2.0]), atol=0.5), interior_mean(result.ddf)
    [record] = result.stages
    assert (record["name"], record["objective"], record["motion"], record["iterations"]) == \
        ("pose", "mutual_information", "rigid", 300)
    assert record["final_loss"] == result.loss_history[-1] and record["started_from"] == "previous"
    assert result.parametric and result.motion == "rigid" and result.quality["metric"] == "mutual_information"


def test_iterations_by_dimension(tmp_path, fixed2d):
    """``iterations: {2d: ..., 3d: ...}``: a 2D pair (here NIfTI files through MONAI's loader) runs the first."""
    nib = pytest.importorskip("nibabel")
    stage = {"name": "pose", "motion": "rigid", "objective": "mapped_l2", "iterations": {"2d": [4, 2], "3d": 12},
             "smoothing_voxels": [1, 0]}
    for name, image in (("fixed", fixed2d), ("moving", shifted(fixed2d, (1.0, 0.0)))):
        nib.save(nib.Nifti1Image(image[0].numpy()[..., None], np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    flat = register(str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), stages=[stage])
    volume = phantom((16, 16, 16), seed=1)
    solid = register(volume, volume, stages=[stage])
    assert (flat.stages[0]["iterations"], len(flat.loss_history)) == (6, 6)
    assert (solid.stages[0]["iterations"], len(solid.loss_history)) == (12, 12)


def test_points_and_motion_nets_by_dimension(fixed2d, monkeypatch):
    """Given by dimension (``{2d: ..., 3d: ...}``), a hash stage's ``penalty_points`` (the regulariser
    takes the first of each iteration's fixed points) and a motion's ``encoding`` / ``network`` values
    take their ``2d`` entry on a 2D pair and their ``3d`` entry on a 3D one; without a regulariser, no
    penalty points."""
    from monai_inr_reg.motion import HashMotion

    asked, nets = [], []
    real, real_init = HashMotion.moved_and_gradient, HashMotion.__init__

    def spy(self, points_mm, level_weights, n_gradient, step_unit):
        asked.append((points_mm.shape[0], n_gradient))
        moved, gradient = real(self, points_mm, level_weights, n_gradient, step_unit)
        assert gradient.shape == (min(n_gradient, points_mm.shape[0]),) + (points_mm.shape[1],) * 2
        return moved, gradient

    def spy_init(self, box, encoding, network, *args, **kwargs):
        real_init(self, box, encoding, network, *args, **kwargs)
        nets.append((encoding["finest_resolution"], network["n_neurons"], self.net.encoding.spec.sizes[-1]))

    monkeypatch.setattr(HashMotion, "moved_and_gradient", spy)
    monkeypatch.setattr(HashMotion, "__init__", spy_init)
    stage = {"name": "field", "motion": "deformable", "objective": "mutual_information", "iterations": 3,
             "fixed_points": 500, "smoothness_weight": 0.3, "penalty_points": {"2d": 40, "3d": 70}}
    by_dimension = {"motions.deformable.encoding.finest_resolution": {"2d": 8, "3d": 4},
                    "motions.deformable.network.n_neurons": {"2d": 16, "3d": 32}}
    volume = phantom((12, 12, 12), seed=1)
    for image, points, penalty, net in ((fixed2d, 500, 40, (8, 16, 9 ** 2)), (volume, 500, 70, (4, 32, 5 ** 3))):
        asked.clear(), nets.clear()
        register(image, shifted(image, (1.0,) + (0.0,) * (image.ndim - 2)), stages=[stage], initial_alignment="none",
                 **by_dimension)
        assert asked == [(points, penalty)] * 3 and nets == [net]
    asked.clear()
    register(fixed2d, fixed2d, stages=[stage | {"smoothness_weight": 0.0}], initial_alignment="none")
    assert asked == []


def test_fine_fields_take_fine_field_penalty_points(fixed2d, monkeypatch):
    """Where the motion's finest cell (the box edge over ``finest_resolution``) spans under 1.5 fixed
    voxels along the coarsest axis, the regulariser takes ``fine_field_penalty_points``; elsewhere
    ``penalty_points``. The 64 x 64 phantom's box is 75.6 voxels: 1.18-voxel cells at 64, 1.89 at 40;
    64 x 32 voxels of 1 x 2 mm take the same box, 0.95 of their 2 mm voxels at 40."""
    from monai.data import MetaTensor

    from monai_inr_reg.motion import HashMotion

    asked = []
    real = HashMotion.moved_and_gradient

    def spy(self, points_mm, level_weights, n_gradient, step_unit):
        asked.append(n_gradient)
        return real(self, points_mm, level_weights, n_gradient, step_unit)

    monkeypatch.setattr(HashMotion, "moved_and_gradient", spy)
    stage = {"name": "field", "motion": "deformable", "objective": "mutual_information", "iterations": 2,
             "fixed_points": 500, "smoothness_weight": 0.3, "penalty_points": {"2d": 40, "3d": 70},
             "fine_field_penalty_points": 90}
    anisotropic = MetaTensor(fixed2d[:, :, :32].clone(), affine=torch.diag(torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=torch.float64)))
    volume = phantom((12, 12, 12), seed=1)
    for image, finest, fine, wanted in ((fixed2d, 64, 90, 90), (fixed2d, 40, 90, 40), (fixed2d, 64, 0, 40),
                                        (anisotropic, 40, 90, 90), (volume, 64, 90, 90), (volume, 4, 90, 70)):
        asked.clear()
        register(image, image, stages=[stage | {"fine_field_penalty_points": fine}], initial_alignment="none",
                 **{"motions.deformable.encoding.finest_resolution": finest})
        assert asked == [wanted] * 2, (tuple(image.shape), finest, fine, asked)


def test_convergence_stops_a_level_when_its_loss_stops_improving(fixed2d):
    from monai_inr_reg.fit import converged

    assert converged([1.0, 1.0, 1.0, 1.0], 4, 1e-3) and not converged([4.0, 3.0, 2.0, 1.0], 4, 1e-3)
    assert not converged([1.0, 1.0, 1.0], 4, 1e-3)  # fewer losses than the window
    moving = shifted(fixed2d, (3.0, -2.0))
    stage = {"name": "pose", "motion": "rigid", "objective": "mapped_l2", "iterations": [400, 400],
             "smoothing_voxels": [2, 0], "schedule": "per_level", "convergence_window": 30, "convergence_tolerance": 0.02}
    runs = [register(fixed2d, moving, stages=[stage], initial_alignment="none") for _ in range(2)]
    assert runs[0].loss_history == runs[1].loss_history  # deterministic for a seed
    assert runs[0].stages[0]["iterations"] < 800  # stopped early
    assert torch.allclose(interior_mean(runs[0].ddf), torch.tensor([3.0, -2.0]), atol=0.5), interior_mean(runs[0].ddf)


def test_the_candidates_level_runs_whole_and_later_levels_stop(fixed2d):
    """With ``candidates``, every candidate runs the first level to its end (they are compared after the
    same effort: a start far off can sit on a plateau before it descends); the convergence window stops
    the later levels (here at once: a tolerance nothing meets)."""
    moving = shifted(fixed2d, (3.0, -2.0))
    stage = {"name": "pose", "motion": "rigid", "objective": "mapped_l2", "iterations": [40, 40],
             "smoothing_voxels": [2, 0], "schedule": "per_level", "candidates": ["previous", "start"],
             "convergence_window": 2, "convergence_tolerance": 1e9}
    result = register(fixed2d, moving, stages=[stage], initial_alignment="none")
    assert result.stages[0]["iterations"] == 40 + 2


def test_a_mind_stage_registers_a_non_monotone_contrast(fixed2d):
    """``objective: mind`` (MIND-SSC features, L2): a rigid stage and then a hash field on it recover a
    shift between contrasts that no intensity map relates monotonically; the field stays smooth."""
    moving = non_monotone(shifted(fixed2d, (3.0, -2.0)))
    pose = {"name": "pose", "motion": "rigid", "objective": "mind", "iterations": 300, "smoothing_voxels": [2, 0]}
    field = {"name": "field", "motion": "deformable", "objective": "mind", "iterations": 150, "smoothness_weight": 1.0,
             "guard": False}
    result = register(fixed2d, moving, stages=[pose, field], initial_alignment="none")
    assert [s["objective"] for s in result.stages] == ["mind", "mind"]
    assert torch.allclose(interior_mean(result.ddf), torch.tensor([3.0, -2.0]), atol=0.5), interior_mean(result.ddf)
    assert result.stages[0]["similarity"]["end"] < result.stages[0]["similarity"]["start"]


def test_a_local_cc_stage_registers_a_shift(fixed2d):
    """``objective: local_cc`` (windowed correlation, ANTs' CC): a rigid stage and then a hash field
    recover a shift between an image and a brighter, offset copy; an unknown window key is refused."""
    moving = 0.2 + 1.5 * shifted(fixed2d, (3.0, -2.0))
    pose = {"name": "pose", "motion": "rigid", "objective": "local_cc", "iterations": 300, "smoothing_voxels": [2, 0]}
    field = {"name": "field", "motion": "deformable", "objective": "local_cc", "window_radius": 2, "iterations": 150,
             "smoothness_weight": 0.3}
    result = register(fixed2d, moving, stages=[pose, field], initial_alignment="none")
    assert [s["objective"] for s in result.stages] == ["local_cc", "local_cc"]
    assert torch.allclose(interior_mean(result.ddf), torch.tensor([3.0, -2.0]), atol=0.5), interior_mean(result.ddf)
    assert result.stages[1]["similarity"]["end"] < -0.5  # a mean windowed correlation near 1
    with pytest.raises(ValueError, match="window_radius"):
        register(fixed2d, moving, stages=[{**pose, "objective": "mutual_information", "window_radius": 2}])
