"""Datalists and resume: which pairs to register, their output folders, and what makes a result reusable.

A pair's outputs are reusable by a rerun only when nothing that made them changed: the preset,
the overrides, the seed, the device, the chosen outputs, and the *content* of every input file
(images, labels, masks, initial transform; a SHA-256 of each file, so a file replaced under the
same name is noticed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from ..config import nested_overrides

__all__ = ["IMAGE_KEYS", "START_KEY", "INPUT_KEYS", "load_datalist", "settings_for", "complete_row", "clear_pair"]

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("fixed", "moving", "fixed_label", "moving_label", "fixed_mask", "moving_mask")
# what a datalist entry may name besides its images: a linear ITK / ANTs transform file (or a matrix)
START_KEY = "initial_transform"
INPUT_KEYS = IMAGE_KEYS + (START_KEY,)
_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npz",
             ".npy", ".dcm", ".gz")


def _stem(path) -> str:
    name = Path(str(path)).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "pair"


def load_datalist(datalist, dataset_dir=None) -> list[dict]:
    """Read a datalist ``{"pairs": [{"fixed", "moving", "fixed_label"?, "moving_label"?, "id"?}]}``.

    Relative image paths are resolved against ``dataset_dir`` (default: the datalist's folder).
    Every pair gets an ``id`` (its own, else ``<moving stem>_to_<fixed stem>``; repeated ids get
    ``-<index>``) naming its output folder. An entry without ``fixed`` or ``moving`` is kept: it
    fails alone when processed.

    Args:
        datalist: path to the JSON file, or the already parsed dict.
        dataset_dir: base folder of relative paths.

    Raises:
        FileNotFoundError: the datalist file does not exist.
        ValueError: not JSON, or no ``pairs`` list of objects.
    """
    if isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist)
        if not path.is_file():
            raise FileNotFoundError(f"load_datalist(): datalist {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"load_datalist(): datalist {str(path)!r} is not valid JSON: {err}") from None
        base = Path(dataset_dir) if dataset_dir is not None else path.parent
    else:
        data, base = datalist, Path(dataset_dir if dataset_dir is not None else ".")
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise ValueError("load_datalist(): the datalist must be an object with a 'pairs' list of objects "
                         "{'fixed', 'moving', 'fixed_label'?, 'moving_label'?}")
    out, seen = [], set()
    for index, entry in enumerate(pairs):
        pair = {k: v for k, v in entry.items() if k not in IMAGE_KEYS}
        for key in INPUT_KEYS:
            if entry.get(key) and isinstance(entry[key], str):
                pair[key] = str(base / entry[key]) if not Path(entry[key]).is_absolute() else str(entry[key])
        if "id" in entry:
            pid = _safe(str(entry["id"]))
        elif "fixed" in pair and "moving" in pair:
            pid = _safe(f"{_stem(pair['moving'])}_to_{_stem(pair['fixed'])}")
        else:
            pid = f"pair{index:03d}"
        if pid in seen:
            pid = f"{pid}-{index}"
        seen.add(pid)
        pair["id"] = pid
        out.append(pair)
    return out


def _content_hash(path) -> str | None:
    """SHA-256 of a file's bytes (None when it does not exist: the pair then fails on its own)."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def settings_for(pair: dict, *, preset, overrides: dict | None, seed: int, device, outputs) -> dict:
    """What makes a pair's outputs reusable by a rerun: preset, overrides, seed, device, outputs and
    the content of every input file (a matrix given as the initial transform counts by value)."""
    preset_name = preset if isinstance(preset, str) else json.dumps(preset, sort_keys=True, default=str)
    inputs = {}
    for key in INPUT_KEYS:
        value = pair.get(key)
        if value is None:
            continue
        inputs[key] = _content_hash(value) if isinstance(value, str) else json.dumps(value, default=str)
    settings = {"preset": preset_name, "overrides": nested_overrides(overrides or {}), "seed": int(seed),
                "device": str(device), "outputs": sorted(outputs), "inputs": inputs}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def complete_row(pair_dir: Path, settings: dict) -> dict | None:
    """The stored row when the pair's outputs are complete for these settings, else None."""
    done = pair_dir / "done.json"
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if record.get("settings") != settings:
        stored = record.get("settings") or {}
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        logger.info("pair %s: %s changed since its outputs were made; redoing", pair_dir.name, ", ".join(changed))
        return None
    for name, size in record.get("files", {}).items():
        file = pair_dir / name
        if not file.is_file() or file.stat().st_size != size:
            return None
    return record["row"]


def clear_pair(pair_dir: Path) -> None:
    """Remove a pair's earlier outputs (the markers first, so a crash in between stays 'partial')."""
    for name in ("done.json", "error.json"):
        (pair_dir / name).unlink(missing_ok=True)
    for item in pair_dir.iterdir() if pair_dir.is_dir() else []:
        shutil.rmtree(item) if item.is_dir() else item.unlink()
