"""result.quality: the match before and after, a 'suspect' flag when the registration made things worse,
and 'weak_evidence' (with the images returned as placed) when the images share too little to judge."""

from __future__ import annotations

import csv
import json
import logging

import nibabel as nib
import pytest
import numpy as np
import torch

from monai_inr_reg import register
from monai_inr_reg.cli import main
from monai_inr_reg.core.losses import gaussian_smooth
from synthetic_images import gaussian_blobs

SHAPE = (64, 56)


def pair():
    return (torch.from_numpy(gaussian_blobs(SHAPE))[None], torch.from_numpy(gaussian_blobs(SHAPE, (3.0, -2.0)))[None])


def unrelated_textures(shape=SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent smooth noise images ``(1, *shape)``: nothing to align. As placed they share
    about 0.04 nats of mutual information; a deformable field matching texture to texture makes 10x that."""
    images = []
    for seed in (1, 2):
        noise = gaussian_smooth(torch.rand((1,) + tuple(shape), generator=torch.Generator().manual_seed(seed)), 2.0)
        images.append((noise - noise.min()) / (noise.max() - noise.min()))
    return images[0], images[1]


def translation(shift_mm) -> torch.Tensor:
    matrix = torch.eye(len(shift_mm) + 1, dtype=torch.float64)
    matrix[:-1, -1] = torch.tensor(shift_mm, dtype=torch.float64)
    return matrix


def write_nifti(folder, fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, str]:
    """``fixed.nii.gz`` and ``moving.nii.gz`` (identity affine) in ``folder``: their paths by name."""
    paths = {}
    for name, image in (("fixed", fixed), ("moving", moving)):
        paths[name] = str(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(image[0].numpy(), np.eye(4)), paths[name])
    return paths


def quarter_turn() -> torch.Tensor:
    """A 90-degree start about the grid centre (LPS mm of an identity-affine grid): far from the truth."""
    centre = -(torch.tensor(SHAPE, dtype=torch.float64) - 1) / 2
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[:2, :2], matrix[:2, 2] = rotation, centre - rotation @ centre
    return matrix


def test_a_good_registration_is_not_suspect():
    fixed, moving = pair()
    quality = register(fixed, moving, "rigid").quality
    assert quality["metric"] == "mean_squares" and not quality["suspect"]  # the last stage's metric
    assert quality["final"] < 0.01 * quality["no_registration"]  # the match improved a hundredfold


def test_a_registration_that_makes_things_worse_is_flagged(caplog):
    fixed, moving = pair()
    with caplog.at_level(logging.WARNING, logger="monai_inr_reg.register"):
        result = register(fixed, moving, "rigid", initial_transform=quarter_turn(), iterations_scale=0.05,
                          stages={"refine": {"candidates": ["previous"]}})
    quality = result.quality
    assert quality["suspect"] and quality["final"] > quality["no_registration"]
    assert "SUSPECT result" in caplog.text and "with no registration" in caplog.text


def test_the_metrics_row_carries_the_flag(tmp_path):
    paths = write_nifti(tmp_path, *pair())
    start = tmp_path / "start.tfm"
    import itk

    transform = itk.AffineTransform[itk.D, 2].New()
    matrix = quarter_turn()
    transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(matrix[:2, :2].numpy())))
    transform.SetTranslation([float(v) for v in matrix[:2, 2]])
    itk.transformwrite([transform], str(start))
    out = tmp_path / "out"
    assert main(["register", paths["fixed"], paths["moving"], "-o", str(out), "--id", "good", "--preset", "rigid"]) == 0
    assert main(["register", paths["fixed"], paths["moving"], "-o", str(out), "--id", "bad", "--preset", "rigid",
                 "--initial-transform", str(start), "--set", "iterations_scale=0.05",
                 "--set", "stages.refine.candidates=[previous]"]) == 0
    with open(out / "metrics.csv") as fh:
        rows = {r["pair"]: r for r in csv.DictReader(fh)}
    assert rows["good"]["suspect"] == "False" and rows["bad"]["suspect"] == "True"
    assert rows["good"]["weak_evidence"] == rows["bad"]["weak_evidence"] == "False"  # mapped_l2: MI only
    assert float(rows["bad"]["similarity"]) > float(rows["bad"]["similarity_before"])
    assert json.loads((out / "metrics.json").read_text())["summary"]["suspect"] == 1
    assert json.loads((out / "bad" / "done.json").read_text())["quality"]["suspect"] is True


def test_weak_evidence_flags_a_prostate_mr_trus_pair_and_not_a_brain_pair(shared_data, caplog):
    """The images as placed share little information (MR -> TRUS, fields of view that differ) and the
    field makes most of the match: flagged. A multi-modal brain slice shifted by a few mm: not flagged."""
    from monai.data import MetaTensor

    from monai_inr_reg.bench import data as bdata

    def as_input(image, grid):
        return MetaTensor(torch.as_tensor(image)[None], affine=grid.affine_ras.clone())

    prostate = bdata.prostate_pairs(shared_data, cases=1)[0]
    with caplog.at_level(logging.WARNING, logger="monai_inr_reg.register"):
        result = register(as_input(prostate.fixed, prostate.fixed_grid), as_input(prostate.moving, prostate.moving_grid),
                          "multimodal-deformable")
    quality = result.quality
    assert quality["metric"] == "mutual_information" and quality["weak_evidence"] and not quality["suspect"]
    assert -min(quality["no_registration"], quality["start"]) < 0.25 and -quality["final"] < 0.45  # after the pose
    assert quality["skipped"] == ["deformable"]
    assert "WEAK EVIDENCE" in caplog.text
    assert quality["returned"] == "bounded" and float(result.ddf.abs().max()) <= 16.0 + 1e-4  # within the two searches' reach
    from monai_inr_reg.core.sample import warp_image_mm
    from monai_inr_reg.metrics import label_overlap

    def gland_dice(warped):
        return label_overlap(prostate.fixed_labels[:1], warped.numpy()[:1], prostate.fixed_grid.spacing.tolist(),
                             hd95=False)["per_label"][1]["dice"]

    labels = torch.as_tensor(prostate.moving_labels)
    as_placed = warp_image_mm(labels, prostate.moving_grid, prostate.fixed_grid.mm_points(dtype=torch.float64),
                              prostate.fixed_grid.shape, mode="nearest")
    before, after = gland_dice(as_placed), gland_dice(result.warp(labels, mode="nearest"))
    assert after > before + 0.03, (before, after)  # 0.46 -> 0.53 (docs/benchmarks.md, sixth session)
    brain = bdata.brainweb_pair(shared_data, multimodal=True)
    moving = torch.roll(torch.as_tensor(brain.source), shifts=(3, -2), dims=(0, 1)).numpy()
    quality = register(as_input(brain.fixed, brain.grid), as_input(moving, brain.grid), "multimodal-deformable").quality
    assert quality["metric"] == "mutual_information" and not quality["weak_evidence"] and not quality["suspect"]
    assert quality["returned"] == "registration"


WEAK_FAST = {"iterations_scale": 0.3}  # the flag needs only a field that manufactures a match


def test_weak_evidence_registers_again_within_bounds_or_returns_the_images_as_placed(caplog):
    """Unrelated images: the registration is run and measured, then by default registered again from
    the images as placed with the `bounded` preset (nothing moves farther than its radius); with
    ``on_weak_evidence="as_placed"`` what comes back is what the inputs state (the identity, or the
    initial_transform given); with ``"warn"``, the field."""
    fixed, moving = unrelated_textures()
    with caplog.at_level(logging.WARNING, logger="monai_inr_reg.register"):
        bounded = register(fixed, moving, "multimodal-deformable", **WEAK_FAST)
    quality = bounded.quality
    assert quality["weak_evidence"] and quality["returned"] == "bounded"
    # seen before the field: the pose still shares little, so the field stage does not run
    assert -quality["no_registration"] < 0.1 and -quality["final"] < 0.45 and quality["skipped"] == ["deformable"]
    assert bounded.motion == "bounded" and not bounded.parametric
    assert [s["name"] for s in bounded.stages] == ["rigid", "rigid_refine", "affine", "bounded"]
    # the time of both runs; one dense field, the returned one's
    assert set(bounded.stage_seconds) == {"start", "rigid", "rigid_refine", "affine", "bounded.start", "bounded.bounded",
                                          "field"}
    assert sum(bounded.stage_seconds.values()) <= bounded.seconds + 1e-6
    assert quality["bounded"]["metric"] == "mind" and bounded.start["alignment"] == "none"
    assert float(bounded.ddf.abs().max()) <= 16.0 + 1e-4  # the bounded preset's reach: two searches of 8 voxels
    assert "Registered again from the images as placed" in caplog.text

    with caplog.at_level(logging.WARNING, logger="monai_inr_reg.register"):
        placed = register(fixed, moving, "multimodal-deformable", on_weak_evidence="as_placed", **WEAK_FAST)
    assert placed.quality["returned"] == "as_placed" and placed.quality["final"] == quality["final"]
    assert placed.parametric and torch.equal(placed.matrix_mm, torch.eye(3, dtype=torch.float64))
    assert placed.ddf.abs().max() == 0 and torch.allclose(placed.warped.as_tensor(), moving, atol=1e-5)
    assert "Returned the images as placed" in caplog.text

    kept = register(fixed, moving, "multimodal-deformable", on_weak_evidence="warn", **WEAK_FAST)
    assert kept.quality["weak_evidence"] and kept.quality["returned"] == "registration" and not kept.parametric
    assert "skipped" not in kept.quality and [s["name"] for s in kept.stages][-1] == "deformable"
    assert kept.ddf.abs().max() > 1.0  # the field that was not fitted above
    assert -kept.quality["final"] > 3 * -kept.quality["no_registration"]  # it made the match it reports

    # a stage list with no pose before its field: no early look, the flag comes from the field's gain
    field_only = [{"name": "field", "motion": "deformable", "objective": "mutual_information", "iterations": 120}]
    late = register(fixed, moving, "multimodal-deformable", stages=field_only, initial_alignment="none")
    assert late.quality["weak_evidence"] and late.quality["returned"] == "bounded" and "skipped" not in late.quality
    assert [s["name"] for s in late.stages] == ["field", "bounded"]
    assert -late.quality["final"] > 3 * -late.quality["no_registration"]

    start = translation((2.0, -1.0))
    given = register(fixed, moving, "multimodal-deformable", initial_transform=start, on_weak_evidence="as_placed",
                     **WEAK_FAST)
    assert given.quality["returned"] == "as_placed" and torch.equal(given.matrix_mm, start)
    expected = torch.tensor([-2.0, 1.0]).reshape(2, 1, 1)  # LPS mm (2, -1) on an identity-RAS grid: voxels (-2, 1)
    assert torch.allclose(given.ddf, expected.expand_as(given.ddf), atol=1e-5)


def test_weak_evidence_of_a_2d_field_on_local_cc_is_judged_on_mutual_information():
    """`deformable` fits 2D fields on local_cc, after an affine stage on mutual information: the report
    reads the field's own measure, but weak evidence is judged on mutual information (its thresholds are in
    nats), so unrelated images are flagged as with the multi-modal preset, and reported in nats."""
    fixed, moving = unrelated_textures()
    result = register(fixed, moving, "deformable", **WEAK_FAST)
    assert result.quality["metric"] == "mutual_information" and result.quality["weak_evidence"]
    assert result.quality["returned"] == "bounded"
    aligned = register(*pair(), "deformable", iterations_scale=0.2)
    assert aligned.quality["metric"] == "local_cc" and not aligned.quality["weak_evidence"]
    assert not aligned.quality["suspect"] and aligned.quality["final"] < aligned.quality["no_registration"]


def test_the_command_line_writes_what_came_back(tmp_path):
    """Through the command line on NIfTI files: the metrics rows say ``bounded`` (the default) and
    ``as_placed``; the latter's ITK transform file is the identity and its warped image the moving image."""
    import itk

    fixed, moving = unrelated_textures()
    paths = write_nifti(tmp_path, fixed, moving)
    out = tmp_path / "out"
    for pair_id, extra in (("default", []), ("placed", ["--set", "on_weak_evidence=as_placed"])):
        assert main(["register", paths["fixed"], paths["moving"], "-o", str(out), "--id", pair_id,
                     "--preset", "multimodal-deformable", "--set", "iterations_scale=0.3", *extra]) == 0
    with open(out / "metrics.csv") as fh:
        rows = {r["pair"]: r for r in csv.DictReader(fh)}
    assert rows["default"]["weak_evidence"] == rows["placed"]["weak_evidence"] == "True"
    assert rows["default"]["returned"] == "bounded" and rows["placed"]["returned"] == "as_placed"
    assert rows["default"]["motion"] == "bounded"
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["weak_evidence"] == 2 and summary["as_placed"] == 1 and summary["bounded"] == 1
    transform = itk.transformread(str(out / "placed" / "itk" / "transform.h5"))[0]
    points = [(0.0, 0.0), (10.0, -20.0), (63.0, 55.0)]
    assert all(np.allclose(transform.TransformPoint(p), p, atol=1e-9) for p in points)
    warped = nib.load(str(out / "placed" / "warped.nii.gz")).get_fdata()
    assert np.allclose(warped, moving[0].numpy(), atol=1e-6)


