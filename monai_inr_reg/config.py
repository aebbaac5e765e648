"""Presets: load ``configs/<name>.yaml``, merge overrides, validate. The one configuration loader.

``configs/base.yaml`` holds every option with its default and unit (the schema); each preset file
states only what differs from it, so a default changes in one place. A preset is a nested dict. Overrides are deep-merged (a dict merges into a dict, anything else
replaces). Unknown keys are errors that list the valid ones, so a typo fails before any work.
Dotted keys (``"deformable.iterations"``) address nested entries, as the command line's
``--set key=value`` does.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_preset", "list_presets", "describe_preset", "merge_overrides", "nested_overrides", "MOTIONS", "INITIAL_ALIGNMENTS", "REFINE_METRICS", "PARAMETRIC_MOTIONS", "HASH_MOTIONS"]

PARAMETRIC_MOTIONS = ("rigid", "affine")
HASH_MOTIONS = ("deformable", "near_rigid")
MOTIONS = PARAMETRIC_MOTIONS + HASH_MOTIONS
INITIAL_ALIGNMENTS = ("center_of_mass", "none")
REFINE_METRICS = ("mapped_l2", "mutual_information")

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
    """Deep-merge ``overrides`` into a copy of ``base``; keys must exist in ``schema`` (default ``base``)."""
    schema = base if schema is None else schema
    out = copy.deepcopy(base)
    for key, value in nested_overrides(overrides).items():
        if key not in schema:
            valid = ", ".join(sorted(schema))
            raise ValueError(f"load_preset(): unknown option {where + key!r}; valid options here: {valid}")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if key in _FREE_FORM:
                out[key] = {**out[key], **value}
            else:
                out[key] = merge_overrides(out[key], value, schema=schema[key], where=f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_preset(preset: str | dict | Path = "deformable", **overrides: Any) -> dict:
    """Return the validated configuration of a preset with ``overrides`` merged in.

    Args:
        preset: a preset name (see :func:`list_presets`), a path to a YAML file of the same
            schema, or a full config dict (e.g. ``result.config``).
        overrides: nested dicts or dotted keys, e.g. ``iterations_scale=0.5``,
            ``deformable={"iterations": 300}``, ``**{"image.learning_rate.encoding": 5e-3}``.

    Raises:
        ValueError: unknown preset, unknown option, or an invalid value.
    """
    schema = _schema()
    if isinstance(preset, dict):
        base = preset
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
    if config.get("motion") == "near-rigid":  # the spelling users type; sections use identifiers
        config["motion"] = "near_rigid"
    _validate(config)
    return config


def _validate(config: dict) -> None:
    motion = config["motion"]
    if motion not in MOTIONS:
        raise ValueError(f"load_preset(): 'motion' must be one of {MOTIONS}, got {motion!r}")
    for stage in config["prealign"]:
        if stage not in PARAMETRIC_MOTIONS:
            raise ValueError(f"load_preset(): 'prealign' stages must be among {PARAMETRIC_MOTIONS}, got {stage!r}")
    if not float(config["iterations_scale"]) > 0:
        raise ValueError(f"load_preset(): 'iterations_scale' must be > 0, got {config['iterations_scale']!r}")
    for name in MOTIONS:
        if int(config[name]["iterations"]) < 0:
            raise ValueError(f"load_preset(): '{name}.iterations' must be >= 0, got {config[name]['iterations']!r}")
    if config["initial_alignment"] not in INITIAL_ALIGNMENTS:
        raise ValueError(f"load_preset(): 'initial_alignment' must be one of {INITIAL_ALIGNMENTS}, "
                         f"got {config['initial_alignment']!r}")
    if config["refine"]["metric"] not in REFINE_METRICS:
        raise ValueError(f"load_preset(): 'refine.metric' must be one of {REFINE_METRICS}, "
                         f"got {config['refine']['metric']!r}")
    factor = config["refine"]["learning_rate_factor"]
    if isinstance(factor, (list, tuple)) and len(factor) != len(config["refine"]["sigma_voxels"]):
        raise ValueError(f"load_preset(): 'refine.learning_rate_factor' must be one number or one per "
                         f"'refine.sigma_voxels' entry ({len(config['refine']['sigma_voxels'])}), got {factor!r}")
    if config["refine"]["also_from_start"] not in (True, False):
        raise ValueError(f"load_preset(): 'refine.also_from_start' must be true or false, "
                         f"got {config['refine']['also_from_start']!r}")
    if config["multimodal"] not in (True, False):
        raise ValueError(f"load_preset(): 'multimodal' must be true or false, got {config['multimodal']!r}")


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
    comments = _comments((resources.files("monai_inr_reg.configs") / f"{_BASE}.yaml").read_text())
    lines: list[str] = []

    def emit(node: dict, default: dict, path: str, indent: int) -> None:
        for key, value in node.items():
            dotted = f"{path}{key}"
            note = comments.get(dotted, "")
            if value != default.get(key):
                note = f"[preset] {note}".strip()
            suffix = f"  # {note}" if note else ""
            if isinstance(value, dict) and key not in _FREE_FORM:
                lines.append(f"{' ' * indent}{key}:{suffix}")
                emit(value, default.get(key) or {}, dotted + ".", indent + 2)
            else:
                text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
                text = text[:-4].strip() if text.endswith("\n...") or text.endswith("...") else text
                lines.append(f"{' ' * indent}{key}: {text}{suffix}")

    name = preset if isinstance(preset, str) else "custom"
    lines.append(f"# preset {name}, resolved over configs/{_BASE}.yaml; [preset]: differs from the default")
    emit(config, schema, "", 0)
    return "\n".join(lines) + "\n"
