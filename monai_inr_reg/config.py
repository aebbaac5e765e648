"""Presets: load ``configs/<name>.yaml``, merge overrides, validate. The one configuration loader.

A preset is data a reader can see whole: its ``stages``, a list the registration runs in order
(each names a motion model from ``motions``, an objective, its levels, learning rates and
regularisers), over ``configs/base.yaml``, which holds every option with its default and unit (the
schema; ``stage_defaults`` is what a stage leaves out). A preset file states only what differs.

Overrides are deep-merged (a dict merges into a dict, anything else replaces); ``stages`` takes a
whole new list, or a dict of changes by stage name (``stages.deformable.iterations=300`` on the
command line). Dotted keys address nested entries. Unknown keys are errors that list the valid
ones, and a stage key that does not apply to its objective or motion model is an error, so a
typo or a silently ignored option fails before any work.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_preset", "list_presets", "describe_preset", "merge_overrides", "nested_overrides", "resolve_stage",
           "stage_iterations", "learning_rate_factors", "for_dimension", "stage_for_dimension", "motion_for_dimension", "MOTION_MODELS",
           "PARAMETRIC_MODELS", "OBJECTIVES", "INITIAL_ALIGNMENTS"]

PARAMETRIC_MODELS = ("rigid", "affine")
MOTION_MODELS = PARAMETRIC_MODELS + ("hash", "grid")
OBJECTIVES = ("image_net", "mean_squares", "mapped_l2", "mutual_information", "mind", "local_cc")
INITIAL_ALIGNMENTS = ("center_of_mass", "none", "search")
ON_WEAK_EVIDENCE = ("bounded", "as_placed", "warn")
SCHEDULES = ("whole", "per_level")
DIMENSIONS = ("2d", "3d")  # the keys of a value given by dimension
CANDIDATES = ("previous", "start")

# stage keys that apply to some objectives or motion models only: (what they depend on, where they apply)
_APPLIES = {
    "moving_points": ("objective", ("image_net",)),
    "image_coarse_to_fine_share": ("objective", ("image_net",)),
    "bins": ("objective", ("mapped_l2", "mutual_information")),
    "guard": ("objective", ("mean_squares", "mapped_l2", "mutual_information", "mind", "local_cc")),
    "symmetric": ("objective", ("mapped_l2",)),
    "robust_scale": ("objective", ("mapped_l2",)),
    "window_radius": ("objective", ("local_cc",)),
    "coarse_to_fine_share": ("model", ("hash",)),
    "smoothness_weight": ("model", ("hash", "grid")),
    "folding_weight": ("model", ("hash",)),
    "folding_threshold": ("model", ("hash",)),
    "fixed_points_cover_table": ("model", ("hash",)),
    "penalty_points": ("model", ("hash",)),
    "fine_field_penalty_points": ("model", ("hash",)),
    "search_radius_voxels": ("model", ("grid",)),
    "search_downsample": ("model", ("grid",)),
}

# Sections whose inner keys are free-form tiny-cuda-nn dicts (validated by the network builders).
_FREE_FORM = {"encoding", "network"}

_BASE = "base"


def list_presets() -> list[str]:
    """Names of the shipped presets (``configs/*.yaml`` but the defaults, ``base.yaml``)."""
    return sorted(p.name[:-5] for p in resources.files("monai_inr_reg.configs").iterdir()
                  if p.name.endswith(".yaml") and p.name != f"{_BASE}.yaml")


def _read_yaml(path) -> dict:
    """A YAML mapping, parsed once per file version (a fresh copy each call): a registration reads
    its preset and the schema twice, 13 ms of parsing against a 0.7 s 2D registration."""
    path = Path(str(path))
    stat = path.stat()
    return copy.deepcopy(_parse_yaml(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=64)
def _parse_yaml(path: str, mtime_ns: int, size: int) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"load_preset(): {path} does not hold a mapping")
    return data


def _schema() -> dict:
    """``base.yaml``: every option with its default; presets and user YAML files are read over it."""
    return _read_yaml(resources.files("monai_inr_reg.configs") / f"{_BASE}.yaml")


def nested_overrides(overrides: dict) -> dict:
    """Dotted keys (``"deformable.iterations"``) as nested dicts, recursively, so equal settings compare equal."""
    out: dict = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(nested_overrides(value))
        else:
            node[parts[-1]] = nested_overrides(value) if isinstance(value, dict) else value
    return out


def merge_overrides(base: dict, overrides: dict, *, schema: dict | None = None, where: str = "") -> dict:
    """Deep-merge ``overrides`` into a copy of ``base``; keys must exist in ``schema`` (default ``base``).
    ``stages``: a list replaces the list; a dict merges into the stages it names."""
    schema = base if schema is None else schema
    out = copy.deepcopy(base)
    for key, value in nested_overrides(overrides).items():
        if key not in schema:
            valid = ", ".join(sorted(schema))
            raise ValueError(f"load_preset(): unknown option {where + key!r}; valid options here: {valid}")
        if key == "stages" and not where and isinstance(value, dict):
            out[key] = _merge_stages(out.get(key) or [], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            if key in _FREE_FORM:
                out[key] = {**out[key], **value}
            else:
                out[key] = merge_overrides(out[key], value, schema=schema[key], where=f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_stages(stages: list, changes: dict) -> list:
    """``stages`` with ``changes`` (``{stage name: {key: value}}``) merged into the stages they name."""
    stages = copy.deepcopy(list(stages))
    names = [s.get("name") if isinstance(s, dict) else None for s in stages]
    for name, change in changes.items():
        if name not in names:
            raise ValueError(f"load_preset(): no stage named {name!r} to change; the stages are {names}")
        if not isinstance(change, dict):
            raise ValueError(f"load_preset(): 'stages.{name}' takes a mapping of stage options, got {change!r}")
        stage = stages[names.index(name)]
        for key, value in change.items():
            stage[key] = {**stage[key], **value} if isinstance(value, dict) and isinstance(stage.get(key), dict) \
                else copy.deepcopy(value)
    return stages


def load_preset(preset: str | dict | Path = "deformable", **overrides: Any) -> dict:
    """Return the validated configuration of a preset with ``overrides`` merged in.

    Args:
        preset: a preset name (see :func:`list_presets`), a path to a YAML file of the same
            schema, or a full config dict (e.g. ``result.config``).
        overrides: nested dicts or dotted keys, e.g. ``iterations_scale=0.5``,
            ``stages={"deformable": {"iterations": 300}}`` (changes by stage name),
            ``stages=[{...}, ...]`` (a new stage list), ``**{"image.learning_rate.encoding": 5e-3}``.

    Returns:
        The configuration; its ``stages`` resolved (every key that applies to the stage, defaults
        filled in from ``stage_defaults``).

    Raises:
        ValueError: unknown preset, unknown option, an option that does not apply to its stage,
            or an invalid value.
    """
    schema = _schema()
    if isinstance(preset, dict):
        base = merge_overrides(schema, {k: v for k, v in preset.items() if k != "stage_defaults"}, schema=schema)
    elif isinstance(preset, (str, Path)) and str(preset).endswith((".yaml", ".yml")):
        if not Path(preset).is_file():
            raise FileNotFoundError(f"load_preset(): preset file {str(preset)!r} does not exist")
        base = merge_overrides(schema, _read_yaml(preset), schema=schema)
    else:
        names = list_presets()
        if preset not in names:
            raise ValueError(f"load_preset(): unknown preset {preset!r}; valid presets: {', '.join(names)}")
        base = merge_overrides(schema, _read_yaml(resources.files("monai_inr_reg.configs") / f"{preset}.yaml"),
                               schema=schema)
    config = merge_overrides(base, overrides, schema=schema)
    defaults = config.pop("stage_defaults")
    _validate(config)
    config["stages"] = [_resolve_stage(stage, index, defaults, config) for index, stage in enumerate(config["stages"])]
    names = [stage["name"] for stage in config["stages"]]
    if len(set(names)) != len(names):
        raise ValueError(f"load_preset(): stage names must be unique, got {names}")
    return config


def _validate(config: dict) -> None:
    if not isinstance(config["stages"], list) or not config["stages"]:
        raise ValueError(f"load_preset(): 'stages' must be a non-empty list of stages, got {config['stages']!r}")
    if not float(config["iterations_scale"]) > 0:
        raise ValueError(f"load_preset(): 'iterations_scale' must be > 0, got {config['iterations_scale']!r}")
    if config["initial_alignment"] not in INITIAL_ALIGNMENTS:
        raise ValueError(f"load_preset(): 'initial_alignment' must be one of {INITIAL_ALIGNMENTS}, "
                         f"got {config['initial_alignment']!r}")
    if config["on_weak_evidence"] not in ON_WEAK_EVIDENCE:
        raise ValueError(f"load_preset(): 'on_weak_evidence' must be one of {ON_WEAK_EVIDENCE}, "
                         f"got {config['on_weak_evidence']!r}")
    if config["multimodal"] not in (True, False):
        raise ValueError(f"load_preset(): 'multimodal' must be true or false, got {config['multimodal']!r}")
    for name, motion in config["motions"].items():
        if motion["model"] not in MOTION_MODELS:
            raise ValueError(f"load_preset(): 'motions.{name}.model' must be one of {MOTION_MODELS}, got {motion['model']!r}")
        lr = motion["learning_rate"]
        if motion["model"] == "hash" and not (isinstance(lr, dict) and set(lr) == {"encoding", "network"}):
            raise ValueError(f"load_preset(): 'motions.{name}.learning_rate' of a hash motion must be "
                             f"{{encoding: ..., network: ...}}, got {lr!r}")
        if motion["model"] == "grid" and not (isinstance(motion.get("spacing_voxels"), int) and motion["spacing_voxels"] >= 1):
            raise ValueError(f"load_preset(): 'motions.{name}.spacing_voxels' of a grid motion must be an integer >= 1, "
                             f"got {motion.get('spacing_voxels')!r}")
        for section in _FREE_FORM:
            for key, value in (motion.get(section) or {}).items():
                if isinstance(value, dict) and set(value) != set(DIMENSIONS):
                    raise ValueError(f"load_preset(): 'motions.{name}.{section}.{key}' by dimension needs exactly the keys "
                                     f"{DIMENSIONS}, got {value!r}")
        if motion["model"] != "hash" and isinstance(lr, dict):
            raise ValueError(f"load_preset(): 'motions.{name}.learning_rate' of a {motion['model']} motion must be "
                             f"a number, got {lr!r}")


def _per_level(value, n_levels: int, what: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else None
    if values is not None and len(values) != n_levels:
        raise ValueError(f"load_preset(): {what} must be one number or one per level ({n_levels}: smoothing_voxels), "
                         f"got {value!r}")
    return values


def resolve_stage(stage: dict) -> tuple[dict, dict]:
    """One stage of one's own (what differs from ``stage_defaults``) resolved over ``base.yaml``,
    with its motion's entry of ``motions``: ``(stage, motion_config)``."""
    schema = _schema()
    resolved = _resolve_stage(stage, 0, schema["stage_defaults"], schema)
    return resolved, schema["motions"][resolved["motion"]]


def _resolve_stage(stage, index: int, defaults: dict, config: dict) -> dict:
    """A stage with every key that applies to it (defaults filled in), validated. A stage with values
    given by dimension (``{2d: ..., 3d: ...}``) is resolved and validated for each dimension apart: a
    key whose values differ keeps both (``{2d: ..., 3d: ...}``, ``None`` where it does not apply,
    e.g. ``bins`` where the 2D objective is ``local_cc``); :func:`stage_for_dimension` picks one."""
    if not isinstance(stage, dict):
        raise ValueError(f"load_preset(): stage {index} must be a mapping, got {stage!r}")
    where = f"stage {index} ({stage.get('name', defaults['name'])!r})"
    by_dimension = [key for key, value in stage.items() if isinstance(value, dict)]
    for key in by_dimension:
        if key == "name" or set(stage[key]) != set(DIMENSIONS):
            raise ValueError(f"load_preset(): {where}: {key!r} by dimension needs exactly the keys {DIMENSIONS}"
                             f"{' (and name cannot be)' if key == 'name' else ''}, got {stage[key]!r}")
    if not by_dimension:
        return _resolve_flat_stage(stage, where, defaults, config)
    resolved = {}
    for dimension in DIMENSIONS:
        flat = {key: value[dimension] if key in by_dimension else value for key, value in stage.items()}
        resolved[dimension] = _resolve_flat_stage({key: value for key, value in flat.items() if value is not None},
                                                  f"{where} in {dimension}", defaults, config)
    merged = {}
    for key in defaults:
        values = [resolved[dimension].get(key) for dimension in DIMENSIONS]
        if values != [None, None]:
            merged[key] = values[0] if values[0] == values[1] else dict(zip(DIMENSIONS, values))
    return merged


def _resolve_flat_stage(stage: dict, where: str, defaults: dict, config: dict) -> dict:
    """:func:`_resolve_stage` for one dimension: no value given by dimension."""
    unknown = sorted(set(stage) - set(defaults))
    if unknown:
        raise ValueError(f"load_preset(): {where}: unknown option {unknown[0]!r}; valid stage options: "
                         f"{', '.join(sorted(defaults))}")
    motion, objective = stage.get("motion", defaults["motion"]), stage.get("objective", defaults["objective"])
    if motion not in config["motions"]:
        raise ValueError(f"load_preset(): {where}: 'motion' must be one of {sorted(config['motions'])}, got {motion!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"load_preset(): {where}: 'objective' must be one of {OBJECTIVES}, got {objective!r}")
    model = config["motions"][motion]["model"]
    on = {"objective": objective, "model": model}
    for key in stage:
        if key in _APPLIES and on[_APPLIES[key][0]] not in _APPLIES[key][1]:
            kind, where_it_applies = _APPLIES[key]
            raise ValueError(f"load_preset(): {where}: {key!r} applies to {kind} {' or '.join(where_it_applies)} "
                             f"only; this stage's {kind} is {on[kind]!r}")
    resolved = {key: copy.deepcopy(stage.get(key, value)) for key, value in defaults.items()
                if key not in _APPLIES or on[_APPLIES[key][0]] in _APPLIES[key][1]}
    if not isinstance(resolved["name"], str) or not resolved["name"]:
        raise ValueError(f"load_preset(): {where}: 'name' must be a non-empty string")
    smoothing = resolved["smoothing_voxels"]
    smoothing = list(smoothing) if isinstance(smoothing, (list, tuple)) else [smoothing]
    if not smoothing or any(float(s) < 0 for s in smoothing):
        raise ValueError(f"load_preset(): {where}: 'smoothing_voxels' must be one or more sigmas >= 0, got {smoothing!r}")
    resolved["smoothing_voxels"] = [float(s) for s in smoothing]
    count = resolved["iterations"]
    iterations = _per_level(count, len(smoothing), f"{where}: 'iterations'")
    if any(int(i) < 0 for i in (iterations or [count])):
        raise ValueError(f"load_preset(): {where}: 'iterations' must be >= 0, got {count!r}")
    _per_level(resolved["learning_rate_factor"], len(smoothing), f"{where}: 'learning_rate_factor'")
    _per_level(resolved["fixed_points"], len(smoothing), f"{where}: 'fixed_points'")
    if resolved["schedule"] not in SCHEDULES:
        raise ValueError(f"load_preset(): {where}: 'schedule' must be one of {SCHEDULES}, got {resolved['schedule']!r}")
    candidates = resolved["candidates"]
    if (not isinstance(candidates, list) or not candidates or len(set(candidates)) != len(candidates)
            or not set(candidates) <= set(CANDIDATES)):
        raise ValueError(f"load_preset(): {where}: 'candidates' must be a list of distinct {CANDIDATES}, got {candidates!r}")
    if "start" in candidates and model not in PARAMETRIC_MODELS:
        raise ValueError(f"load_preset(): {where}: candidate 'start' needs a rigid or affine motion, got {motion!r} ({model})")
    for key in ("warmup", "image_coarse_to_fine_share", "coarse_to_fine_share"):
        if key in resolved and not 0.0 <= float(resolved[key]) <= 1.0:
            raise ValueError(f"load_preset(): {where}: {key!r} must be within [0, 1], got {resolved[key]!r}")
    if int(resolved["convergence_window"]) < 0 or float(resolved["convergence_tolerance"]) < 0:
        raise ValueError(f"load_preset(): {where}: 'convergence_window' and 'convergence_tolerance' must be >= 0, "
                         f"got {resolved['convergence_window']!r}, {resolved['convergence_tolerance']!r}")
    for key in ("fixed_points", "moving_points", "bins"):
        if key not in resolved:
            continue
        values = resolved[key]
        if not all(int(v) >= (2 if key == "bins" else 1) for v in (values if isinstance(values, list) else [values])):
            raise ValueError(f"load_preset(): {where}: {key!r} must be a positive count, got {resolved[key]!r}")
    penalty = resolved.get("penalty_points", 1)
    if not (isinstance(penalty, int) and not isinstance(penalty, bool) and penalty >= 1):
        raise ValueError(f"load_preset(): {where}: 'penalty_points' must be a positive integer, got {penalty!r}")
    fine = resolved.get("fine_field_penalty_points", 0)
    if not (isinstance(fine, int) and not isinstance(fine, bool) and fine >= 0):
        raise ValueError(f"load_preset(): {where}: 'fine_field_penalty_points' must be an integer >= 0 (0: off), got {fine!r}")
    if model == "grid":  # the search's levels, coarse to fine: one integer each, or lists of one length
        levels = [[value] if isinstance(value, int) else value
                  for value in (resolved["search_radius_voxels"], resolved["search_downsample"])]
        spacing = config["motions"][motion]["spacing_voxels"]
        if not (all(isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v) for v in levels)
                and len(levels[0]) == len(levels[1]) and min(levels[0]) >= 0 and min(levels[1]) >= 1):
            raise ValueError(f"load_preset(): {where}: 'search_radius_voxels' (integers >= 0) and 'search_downsample' "
                             f"(integers >= 1) must be one integer each or lists of one length (the search's levels, "
                             f"coarse to fine), got {resolved['search_radius_voxels']!r} and {resolved['search_downsample']!r}")
        if any(radius % downsample for radius, downsample in zip(*levels)) or spacing % levels[1][-1]:
            raise ValueError(f"load_preset(): {where}: each 'search_radius_voxels' {levels[0]} must be a multiple of its "
                             f"'search_downsample' {levels[1]}, and the motion's 'spacing_voxels' ({spacing}) of the last")
        resolved["search_radius_voxels"], resolved["search_downsample"] = levels
    for key in ("symmetric", "fixed_points_cover_table", "guard"):
        if key in resolved and resolved[key] not in (True, False):
            raise ValueError(f"load_preset(): {where}: {key!r} must be true or false, got {resolved[key]!r}")
    return resolved


def for_dimension(value, ndim: int):
    """An option given by dimension (``{"2d": ..., "3d": ...}``: a stage's option, a value of a motion's
    encoding or network): its entry for ``ndim``; any other value is the same in 2D and 3D."""
    return value[f"{ndim}d"] if isinstance(value, dict) else value


def stage_for_dimension(stage: dict, ndim: int) -> dict:
    """A resolved stage for a pair of dimension ``ndim``: each value given by dimension replaced by its
    entry for ``ndim``, and the keys that do not apply there (``None``) left out."""
    values = {key: for_dimension(value, ndim) for key, value in stage.items()}
    return {key: value for key, value in values.items() if value is not None}


def motion_for_dimension(motion_config: dict, ndim: int) -> dict:
    """An entry of ``motions`` for a pair of dimension ``ndim``: the values of its ``encoding`` and
    ``network`` given by dimension (``{"2d": ..., "3d": ...}``) replaced by their entry for ``ndim``."""
    out = dict(motion_config)
    for section in _FREE_FORM:
        if isinstance(out.get(section), dict):
            out[section] = {key: for_dimension(value, ndim) for key, value in out[section].items()}
    return out


def stage_iterations(stage: dict, iterations_scale: float, ndim: int) -> list[int]:
    """Iterations per level of a resolved stage for a pair of dimension ``ndim`` (its values for that
    dimension, :func:`stage_for_dimension`), times ``iterations_scale``: a total is scaled, rounded and split
    evenly (earlier levels take the remainder); a per-level list is scaled level by level."""
    stage = stage_for_dimension(stage, ndim)
    n_levels = len(stage["smoothing_voxels"])
    iterations = stage["iterations"]
    if isinstance(iterations, (list, tuple)):
        return [int(round(int(i) * iterations_scale)) for i in iterations]
    total = int(round(int(iterations) * iterations_scale))
    return [total // n_levels + (i < total % n_levels) for i in range(n_levels)]


def learning_rate_factors(stage: dict) -> list[float]:
    """``learning_rate_factor`` of a resolved stage, one per level."""
    factor = stage["learning_rate_factor"]
    n_levels = len(stage["smoothing_voxels"])
    return [float(f) for f in factor] if isinstance(factor, (list, tuple)) else [float(factor)] * n_levels


def _comments(text: str) -> dict[str, str]:
    """``{"dotted.key": comment}`` for the keys of a block-style YAML text that carry a ``#`` comment."""
    comments, stack = {}, []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped or stripped.startswith("-"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        key = stripped.split(":", 1)[0].strip()
        if not key.replace("_", "").isalnum():
            continue  # a continuation line of a flow mapping
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        if " #" in line:
            comments[".".join(k for _, k in stack)] = line.split(" #", 1)[1].strip()
    return comments


def describe_preset(preset: str | dict | Path = "deformable", **overrides: Any) -> str:
    """A preset resolved over the defaults, as YAML with each option's unit and meaning (from
    ``base.yaml``); options the preset (or ``overrides``) set otherwise than the defaults are marked
    ``[preset]``. What ``monai-inr-reg presets show NAME`` prints."""
    config = load_preset(preset, **overrides)
    schema = _schema()
    stage_defaults = schema.pop("stage_defaults")
    comments = _comments((resources.files("monai_inr_reg.configs") / f"{_BASE}.yaml").read_text())
    lines: list[str] = []

    def scalar(value) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
        return text[:-3].strip() if text.endswith("...") else text

    def emit(node: dict, default: dict, path: str, indent: int, first: str = "") -> None:
        for i, (key, value) in enumerate(node.items()):
            pad = " " * indent if not (first and i == 0) else " " * (indent - len(first)) + first
            note = comments.get(f"{path}{key}", "")
            if value is None and key in DIMENSIONS:
                note = f"does not apply in {key}"  # the option does not apply to the stage there
            elif value != default.get(key):
                note = f"[preset] {note}".strip()
            suffix = f"  # {note}" if note else ""
            if key == "stages" and not path:
                lines.append(f"{pad}{key}:{suffix}")
                for stage in value:
                    emit(stage, stage_defaults, "stage_defaults.", indent + 4, first="  - ")
            elif isinstance(value, dict) and key not in _FREE_FORM:
                lines.append(f"{pad}{key}:{suffix}")
                inner = default.get(key)  # a number by dimension ({2d: .., 3d: ..}) over a plain default: no inner defaults
                emit(value, inner if isinstance(inner, dict) else {}, f"{path}{key}.", indent + 2)
            else:
                lines.append(f"{pad}{key}: {scalar(value)}{suffix}")

    name = preset if isinstance(preset, str) else "custom"
    lines.append(f"# preset {name}, resolved over configs/{_BASE}.yaml; [preset]: differs from the default")
    emit(config, schema, "", 0)
    return "\n".join(lines) + "\n"
