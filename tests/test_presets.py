"""Presets as defaults plus deltas: configs/base.yaml holds every option; each preset states only what differs."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from monai_inr_reg.cli import main
from monai_inr_reg.config import _schema, describe_preset, list_presets, load_preset


def preset_file(name: str) -> dict:
    return yaml.safe_load((resources.files("monai_inr_reg.configs") / f"{name}.yaml").read_text()) or {}


def leaves(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and key not in ("encoding", "network"):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_presets_are_deltas_over_the_defaults():
    base = leaves(_schema())
    assert list_presets() == ["affine", "deformable", "multimodal-deformable", "multimodal-paper-deformable",
                              "multimodal-paper-rigid", "multimodal-rigid", "paper-deformable", "paper-rigid", "rigid"]
    for name in list_presets():
        delta = leaves(preset_file(name))
        assert set(delta) <= set(base), name
        resolved = leaves(load_preset(name))
        assert set(resolved) == set(base), name
        changed = {k for k in base if resolved[k] != base[k]}
        assert changed <= set(delta), (name, changed - set(delta))  # nothing changes that the file does not say
        # the resolved preset round-trips through what `presets show` prints
        assert yaml.safe_load(describe_preset(name)) == load_preset(name), name


@pytest.mark.parametrize("name, expected", [
    ("deformable", {"motion": "deformable", "prealign": ["rigid", "affine"], "rigid.iterations": 600,
                    "refine.metric": "mutual_information", "deformable.smoothness_weight": 0.3}),
    ("multimodal-deformable", {"multimodal": True, "rigid.iterations": 1000, "deformable.smoothness_weight": 1.0,
                               "refine.iterations": 600}),
    ("rigid", {"motion": "rigid", "prealign": [], "sampling.fixed_points": 512, "rigid.iterations": 200,
               "refine.sigma_voxels": [4.0, 2.0, 1.0, 0.0], "refine.metric": "mapped_l2", "multimodal": False}),
    ("multimodal-rigid", {"multimodal": True, "refine.learning_rate_factor": [0.3, 0.3, 0.3, 0.1]}),
    ("affine", {"motion": "affine", "prealign": ["rigid"], "refine.robust_scale": 0.0}),
])
def test_presets_keep_their_values(name, expected):
    resolved = leaves(load_preset(name))
    for key, value in expected.items():
        assert resolved[key] == value, (name, key)
    assert load_preset(name)["image"]["encoding"]["n_levels"] == (16 if "deformable" in name else 8)


def test_presets_command(capsys):
    assert main(["presets", "list"]) == 0
    assert capsys.readouterr().out.split() == list_presets()
    assert main(["presets", "show", "rigid", "--set", "refine.iterations=50"]) == 0
    shown = capsys.readouterr().out
    assert "refine.iterations" not in shown and "  iterations: 50  # [preset]" in shown
    assert "sampling:  # [preset]" in shown and yaml.safe_load(shown)["refine"]["iterations"] == 50
    assert main(["presets", "show", "fancy"]) == 2
    assert "unknown preset 'fancy'" in capsys.readouterr().err