def test_weak_evidence_needs_a_field():
    """A rigid map that multiplies a poor start's mutual information has found the images (it has too
    few degrees of freedom to make a match); the same map ending a field stage is flagged."""
    from monai_inr_reg.config import load_preset
    from monai_inr_reg.core.grid import ImageGrid
    from monai_inr_reg.motion import GridMotion, RigidMotion
    from monai_inr_reg.objectives import match_quality
    from monai_inr_reg.pair import prepare_pair
    from synthetic_images import shifted

    fixed = unrelated_textures()[0]
    moving = 1.0 - shifted(fixed, (12.0, -9.0))  # another contrast, 12 and 9 voxels off
    grid = ImageGrid.from_ras_affine(tuple(fixed.shape[1:]), None)
    config = load_preset("multimodal-deformable")
    pair = prepare_pair(fixed, grid, moving, grid, config, "cpu")
    truth = translation((-12.0, 9.0))  # fixed LPS mm -> moving LPS mm (LPS = minus the voxel axes here)
    stage = config["stages"][-1]
    rigid = match_quality(pair, RigidMotion(pair.center_mm, pair.box.scale_mm(), truth), None, stage)
    field = match_quality(pair, GridMotion(grid, 6, truth), None, stage)
    assert -rigid["no_registration"] < 0.25 and rigid["final"] < 3 * rigid["no_registration"]  # a 3x gain
    assert rigid["final"] == pytest.approx(field["final"], rel=1e-4)
    assert not rigid["weak_evidence"] and field["weak_evidence"]


