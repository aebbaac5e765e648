"""Register many pairs and write their outputs: the engine of the bundle, the command line and torchrun.

Per pair, into ``output_dir/<pair id>/`` (every file written to a temporary name, then renamed):

- ``warped.nii.gz``: the moving image warped onto the fixed grid (fixed affine), float32;
- ``warped_label.nii.gz``: the moving label warped with ``nearest`` (when given);
- ``ddf.nii.gz``: the MONAI DDF ``(D, *S_fixed)``, voxel units along the fixed array axes, stored
  channel-last as MONAI's ``SaveImage`` stores it (3D ``(X, Y, Z, 3)``, 2D ``(X, Y, 1, 2)``);
  ``LoadImage(ensure_channel_first=True)`` + :class:`~monai_inr_reg.transforms.ApplyDdf` read it back;
- ``itk/``: ITK / ANTs transform files from :func:`monai_inr_reg.itk_bridge.save_result` (when ITK works);
- ``qc.png``: fixed, moving and warped slices, checkerboards before/after, Jacobian determinant map;
- ``done.json``: the pair's metrics row and file list, written **last**: a pair is complete when it
  exists, matches the run's settings and every listed file is present with its size.

A failing pair writes ``error.json`` instead (its row with the error) and the others go on.
``output_dir/metrics.csv`` and ``metrics.json`` hold one row per datalist pair, rebuilt from the
per-pair files, so reruns never duplicate rows. A rerun skips complete pairs and redoes the others.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import nested_overrides
from .core.fields import jacobian_determinant
from .core.sample import warp_image_mm
from .inputs import as_image_and_grid
from .metrics import label_overlap

__all__ = [
    "ROW_FIELDS", "PairFailures", "load_datalist", "register_pair", "run_pairs", "write_metrics", "run_datalist",
    "save_nifti",
]

logger = logging.getLogger(__name__)

ROW_FIELDS = ("pair", "status", "error", "fixed", "moving", "fixed_label", "moving_label", "preset", "motion",
              "dice_before", "dice", "hd95_mm_before", "hd95_mm", "folding_percent", "seconds", "final_loss", "itk")
_IMAGE_KEYS = ("fixed", "moving", "fixed_label", "moving_label", "fixed_mask", "moving_mask")
# what a datalist entry may name besides its images: a linear ITK / ANTs transform file (or a matrix)
_START_KEY = "initial_transform"
_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npz",
             ".npy", ".dcm", ".gz")


class PairFailures(RuntimeError):
    """Raised at the end of a run when some pairs failed; ``rows`` holds their metrics rows."""

    def __init__(self, rows: list[dict], metrics_path):
        self.rows = rows
        names = ", ".join(f"{r['pair']} ({r['error']})" for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        super().__init__(f"{len(rows)} pair(s) failed: {names}; see {metrics_path}")


# ----------------------------------------------------------------------------------------- datalist
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
        pair = {k: v for k, v in entry.items() if k not in _IMAGE_KEYS}
        for key in _IMAGE_KEYS + (_START_KEY,):
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


# ----------------------------------------------------------------------------------------- writing
@contextmanager
def _atomic(path: Path):
    """Yield a temporary path next to ``path`` (same suffix); rename it into place on success."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    with _atomic(path) as tmp:
        tmp.write_text(text)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _label_dtype(array: np.ndarray):
    if not np.all(np.isfinite(array)) or not np.all(array == np.rint(array)):
        return np.float32
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return np.float32


def save_nifti(path, data, affine_ras, *, label: bool = False) -> Path:
    """Write a channel-first ``(C, *S)`` image as NIfTI with a RAS affine, through a temporary name.

    One channel is stored as ``*S``; several channel-last as MONAI's ``SaveImage`` does (3D
    ``(X, Y, Z, C)``, 2D ``(X, Y, 1, C)``). Labels get the smallest integer type holding their
    values; images float32.

    Args:
        path: destination (``.nii.gz`` or ``.nii``).
        data: ``(C, *S)`` tensor or array.
        affine_ras: voxel -> RAS mm, ``(D + 1, D + 1)`` or MONAI's 4x4 (also for 2D).
        label: store as integer labels.
    """
    import nibabel as nib
    from monai.data.utils import to_affine_nd

    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    ndim = array.ndim - 1
    if array.shape[0] == 1:
        array = array[0]
    else:
        array = np.moveaxis(array, 0, -1)
        if ndim == 2:
            array = array[:, :, None, :]
    array = array.astype(_label_dtype(array) if label else np.float32)
    affine = to_affine_nd(3, np.asarray(torch.as_tensor(affine_ras, dtype=torch.float64)))
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    path = Path(path)
    with _atomic(path) as tmp:
        nib.save(image, str(tmp))
    return path


