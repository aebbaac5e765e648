"""What a pair writes, and the run's metrics table: every file through :mod:`monai_inr_reg.atomic`.

Outputs a user chooses (``outputs=``, the CLI's ``--outputs``, the bundle's ``outputs``):

=========== ====================================================================================
name        file(s) in ``OUT/<pair id>/``
=========== ====================================================================================
warped      ``warped.nii.gz``: the moving image on the fixed grid, float32 (default)
labels      ``warped_label.nii.gz``: the moving label warped with nearest neighbour (default; when given)
h5          ``itk/transform.h5``: ITK transform fixed -> moving, compressed float32 field (default)
qc          ``qc.png``: slices of fixed, moving, warped, checkerboards, Jacobian determinant (default)
metrics     a row in ``OUT/metrics.csv`` and ``OUT/metrics.json`` (default)
ddf         ``ddf.nii.gz``: the MONAI DDF ``(D, *S_fixed)`` in voxels, channel-last as ``SaveImage`` writes it
tfm         ``itk/transform.tfm``: the same ITK transform as text (large for a field: about 20 bytes a component)
ants        ``itk/warp.nii.gz`` + ``itk/affine.mat``: ANTs' ``[1Warp, 0GenericAffine]`` layout
inverse     ``itk/inverse.*``: the inverse transform in each chosen ITK / ANTs format (computed only then)
jacobian    ``jacobian.nii.gz``: the Jacobian determinant of the motion on the fixed grid, float32
=========== ====================================================================================
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, write_text
from ..qc import write_qc_png

__all__ = ["OUTPUTS", "DEFAULT_OUTPUTS", "ROW_FIELDS", "check_outputs", "save_nifti", "write_qc_png", "save_itk",
           "write_metrics", "json_safe"]

OUTPUTS = ("warped", "labels", "h5", "qc", "metrics", "ddf", "tfm", "ants", "inverse", "jacobian")
DEFAULT_OUTPUTS = ("warped", "labels", "h5", "qc", "metrics")
_ITK_FORMATS = {"h5": "h5", "tfm": "tfm", "ants": "nii"}

ROW_FIELDS = ("pair", "status", "error", "fixed", "moving", "fixed_label", "moving_label", "preset", "motion",
              "dice_before", "dice", "hd95_mm_before", "hd95_mm", "folding_percent", "sdlogj", "similarity_before",
              "similarity", "suspect", "weak_evidence", "returned", "seconds", "final_loss", "itk")


def check_outputs(outputs) -> tuple[str, ...]:
    """``"warped,h5"``, a list, or ``None`` (the defaults) -> a tuple of known output names.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if outputs is None:
        return DEFAULT_OUTPUTS
    names = [n.strip() for n in outputs.split(",")] if isinstance(outputs, str) else [str(n) for n in outputs]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise ValueError(f"outputs: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(OUTPUTS)}")
    return tuple(dict.fromkeys(names))


def json_safe(value):
    """``value`` with non-finite floats as None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
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
    """Write a channel-first ``(C, *S)`` image as NIfTI with a RAS affine, atomically.

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

    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    ndim = array.ndim - 1
    if array.shape[0] == 1:
        array = array[0]
    else:
        array = np.moveaxis(array, 0, -1)
        if ndim == 2:
            array = array[:, :, None, :]
    array = array.astype(_label_dtype(array) if label else np.float32)
    # a 2D (3 x 3) affine becomes NIfTI's 4 x 4 as MONAI's to_affine_nd(3, affine) makes it
    affine = np.eye(4)
    given = torch.as_tensor(affine_ras, dtype=torch.float64).numpy()
    d = given.shape[0] - 1
    affine[:d, :d], affine[:d, 3] = given[:d, :d], given[:d, -1]
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))
    return Path(path)


# ----------------------------------------------------------------------------------------- ITK files
def save_itk(result, pair_dir: Path, outputs) -> str:
    """Write the chosen ITK / ANTs files into ``pair_dir/itk/`` (the folder appears whole or not at all).

    Returns the metrics row's note: ``"itk/"``, ``"not requested"``, or why ITK could not write
    (only a missing ITK, ``ImportError``, or an unsupported result, ``NotImplementedError``, is
    tolerated; any other error fails the pair).
    """
    formats = [fmt for name, fmt in _ITK_FORMATS.items() if name in outputs]
    if not formats:
        return "not requested"
    try:
        with atomic_path(pair_dir / "itk") as temporary:
            result.save(temporary, formats=formats, inverse="inverse" in outputs)
    except (ImportError, NotImplementedError) as err:
        return f"unavailable: {err}"
    return "itk/"


# ----------------------------------------------------------------------------------------- metrics
@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder/.metrics.lock`` (POSIX ``flock``; a no-op where there is none)."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic replace still keeps the files whole
        yield
        return
    with open(folder / ".metrics.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stored_rows(output_dir: Path) -> dict[str, dict]:
    """``{pair id: row}`` of every pair folder in ``output_dir`` with a ``done.json`` or ``error.json``."""
    rows = {}
    for folder in sorted(p for p in output_dir.iterdir() if p.is_dir()):
        for name in ("done.json", "error.json"):
            file = folder / name
            if file.is_file():
                try:
                    rows[folder.name] = json.loads(file.read_text())["row"]
                    break
                except (json.JSONDecodeError, KeyError, OSError):
                    pass
    return rows


def write_metrics(output_dir, pending: list[dict] | None = None, *, base_row=None) -> list[dict]:
    """Rebuild ``metrics.csv`` and ``metrics.json`` from every pair folder in ``output_dir``.

    Rows are never lost: a pair registered by an earlier command into the same folder keeps its
    row, and concurrent writers (several ``register`` commands, torchrun ranks) take turns under
    a file lock and each writes the union of what is on disk, atomically. ``pending`` pairs (of
    the current datalist, not processed yet) get a row with status ``pending`` via ``base_row``.
    Order: the pending list's order for its pairs, then the others by name.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with _locked(output_dir):
        stored = _stored_rows(output_dir)
        rows, seen = [], set()
        for pair in pending or []:
            row = stored.get(pair["id"])
            if row is None:
                row = dict(base_row(pair), status="pending", error="not processed")
            rows.append(row)
            seen.add(pair["id"])
        rows += [row for pid, row in stored.items() if pid not in seen]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        write_text(output_dir / "metrics.csv", buffer.getvalue())
        ok = [r for r in rows if r["status"] == "ok"]
        summary = {"pairs": len(rows), "ok": len(ok), "failed": sum(r["status"] == "failed" for r in rows),
                   "pending": sum(r["status"] == "pending" for r in rows),
                   "suspect": sum(r.get("suspect") is True for r in rows),
                   "weak_evidence": sum(r.get("weak_evidence") is True for r in rows),
                   "as_placed": sum(r.get("returned") == "as_placed" for r in rows),
                   "bounded": sum(r.get("returned") == "bounded" for r in rows)}
        for key in ("dice_before", "dice", "hd95_mm_before", "hd95_mm", "folding_percent", "sdlogj", "seconds"):
            values = [r[key] for r in ok if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            summary[f"mean_{key}"] = float(np.mean(values)) if values else None
        write_text(output_dir / "metrics.json", json.dumps(json_safe({"summary": summary, "rows": rows}), indent=1))
    return rows