def test_motions_are_compared_on_the_voxels_they_share():
    """A moving image with a discordant border row: a shift of 0.05 voxel that drops that row from the
    overlap looks better than the truth when each is scored on its own overlap. ``Similarity.scores``
    compares them on the voxels both keep, where the truth wins; so does the quality report, and a
    registration that returns the truth from such a start is not suspect."""
    from monai_inr_reg.config import load_preset
    from monai_inr_reg.core.grid import ImageGrid, apply_affine
    from monai_inr_reg.objectives import QUALITY_STAGE, Similarity, match_quality
    from monai_inr_reg.pair import prepare_pair

    fixed = pair()[0]
    moving = 1.0 - fixed  # another contrast, aligned
    moving[0, -1, :] = 0.0  # the last row dark, where the other contrast would make it bright
    grid = ImageGrid.from_ras_affine(tuple(fixed.shape[1:]), None)
    prepared = prepare_pair(fixed, grid, moving, grid, load_preset("multimodal-deformable"), "cpu")
    similarity = Similarity(prepared, QUALITY_STAGE)
    truth, start = (lambda points: points), translation((-0.05, 0.0))  # LPS -x: the last row leaves the grid
    shifted_start = lambda points: apply_affine(start, points)  # noqa: E731
    alone = (similarity.score(truth), similarity.score(shifted_start))
    together = similarity.scores([truth, shifted_start])
    assert alone[1] < alone[0] - 0.01  # on their own overlaps the start looks better than the truth
    assert together[0] < together[1] - 0.005  # on the voxels both keep, the truth is better
    quality = match_quality(prepared, truth, start, QUALITY_STAGE)
    assert quality["final"] < quality["start"] and not quality["suspect"]
    # a motion that keeps under half of the other's overlap looks at other voxels: each on its own
    away = lambda points: apply_affine(translation((-0.7 * SHAPE[0], 0.0)), points)  # noqa: E731
    assert similarity.scores([truth, away]) == [similarity.score(truth), similarity.score(away)]