def _middle_slice(volume: np.ndarray) -> np.ndarray:
    return volume if volume.ndim == 2 else volume[:, :, volume.shape[2] // 2]


def _display(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1, 99])
    return np.clip((image - low) / (high - low if high > low else 1.0), 0, 1)


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    rows = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def write_qc_png(path, fixed, moving_before, warped, det, *, title: str = "", origin: str = "lower") -> Path:
    """QC figure: fixed | moving (before) | warped; checkerboards before and after | Jacobian determinant.

    3D images show the middle slice of the last array axis. Arrays ``(*S_fixed)`` on the fixed grid,
    displayed transposed (first array axis horizontal).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, m, w, j = (_middle_slice(np.asarray(a, dtype=np.float32)) for a in (fixed, moving_before, warped, det))
    f, m, w = _display(f), _display(m), _display(w)
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 7.2))
    panels = [(f, "fixed", "gray"), (m, "moving (before)", "gray"), (w, "warped moving", "gray"),
              (_checkerboard(f, m), "checkerboard before", "gray"), (_checkerboard(f, w), "checkerboard after", "gray")]
    for ax, (img, name, cmap) in zip(axes.flat, panels):
        ax.imshow(img.T, cmap=cmap, origin=origin, vmin=0, vmax=1)
        ax.set_title(name)
    ax = axes.flat[5]
    shown = ax.imshow(j.T, cmap="RdBu_r", origin=origin, vmin=0.0, vmax=2.0)
    if (j <= 0).any():
        ax.contour((j <= 0).T.astype(float), levels=[0.5], colors="k", linewidths=0.8, origin=origin)
    ax.set_title(f"Jacobian det. ({100.0 * float((j <= 0).mean()):.2f} % <= 0)")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    path = Path(path)
    with _atomic(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


# ----------------------------------------------------------------------------------------- one pair
def _settings(preset, overrides, seed, pair: dict | None = None) -> dict:
    """What makes a pair's outputs reusable by a rerun (not the device); masks and start when given."""
    preset_name = preset if isinstance(preset, str) else json.dumps(preset, sort_keys=True, default=str)
    settings = {"preset": preset_name, "overrides": nested_overrides(overrides or {}), "seed": int(seed)}
    for key in ("fixed_mask", "moving_mask", _START_KEY):
        if (pair or {}).get(key) is not None:
            settings[key] = pair[key]
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _complete_row(pair_dir: Path, settings: dict) -> dict | None:
    """The stored row when the pair's outputs are complete for these settings, else None."""
    done = pair_dir / "done.json"
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if record.get("settings") != settings:
        logger.info("pair %s: outputs were made with other settings %s; redoing", pair_dir.name, record.get("settings"))
        return None
    for name, size in record.get("files", {}).items():
        file = pair_dir / name
        if not file.is_file() or file.stat().st_size != size:
            return None
    return record["row"]


def _clear(pair_dir: Path) -> None:
    """Remove a partial pair's outputs (the marker first, so a crash in between stays 'partial')."""
    for name in ("done.json", "error.json"):
        (pair_dir / name).unlink(missing_ok=True)
    for item in pair_dir.iterdir() if pair_dir.is_dir() else []:
        if item.name.startswith(".tmp-") or item.name in ("itk", "warped.nii.gz", "warped_label.nii.gz",
                                                          "ddf.nii.gz", "qc.png"):
            shutil.rmtree(item) if item.is_dir() else item.unlink()


def _load(pair: dict, key: str):
    from .io import load_image

    return load_image(pair[key], name=key)


