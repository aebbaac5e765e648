"""Presets as defaults plus deltas: configs/base.yaml holds every option; each preset states only what differs."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from monai_inr_reg.cli import main
from monai_inr_reg.config import _schema, describe_preset, list_presets, load_preset, stage_for_dimension, stage_iterations


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
    schema = _schema()
    stage_keys = set(schema["stage_defaults"])
    base = leaves({k: v for k, v in schema.items() if k not in ("stages", "stage_defaults")})
    assert list_presets() == ["affine", "bounded", "deformable", "multimodal-deformable", "multimodal-paper-deformable",
                              "multimodal-paper-rigid", "multimodal-rigid", "paper-deformable", "paper-rigid", "rigid"]
    for name in list_presets():
        raw = preset_file(name)
        assert raw["stages"], name  # every preset shows its stage list whole
        for stage in raw["stages"]:
            assert {"name", "motion", "objective"} <= set(stage) <= stage_keys, (name, stage)
        delta = leaves({k: v for k, v in raw.items() if k != "stages"})
        assert set(delta) <= set(base), name
        config = load_preset(name)
        resolved = leaves({k: v for k, v in config.items() if k != "stages"})
        assert set(resolved) == set(base), name
        changed = {k for k in base if resolved[k] != base[k]}
        assert changed <= set(delta), (name, changed - set(delta))  # nothing changes that the file does not say
        for stage, given in zip(config["stages"], raw["stages"]):
            # a resolved stage: what the file says, the defaults for the rest that applies to it (in each
            # dimension, where the file gives values by dimension)
            for ndim in (2, 3):
                flat, said = stage_for_dimension(stage, ndim), stage_for_dimension(given, ndim)
                assert all(flat[k] == (v if k != "smoothing_voxels" else [float(x) for x in v]) for k, v in said.items())
                assert {k: v for k, v in flat.items() if k not in said} == \
                    {k: schema["stage_defaults"][k] for k in flat if k not in said}
        # the resolved preset round-trips through what `presets show` prints
        assert yaml.safe_load(describe_preset(name)) == config, name


def stages_of(name: str) -> list[tuple[str, str, str]]:
    return [(s["name"], s["motion"], s["objective"]) for s in load_preset(name)["stages"]]


def test_presets_keep_their_stages():
    capture, affine = ("rigid", "rigid", "image_net"), ("affine", "affine", "image_net")
    field = ("deformable", "deformable", "mutual_information")
    # the deformable presets' pose: capture through the image net, then the real images over a pyramid
    pose = [capture, ("rigid_refine", "rigid", "mapped_l2"), ("affine", "affine", "mutual_information")]
    assert stages_of("multimodal-deformable") == pose + [field]
    # single-modal 2D fields on the windowed correlation: more accurate than mutual information in every 2D group
    assert stages_of("deformable") == pose + [("deformable", "deformable", {"2d": "local_cc", "3d": "mutual_information"})]
    # the rigid presets: the real images alone (the image-net stage bought nothing there, at twice the time);
    # single-modal as they are, multi-modal under a fitted intensity map
    assert stages_of("rigid") == [("refine", "rigid", "mean_squares")]
    assert stages_of("multimodal-rigid") == [("refine", "rigid", "mapped_l2")]
    assert stages_of("affine") == [capture, affine, ("refine", "affine", "mapped_l2")]
    assert stages_of("paper-rigid") == [("near_rigid", "near_rigid", "image_net")]
    assert stages_of("paper-deformable") == [("deformable", "deformable", "image_net")]
    # what images with too little in common fall back to: a bounded search from the images as placed
    bounded = load_preset("bounded")
    assert stages_of("bounded") == [("bounded", "bounded", "mind")] and bounded["initial_alignment"] == "none"
    assert bounded["stages"][0]["search_radius_voxels"] == [8, 8] and bounded["stages"][0]["search_downsample"] == [2, 2]
    assert bounded["stages"][0]["iterations"] == 0 and bounded["motions"]["bounded"]["spacing_voxels"] == 6
    assert all(load_preset(name)["on_weak_evidence"] == "bounded" for name in list_presets())
    deformable, multimodal = load_preset("deformable"), load_preset("multimodal-deformable")
    assert [s["iterations"] for s in deformable["stages"]] == [200, 200, 150, {"2d": 300, "3d": 600}]
    assert [s["iterations"] for s in multimodal["stages"]] == [200, 200, 150, {"2d": 300, "3d": 400}]
    # 2D fields: finest cells of 32 (as many voxels a cell as 3D has at 64): more accurate on the 2D suites
    for preset in (deformable, multimodal):
        assert preset["motions"]["deformable"]["encoding"]["finest_resolution"] == {"2d": 32, "3d": 64}
    # ... on a net of one hidden layer of 32 in 2D (half the time of 64 x 2, and still more accurate)
    assert deformable["motions"]["deformable"]["network"]["n_neurons"] == {"2d": 32, "3d": 64}
    assert deformable["motions"]["deformable"]["network"]["n_hidden_layers"] == {"2d": 1, "3d": 2}
    assert multimodal["motions"]["deformable"]["network"]["n_neurons"] == 32  # measured: as accurate, 0.6x the time
    assert deformable["stages"][1] == multimodal["stages"][1]  # the same pose
    assert deformable["stages"][3]["smoothness_weight"] == 0.3 and multimodal["stages"][3]["smoothness_weight"] == 1.0
    # 256 regulariser points gave the suites' 2D pairs the same EPE in less time, but a 64 x 64 pair a worse one
    for field in (deformable["stages"][3], multimodal["stages"][3]):
        assert field["penalty_points"] == {"2d": 256, "3d": 1024} and field["fine_field_penalty_points"] == 1024
    assert deformable["stages"][3]["smoothing_voxels"] == {"2d": [2.0, 1.0, 0.0], "3d": [1.0, 0.0]}
    assert deformable["stages"][3]["window_radius"] == {"2d": 1, "3d": None} and not deformable["multimodal"]
    assert multimodal["multimodal"] and load_preset("multimodal-rigid")["multimodal"]
    refine = deformable["stages"][1]
    assert refine["smoothing_voxels"] == [4.0, 2.0, 1.0, 0.0] and refine["learning_rate_factor"] == [0.3, 0.3, 0.3, 0.1]
    assert refine["candidates"] == ["previous", "start"] and refine["schedule"] == "per_level"
    assert refine["robust_scale"] == 0.0 and refine["bins"] == 24 and refine["iterations"] == 200
    assert deformable["stages"][0]["fixed_points"] == 512
    # without an image-net stage before them, the coarsest level captures: 100 steps there (50 left L4 errors 5-10x
    # larger); multi-modal from 8 voxels (from 4, 4 of 40 stroke and IXI002 pairs were lost at L4)
    single, multi = load_preset("rigid")["stages"][0], load_preset("multimodal-rigid")["stages"][0]
    assert single["iterations"] == [100, 50, 50, 50] and single["smoothing_voxels"] == [4.0, 2.0, 1.0, 0.0]
    assert multi["iterations"] == [100, 50, 50, 50, 50] and multi["smoothing_voxels"] == [8.0, 4.0, 2.0, 1.0, 0.0]
    assert single["candidates"] == multi["candidates"] == ["previous"] and multi["bins"] == 24 and multi["robust_scale"] == 0.0
    for name in set(list_presets()) - {"bounded", "rigid", "multimodal-rigid"}:
        assert load_preset(name)["image"]["encoding"]["n_levels"] == (16 if "paper" in name else 8)


def test_overrides_by_stage_name_and_a_list_of_your_own():
    changed = load_preset("deformable", **{"stages.deformable.iterations": 30, "iterations_scale": 0.5})
    assert [s["iterations"] for s in changed["stages"]] == [200, 200, 150, 30] and changed["iterations_scale"] == 0.5
    # one count holds in 2D and 3D; a count by dimension is a total or one per level, like iterations itself
    assert [stage_iterations(changed["stages"][3], 0.5, ndim) for ndim in (2, 3)] == [[5, 5, 5], [8, 7]]  # 3 levels in 2D
    field = load_preset("deformable")["stages"][3]
    assert stage_iterations(field, 1.0, 2) == [100, 100, 100] and stage_iterations(field, 1.0, 3) == [300, 300]
    by_level = load_preset("deformable", **{"stages.deformable.iterations.2d": [10, 20, 30]})["stages"][3]
    assert by_level["iterations"] == {"2d": [10, 20, 30], "3d": 600} and stage_iterations(by_level, 2.0, 2) == [20, 40, 60]
    with pytest.raises(ValueError, match=r"'iterations' by dimension needs exactly the keys \('2d', '3d'\)"):
        load_preset("deformable", stages={"deformable": {"iterations": {"2D": 300, "3d": 600}}})
    with pytest.raises(ValueError, match=r"in 3d: 'iterations' must be one number or one per level \(2"):
        load_preset("deformable", stages={"deformable": {"iterations": {"2d": 300, "3d": [1, 2, 3]}}})
    with pytest.raises(ValueError, match=r"'penalty_points' by dimension needs exactly the keys"):
        load_preset("deformable", stages={"deformable": {"penalty_points": {"2D": 256}}})
    with pytest.raises(ValueError, match=r"'penalty_points' must be a positive integer, got \[1, 2\]"):
        load_preset("deformable", stages={"deformable": {"penalty_points": [1, 2]}})
    with pytest.raises(ValueError, match=r"'penalty_points' applies to model hash only"):
        load_preset("rigid", stages={"refine": {"penalty_points": 256}})
    for bad in (-1, 2.5, True, {"2d": 256, "3d": -1}):
        with pytest.raises(ValueError, match=r"'fine_field_penalty_points' must be an integer >= 0 \(0: off\)"):
            load_preset("deformable", stages={"deformable": {"fine_field_penalty_points": bad}})
    with pytest.raises(ValueError, match=r"'fine_field_penalty_points' applies to model hash only"):
        load_preset("rigid", stages={"refine": {"fine_field_penalty_points": 1024}})
    assert load_preset("rigid")["stages"][0].get("fine_field_penalty_points") is None
    # a motion's encoding / network values by dimension, checked like iterations
    with pytest.raises(ValueError, match=r"'motions.deformable.encoding.finest_resolution' by dimension needs exactly the keys"):
        load_preset("deformable", **{"motions.deformable.encoding.finest_resolution": {"2d": 32}})
    from monai_inr_reg.config import motion_for_dimension
    motion = load_preset("deformable", **{"motions.deformable.encoding.finest_resolution": {"2d": 32, "3d": 64}})["motions"]["deformable"]
    assert [motion_for_dimension(motion, n)["encoding"]["finest_resolution"] for n in (2, 3)] == [32, 64]
    assert motion["encoding"]["finest_resolution"] == {"2d": 32, "3d": 64}
    assert [motion_for_dimension(motion, n)["network"]["n_hidden_layers"] for n in (2, 3)] == [1, 2]
    assert motion_for_dimension(motion, 3)["network"]["otype"] == motion["network"]["otype"] == "FullyFusedMLP"
    own = load_preset("rigid", stages=[{"name": "only", "motion": "affine", "objective": "mutual_information"}])
    [stage] = own["stages"]
    assert stage["bins"] == 16 and "robust_scale" not in stage and "moving_points" not in stage
    # a resolved config (result.config) loads back to itself
    assert load_preset(load_preset("deformable")) == load_preset("deformable")


def test_a_stage_option_by_dimension():
    """Any stage option may be given by dimension: the stage is resolved and validated for each, a key
    that differs keeps both, one that applies in one dimension only is None in the other, and
    ``stage_for_dimension`` picks one (what ``register`` runs)."""
    field = {"name": "field", "motion": "deformable", "objective": {"2d": "local_cc", "3d": "mutual_information"},
             "smoothing_voxels": {"2d": [2, 1, 0], "3d": [1, 0]}, "iterations": 30}
    config = load_preset("rigid", stages=[field])
    [stage] = config["stages"]
    assert stage["objective"] == {"2d": "local_cc", "3d": "mutual_information"} and stage["iterations"] == 30
    assert stage["bins"] == {"2d": None, "3d": 16} and stage["window_radius"] == {"2d": 1, "3d": None}
    assert stage["smoothing_voxels"] == {"2d": [2.0, 1.0, 0.0], "3d": [1.0, 0.0]}
    two, three = stage_for_dimension(stage, 2), stage_for_dimension(stage, 3)
    assert two["objective"] == "local_cc" and "bins" not in two and two["window_radius"] == 1
    assert three["objective"] == "mutual_information" and three["bins"] == 16 and "window_radius" not in three
    assert stage_iterations(two, 1.0, 2) == [10, 10, 10] and stage_iterations(three, 1.0, 3) == [15, 15]
    assert load_preset(config) == config  # a resolved config loads back to itself
    # one dimension changed by an override, the other kept
    changed = load_preset("deformable", **{"stages.deformable.fixed_points.3d": 2048,
                                           "stages.deformable.fixed_points.2d": 4096})["stages"][3]
    assert changed["fixed_points"] == {"2d": 4096, "3d": 2048}
    # each dimension is validated, and the message names it
    with pytest.raises(ValueError, match=r"stage 0 \('field'\) in 3d: 'window_radius' applies to objective local_cc only"):
        load_preset("rigid", stages=[{**field, "window_radius": 2}])
    with pytest.raises(ValueError, match=r"in 2d: 'smoothing_voxels' must be one or more sigmas >= 0"):
        load_preset("rigid", stages=[{**field, "smoothing_voxels": {"2d": [-1], "3d": [0]}}])
    with pytest.raises(ValueError, match=r"'name' by dimension needs exactly the keys .* \(and name cannot be\)"):
        load_preset("rigid", stages=[{**field, "name": {"2d": "a", "3d": "b"}}])
    with pytest.raises(ValueError, match=r"'objective' by dimension needs exactly the keys"):
        load_preset("rigid", stages=[{**field, "objective": {"2d": "local_cc"}}])


def test_presets_command(capsys):
    assert main(["presets", "list"]) == 0
    assert capsys.readouterr().out.split() == list_presets()
    assert main(["presets", "show", "rigid", "--set", "stages.refine.iterations=50"]) == 0
    shown = capsys.readouterr().out
    assert "  - name: refine  # [preset] label in results" in shown and "    iterations: 50  # [preset] a total split" in shown
    assert "    objective: mean_squares  # [preset] image_net" in shown
    assert yaml.safe_load(shown)["stages"][0]["iterations"] == 50
    assert main(["presets", "show", "fancy"]) == 2
    assert "unknown preset 'fancy'" in capsys.readouterr().err
