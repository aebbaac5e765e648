"""The start (issue 15): a global search over candidate starts, and the guard that hands on a
stage's start when the stage made the match worse."""

from __future__ import annotations

import logging

import numpy as np
import torch

from monai_inr_reg import register
from monai_inr_reg.core.grid import ImageGrid, apply_affine
from synthetic_images import gaussian_blobs


def corner_error(result, truth: torch.Tensor) -> float:
    """Mean distance (mm = voxels here) of the grid corners under the result's and the true map."""
    grid = result.fixed_grid
    corners = grid.corners_mm()
    index = torch.cartesian_prod(*[torch.tensor([0, s - 1]) for s in grid.shape]).reshape(-1, grid.ndim)
    ours = corners + torch.stack([result.ddf_mm[(slice(None), *i)] for i in index.tolist()]).to(torch.float64)
    return float((ours - apply_affine(truth, corners)).norm(dim=1).mean())


def quarter_turned(shape, axes=(0, 1)):
    """``(fixed, moving, truth)``: blobs, and the blobs turned a quarter about the grid centre in the
    plane of ``axes``; ``truth`` maps fixed LPS mm -> moving LPS mm (identity affines)."""
    fixed = gaussian_blobs(shape)
    moving = np.ascontiguousarray(np.rot90(fixed, k=1, axes=axes))
    grid = ImageGrid.from_ras_affine(shape, None)
    # moving[i] = fixed[R^-1 i] about the centre, in voxels; the map fixed -> moving is voxel rotation R
    ndim = len(shape)
    rotation = torch.eye(ndim, dtype=torch.float64)
    a, b = axes
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = 0.0, -1.0, 1.0, 0.0
    centre = torch.tensor([(s - 1) / 2 for s in shape], dtype=torch.float64)
    voxel_map = torch.eye(ndim + 1, dtype=torch.float64)
    voxel_map[:ndim, :ndim], voxel_map[:ndim, ndim] = rotation, centre - rotation @ centre
    truth = grid.mm_from_voxel @ voxel_map @ torch.linalg.inv(grid.mm_from_voxel)
    return torch.from_numpy(fixed)[None], torch.from_numpy(moving)[None], truth


def test_the_search_finds_a_quarter_turn_in_2d():
    fixed, moving, truth = quarter_turned((64, 64))
    found = register(fixed, moving, "rigid", initial_alignment="search")
    assert corner_error(found, truth) < 0.5, corner_error(found, truth)
    assert found.start["alignment"] == "search" and sum(c["won"] for c in found.start["candidates"]) == 1
    lost = register(fixed, moving, "rigid")  # from the centre of mass: a quarter turn is out of reach
    assert corner_error(lost, truth) > 5.0, corner_error(lost, truth)


def test_the_search_finds_a_quarter_turn_about_one_axis_in_3d():
    fixed, moving, truth = quarter_turned((32, 32, 32), axes=(1, 2))
    result = register(fixed, moving, "rigid", initial_alignment="search")
    assert corner_error(result, truth) < 1.0, corner_error(result, truth)  # within a voxel


def test_the_guard_hands_on_the_start_of_a_stage_that_made_things_worse(caplog):
    """A mapped-L2 stage driven off by a learning rate 1000x too high: with the guard its start is
    handed on (the match of the start, not worse); without it the result is worse than the start."""
    fixed = torch.from_numpy(gaussian_blobs((64, 56)))[None]
    moving = torch.from_numpy(gaussian_blobs((64, 56), (3.0, -2.0)))[None]
    wild = {"name": "wild", "motion": "rigid", "objective": "mapped_l2", "iterations": 40, "learning_rate_factor": 300.0}
    with caplog.at_level(logging.WARNING, logger="monai_inr_reg.register"):
        guarded = register(fixed, moving, stages=[wild])
    similarity = guarded.stages[0]["similarity"]
    assert similarity["kept_start"] and similarity["end"] > similarity["start"]
    assert "handed on" in caplog.text
    assert guarded.quality["final"] == guarded.quality["start"]  # the start, exactly
    unguarded = register(fixed, moving, stages=[{**wild, "guard": False}])
    assert not unguarded.stages[0]["similarity"]["kept_start"] and unguarded.quality["final"] > guarded.quality["final"]