def _check_pair(images: dict) -> None:
    fixed, moving = images["fixed"], images["moving"]
    if fixed.ndim != moving.ndim:
        raise ValueError(f"'fixed' is {fixed.ndim - 1}D {tuple(fixed.shape[1:])} but 'moving' is {moving.ndim - 1}D "
                         f"{tuple(moving.shape[1:])}; both must have the same dimension")
    for key, image in images.items():
        if not torch.isfinite(image.as_tensor()).all():
            bad = int((~torch.isfinite(image.as_tensor())).sum())
            raise ValueError(f"{key!r} has {bad} NaN or infinite voxels")
    for label_key, image_key in (("fixed_label", "fixed"), ("moving_label", "moving")):  # masks: register() checks them
        if label_key in images and tuple(images[label_key].shape[1:]) != tuple(images[image_key].shape[1:]):
            raise ValueError(f"{label_key!r} has spatial shape {tuple(images[label_key].shape[1:])} but {image_key!r} "
                             f"has {tuple(images[image_key].shape[1:])}; a label must be on its image's grid")
    if "fixed_label" in images and "moving_label" in images and \
            images["fixed_label"].shape[0] != images["moving_label"].shape[0]:
        raise ValueError(f"'fixed_label' has {images['fixed_label'].shape[0]} channels but 'moving_label' has "
                         f"{images['moving_label'].shape[0]}")


