"""result.quality: the match before and after, and a 'suspect' flag when the registration made things worse."""

from __future__ import annotations

import csv
import json
import logging

import nibabel as nib
import numpy as np
import torch

from monai_inr_reg import register
from monai_inr_reg.cli import main
from synthetic_images import gaussian_blobs

SHAPE = (64, 56)


def pair():
    return (torch.from_numpy(gaussian_blobs(SHAPE))[None], torch.from_numpy(gaussian_blobs(SHAPE, (3.0, -2.0)))[None])


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
    assert quality["metric"] == "mapped_l2" and not quality["suspect"]
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
    fixed, moving = pair()
    paths = {}
    for name, image in (("fixed", fixed), ("moving", moving)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(image[0].numpy(), np.eye(4)), paths[name])
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
    assert -min(quality["no_registration"], quality["start"]) < 0.25 and quality["final"] < 3 * quality["start"]
    assert "WEAK EVIDENCE" in caplog.text
    brain = bdata.brainweb_pair(shared_data, multimodal=True)
    moving = torch.roll(torch.as_tensor(brain.source), shifts=(3, -2), dims=(0, 1)).numpy()
    quality = register(as_input(brain.fixed, brain.grid), as_input(moving, brain.grid), "multimodal-deformable").quality
    assert quality["metric"] == "mutual_information" and not quality["weak_evidence"] and not quality["suspect"]