def test_the_search_through_the_command_line(tmp_path):
    """`monai-inr-reg register --set initial_alignment=search` on NIfTI files: the quarter turn is found,
    and done.json says how the registration started and what each stage did."""
    import json

    import nibabel as nib

    from monai_inr_reg.cli import main

    fixed, moving, _ = quarter_turned((64, 64))
    for name, image in (("fixed", fixed), ("moving", moving)):
        nib.save(nib.Nifti1Image(image[0].numpy(), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    out = tmp_path / "out"
    assert main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "-o", str(out),
                 "--id", "turned", "--preset", "rigid", "--set", "initial_alignment=search", "--outputs", "warped,ddf"]) == 0
    done = json.loads((out / "turned" / "done.json").read_text())
    assert done["start"]["alignment"] == "search" and [s["name"] for s in done["stages"]] == ["refine"]
    ddf = torch.from_numpy(np.asarray(nib.load(str(out / "turned" / "ddf.nii.gz")).dataobj, dtype=np.float32))
    # MONAI DDF on disk: channel last for NIfTI, (X, Y, 1, 2) or (X, Y, 2): the corners of the quarter turn
    ddf = ddf.reshape(64, 64, -1).permute(2, 0, 1)
    # moving[i, j] = fixed[j, 63 - i] (np.rot90): fixed voxel (0, 0) is moving voxel (63, 0)
    assert (ddf[:, 0, 0] - torch.tensor([63.0, 0.0])).norm() < 1.0, ddf[:, 0, 0]


def test_an_inverted_contrast_3d_pair_registers_as_the_upright_one():
    """Issue 15: a 3D pair whose moving image is 1 - m (bright background) registers as well as the
    upright pair with the multi-modal preset (measured 0.277 vs 0.280 voxel, no registration 1.35)."""
    from test_deformable import mean_epe, warped_pair

    fixed, moving, truth = warped_pair((40, 40, 40), 2.0)
    body = fixed[0] > 0.05
    upright, inverted = (mean_epe(register(fixed, m, "multimodal-deformable", iterations_scale=0.5).ddf, truth, body)
                         for m in (moving, 1.0 - moving))
    assert inverted < upright + 1.0 and inverted < 0.5, (upright, inverted)


def test_the_candidates_take_their_moments_as_the_centre_of_mass_start_does():
    """One rule for which voxels weigh in the moments (``ImagePair.moment_images``): every principal-axes
    candidate turns about the fixed centre of mass and puts it on the moving one, the centre-of-mass
    start's shift, with no mask, one mask (neither image masked) and two (both masked)."""
    from monai_inr_reg.config import load_preset
    from monai_inr_reg.pair import initial_matrix, prepare_pair
    from monai_inr_reg.start import candidate_starts

    shape = (64, 48)
    fixed = torch.from_numpy(gaussian_blobs(shape))
    moving = torch.from_numpy(gaussian_blobs(shape, (3.0, -2.0)))
    mask = torch.zeros(shape)
    mask[:30] = 1  # half of the blobs: its centre is far from the whole image's
    grid = ImageGrid.from_ras_affine(shape, None)
    config = load_preset("rigid")
    centres = {}
    for masks in ((None, None), (mask, None), (None, mask), (mask, mask)):
        pair = prepare_pair(fixed[None], grid, moving[None], grid, config, "cpu", *masks)
        weighted_fixed, _ = pair.moment_images()
        fixed_centre = grid.center_of_mass_mm(weighted_fixed)
        shift = initial_matrix(pair, grid, grid, "center_of_mass")[:-1, -1]
        axes = [matrix for name, matrix in candidate_starts(pair, grid, grid) if name.startswith("principal axes")]
        assert axes
        for matrix in axes:
            moved = matrix[:-1, :-1] @ fixed_centre + matrix[:-1, -1]
            assert (moved - (fixed_centre + shift)).norm() < 1e-6, ([m is not None for m in masks], moved, fixed_centre + shift)
        centres[sum(m is not None for m in masks)] = fixed_centre
    assert (centres[2] - centres[0]).norm() > 5.0  # both masked: the masked centre, not the whole image's