def _save_itk(result, pair_dir: Path) -> str:
    """Write the ITK files into ``itk/`` (renamed into place when all are written); a note for the row.

    Only a missing ITK (``ImportError``) or an unsupported result (``NotImplementedError``) is
    tolerated; any other error fails the pair.
    """
    tmp = pair_dir / ".tmp-itk"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        result.save(tmp)
    except (ImportError, NotImplementedError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        return f"unavailable: {err}"
    os.replace(tmp, pair_dir / "itk")
    return "itk/"


def _label_metrics(images: dict, result, warped_label: torch.Tensor, identity_mm: torch.Tensor) -> dict:
    """Dice and HD95 of the warped moving label, and of the unregistered one (through the affines only)."""
    fixed_grid = result.fixed_grid
    moving_label, fixed_label = images["moving_label"].as_tensor(), images["fixed_label"].as_tensor()
    before = warp_image_mm(moving_label, result.moving_grid, identity_mm, fixed_grid.shape, mode="nearest")
    spacing = fixed_grid.spacing.tolist()
    overlap_before = label_overlap(fixed_label, before, spacing)
    overlap = label_overlap(fixed_label, warped_label, spacing)
    return {"dice_before": overlap_before["dice"], "dice": overlap["dice"],
            "hd95_mm_before": overlap_before["hd95_mm"], "hd95_mm": overlap["hd95_mm"]}


def _process(pair: dict, pair_dir: Path, *, preset, overrides: dict, device, seed: int, itk: bool) -> tuple[dict, dict]:
    from .register import register

    for key in ("fixed", "moving"):
        if not pair.get(key):
            raise ValueError(f"the datalist entry has no {key!r} image")
    images = {key: _load(pair, key) for key in _IMAGE_KEYS if pair.get(key)}
    _check_pair(images)
    fixed, moving = images["fixed"], images["moving"]
    fixed_gray, _ = as_image_and_grid(fixed, "fixed")
    result = register(fixed, moving, preset, fixed_mask=images.get("fixed_mask"), moving_mask=images.get("moving_mask"),
                      initial_transform=pair.get(_START_KEY), seed=seed, device=device, progress=False, **overrides)
    if not torch.isfinite(result.ddf).all():
        raise ValueError("the registration produced a non-finite displacement field")

    pair_dir.mkdir(parents=True, exist_ok=True)
    written = [save_nifti(pair_dir / "warped.nii.gz", result.warped.as_tensor(), fixed.affine),
               save_nifti(pair_dir / "ddf.nii.gz", result.ddf, fixed.affine)]
    identity_mm = result.fixed_grid.mm_points(dtype=torch.float64)  # no registration: through the affines only
    row: dict[str, Any] = {"motion": result.motion}
    if "moving_label" in images:
        warped_label = result.warp(images["moving_label"].as_tensor(), mode="nearest").as_tensor()
        written.append(save_nifti(pair_dir / "warped_label.nii.gz", warped_label, fixed.affine, label=True))
        if "fixed_label" in images:
            row.update(_label_metrics(images, result, warped_label, identity_mm))
    det = jacobian_determinant(result.ddf)
    row["folding_percent"] = 100.0 * float((det <= 0).float().mean())
    row["seconds"] = float(result.seconds)
    row["final_loss"] = float(result.loss_history[-1]) if result.loss_history else math.nan
    moving_before = warp_image_mm(result.moving_image.float(), result.moving_grid, identity_mm, result.fixed_grid.shape)
    origin = "upper" if str(pair["fixed"]).lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")) else "lower"
    written.append(write_qc_png(pair_dir / "qc.png", fixed_gray[0].numpy(), moving_before[0].numpy(),
                                result.warped.as_tensor()[0].numpy(), det.numpy(), title=pair["id"], origin=origin))
    row["itk"] = _save_itk(result, pair_dir) if itk else "disabled"
    if (pair_dir / "itk").is_dir():
        written += [p for p in sorted((pair_dir / "itk").iterdir()) if p.is_file()]
    files = {str(p.relative_to(pair_dir)): p.stat().st_size for p in written}
    return row, files


def _base_row(pair: dict, preset) -> dict:
    row = {field: None for field in ROW_FIELDS}
    row.update(pair=pair["id"], preset=preset if isinstance(preset, str) else "custom",
               **{k: pair.get(k) for k in _IMAGE_KEYS})
    return row


def register_pair(pair: dict, output_dir, *, preset="deformable", overrides: dict | None = None, device=None,
                  seed: int = 0, itk: bool = True) -> dict:
    """Register one datalist pair and write its outputs into ``output_dir/<pair id>/`` (module docstring).

    Skips the pair when its outputs are already complete for the same preset, overrides and seed;
    clears and redoes a partial or failed one. Never raises for a bad pair: the error is logged,
    written to ``error.json`` and returned in the row.

    Args:
        pair: a :func:`load_datalist` entry: ``id``, ``fixed``, ``moving`` and optional
            ``fixed_label``, ``moving_label`` (paths).
        output_dir: the run's output folder.
        preset, overrides, seed, device: as for :func:`monai_inr_reg.register`.
        itk: also write the ITK / ANTs transform files (when ITK is importable).

    Returns:
        The metrics row (keys :data:`ROW_FIELDS`): ``status`` ``"ok"`` or ``"failed"`` with ``error``;
        Dice and HD95 (mm) before and after when both labels are given; folding percent of the
        field; registration seconds; final loss.
    """
    overrides = dict(overrides or {})
    pair_dir = Path(output_dir) / pair["id"]
    settings = _settings(preset, overrides, seed, pair)
    stored = _complete_row(pair_dir, settings)
    if stored is not None:
        logger.info("pair %s: complete, skipped", pair["id"])
        return stored
    _clear(pair_dir)
    row = _base_row(pair, preset)
    start = time.perf_counter()
    try:
        values, files = _process(pair, pair_dir, preset=preset, overrides=overrides, device=device, seed=seed, itk=itk)
    except Exception as err:  # a bad pair must not stop the others; recorded with its message
        message = f"{type(err).__name__}: {err}"
        logger.error("pair %s: FAILED: %s", pair["id"], message)
        logger.debug("pair %s traceback:\n%s", pair["id"], traceback.format_exc())
        row.update(status="failed", error=message)
        pair_dir.mkdir(parents=True, exist_ok=True)
        _write_text(pair_dir / "error.json", json.dumps(_json_safe({"row": row, "settings": settings}), indent=1))
        return row
    row.update(values, status="ok", error="")
    _write_text(pair_dir / "done.json", json.dumps(_json_safe({"row": row, "settings": settings, "files": files}),
                                                   indent=1))
    dice = "" if row.get("dice") is None else f", Dice {row['dice_before']:.3f} -> {row['dice']:.3f}"
    logger.info("pair %s: done in %.1f s%s, folding %.3f %%", pair["id"], time.perf_counter() - start, dice,
                row["folding_percent"])
    return row


# ----------------------------------------------------------------------------------------- many pairs
def _stored_row(pair: dict, output_dir: Path, preset) -> dict:
    for name in ("done.json", "error.json"):
        file = output_dir / pair["id"] / name
        if file.is_file():
            try:
                return json.loads(file.read_text())["row"]
            except (json.JSONDecodeError, KeyError, OSError):
                pass
    row = _base_row(pair, preset)
    row.update(status="pending", error="not processed")
    return row


def write_metrics(pairs: list[dict], output_dir, *, preset="deformable") -> list[dict]:
    """Rebuild ``metrics.csv`` and ``metrics.json`` from the per-pair files: one row per pair, in order.

    Pairs without a ``done.json`` or ``error.json`` (not processed yet) get status ``pending``.
    """
    output_dir = Path(output_dir)
    rows = [_stored_row(pair, output_dir, preset) for pair in pairs]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_text(output_dir / "metrics.csv", buffer.getvalue())
    ok = [r for r in rows if r["status"] == "ok"]
    summary = {"pairs": len(rows), "ok": len(ok), "failed": sum(r["status"] == "failed" for r in rows),
               "pending": sum(r["status"] == "pending" for r in rows)}
    for key in ("dice_before", "dice", "hd95_mm_before", "hd95_mm", "folding_percent", "seconds"):
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        summary[f"mean_{key}"] = float(np.mean(values)) if values else None
    _write_text(output_dir / "metrics.json", json.dumps(_json_safe({"summary": summary, "rows": rows}), indent=1))
    return rows


def run_pairs(pairs: list[dict], output_dir, *, preset="deformable", overrides: dict | None = None, device=None,
              seed: int = 0, itk: bool = True, metrics_pairs: list[dict] | None = None) -> list[dict]:
    """:func:`register_pair` for each pair in order.

    With ``metrics_pairs`` (usually the whole datalist), the metrics files are rebuilt for those
    pairs after every pair, so an interrupted run still leaves a readable (partial) table.
    """
    rows = []
    for pair in pairs:
        rows.append(register_pair(pair, output_dir, preset=preset, overrides=overrides, device=device, seed=seed,
                                  itk=itk))
        if metrics_pairs is not None:
            write_metrics(metrics_pairs, output_dir, preset=preset)
    return rows


def _as_bool(value, name: str) -> bool:
    """Command lines hand booleans over as text (``--write_itk false``)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"run_datalist(): {name!r} must be true or false, got {value!r}")
    return bool(value)


def _device(device, distributed: bool):
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if distributed and str(device) == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return str(device)


def run_datalist(datalist, output_dir, *, dataset_dir=None, preset="deformable", overrides: dict | None = None,
                 device=None, seed: int = 0, itk: bool = True, distributed: bool = False) -> list[dict]:
    """Register every pair of a datalist (the bundle's ``run``); optionally sharded over torchrun ranks.

    With ``distributed=True`` (launched by ``torchrun``), a ``torch.distributed`` process group is
    made (gloo on CPU, nccl on CUDA; each rank on ``cuda:LOCAL_RANK``), rank ``r`` of ``W`` takes
    pairs ``r::W``, and rank 0 merges every pair's row into the metrics files after a barrier.
    ``output_dir`` must be shared by all nodes.

    Args:
        datalist: datalist JSON path (see :func:`load_datalist`) or parsed dict.
        output_dir: output folder (created).
        dataset_dir: base of relative paths in the datalist (default: the datalist's folder).
        preset, overrides, seed: as for :func:`monai_inr_reg.register`; checked before any work.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``None`` / ``"auto"``.
        itk: also write ITK transform files.
        distributed: shard over the ranks of a ``torchrun`` launch.

    Returns:
        This rank's rows (all rows on a single process).

    Raises:
        ValueError, FileNotFoundError: unknown preset or option, bad datalist (before any work).
        PairFailures: at the end, when some pairs failed (rank 0: any pair; other ranks: their own).
    """
    from .config import load_preset

    overrides = dict(overrides or {})
    itk, distributed = _as_bool(itk, "itk"), _as_bool(distributed, "distributed")
    load_preset(preset, **overrides)  # unknown preset / option: fail before any work
    pairs = load_datalist(datalist, dataset_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = _device(device, distributed)
    rank, world, group_made = 0, 1, False
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            use_nccl = device.startswith("cuda")
            if use_nccl:
                torch.cuda.set_device(torch.device(device))
            dist.init_process_group(backend="nccl" if use_nccl else "gloo")
            group_made = True
        rank, world = dist.get_rank(), dist.get_world_size()
    mine = pairs[rank::world]
    logger.info("rank %d/%d: %d of %d pairs, preset %s, device %s, output %s", rank, world, len(mine), len(pairs),
                preset, device, output_dir)
    try:
        rows = run_pairs(mine, output_dir, preset=preset, overrides=overrides, device=device, seed=seed, itk=itk,
                         metrics_pairs=None if distributed else pairs)
        if distributed:
            import torch.distributed as dist

            dist.barrier()
        if rank == 0:
            all_rows = write_metrics(pairs, output_dir, preset=preset)
            failed = [r for r in all_rows if r["status"] != "ok"]
        else:
            failed = [r for r in rows if r["status"] != "ok"]
        if distributed:
            dist.barrier()
    finally:
        if group_made:
            import torch.distributed as dist

            dist.destroy_process_group()
    if failed:
        raise PairFailures(failed, output_dir / "metrics.csv")
    return rows
