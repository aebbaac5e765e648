"""The run loop: register each datalist pair, write its outputs, keep the metrics table (one process or torchrun)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_text
from ..core.fields import jacobian_determinant, log_jacobian_std
from ..core.sample import warp_image_mm
from ..inputs import as_image_and_grid, as_initial_matrix, as_mask
from ..metrics import label_overlap
from .datalist import IMAGE_KEYS, START_KEY, clear_pair, complete_row, load_datalist, settings_for
from .writers import ROW_FIELDS, check_outputs, json_safe, save_itk, save_nifti, write_metrics, write_qc_png

__all__ = ["PairFailures", "check_pair", "register_pair", "run_pairs", "run_datalist", "parse_labels"]

logger = logging.getLogger(__name__)


class PairFailures(RuntimeError):
    """Raised at the end of a run when some pairs failed; ``rows`` holds their metrics rows."""

    def __init__(self, rows: list[dict], metrics_path):
        self.rows = rows
        names = ", ".join(f"{r['pair']} ({r['error']})" for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        super().__init__(f"{len(rows)} pair(s) failed: {names}; see {metrics_path}")


def parse_labels(labels) -> tuple[int, ...] | None:
    """The label ids Dice and HD95 average over: ``"2,3,4"``, a list of ints, or a text file of ids
    (separated by commas, spaces or new lines); ``None``: every label present."""
    if labels is None or isinstance(labels, (list, tuple)):
        return None if labels is None else tuple(int(v) for v in labels)
    text = str(labels)
    if Path(text).is_file():
        text = Path(text).read_text()
    try:
        ids = tuple(int(float(v)) for v in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"labels: expected label ids such as 2,3,4 or a file of them, got {labels!r}") from None
    if not ids:
        raise ValueError(f"labels: no label id in {labels!r}")
    return ids


def _load_images(pair: dict, preprocessing=None) -> dict:
    """The pair's images as channel-first MetaTensors: ``preprocessing`` (a MONAI dictionary
    transform such as the bundle's ``Compose([LoadImaged, EnsureChannelFirstd, ...])``) applied to
    ``{key: path}``, or each file read with :func:`monai_inr_reg.io.load_image`."""
    from ..io import load_image

    for key in ("fixed", "moving"):
        if not pair.get(key):
            raise ValueError(f"the datalist entry has no {key!r} image")
    paths = {key: pair[key] for key in IMAGE_KEYS if pair.get(key)}
    if preprocessing is None:
        return {key: load_image(path, name=key) for key, path in paths.items()}
    for key, path in paths.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key!r} file {path!r} does not exist")
    data = preprocessing(dict(paths))
    return {key: data[key] for key in paths}


def _describe(preprocessing) -> str | None:
    """A stable description of a preprocessing pipeline (class names and simple settings), so that
    a rerun with another preprocessing redoes its pairs."""
    if preprocessing is None:
        return None
    parts = []
    for transform in getattr(preprocessing, "transforms", [preprocessing]):
        settings = {k: v for k, v in sorted(vars(transform).items())
                    if isinstance(v, (str, int, float, bool, type(None))) or
                    (isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v))}
        parts.append(f"{type(transform).__name__}{json.dumps(settings, sort_keys=True, default=str)}")
    return "; ".join(parts)


def _check_labels(images: dict) -> None:
    """The labels of a pair (``register`` checks the images, masks and start); ValueError naming them."""
    for key, image_key in (("fixed_label", "fixed"), ("moving_label", "moving")):
        if key in images and tuple(images[key].shape[1:]) != tuple(images[image_key].shape[1:]):
            raise ValueError(f"{key!r} has spatial shape {tuple(images[key].shape[1:])} but {image_key!r} has "
                             f"{tuple(images[image_key].shape[1:])}; a label must be on its image's grid")
        if key in images and not torch.isfinite(images[key].as_tensor()).all():
            raise ValueError(f"{key!r} has NaN or infinite voxels")
    if "fixed_label" in images and "moving_label" in images and \
            images["fixed_label"].shape[0] != images["moving_label"].shape[0]:
        raise ValueError(f"'fixed_label' has {images['fixed_label'].shape[0]} channels but 'moving_label' has "
                         f"{images['moving_label'].shape[0]}")


def _check_images(images: dict, pair: dict) -> None:
    """Every input of a pair as the registration will see it, without registering (the CLI's usage
    check); raises ValueError naming the input."""
    _, fixed_grid = as_image_and_grid(images["fixed"], "fixed", quiet=True)
    _, moving_grid = as_image_and_grid(images["moving"], "moving", quiet=True)
    if fixed_grid.ndim != moving_grid.ndim:
        raise ValueError(f"'fixed' is {fixed_grid.ndim}D {fixed_grid.shape} but 'moving' is {moving_grid.ndim}D "
                         f"{moving_grid.shape}; both must have the same dimension")
    for key, grid, image_key in (("fixed_mask", fixed_grid, "fixed"), ("moving_mask", moving_grid, "moving")):
        as_mask(images.get(key), key, grid, image_key)
    _check_labels(images)
    as_initial_matrix(pair.get(START_KEY), fixed_grid.ndim)


def check_pair(pair: dict, preprocessing=None) -> None:
    """Load and check every input of a datalist pair, writing nothing (the CLI's usage check).

    Raises:
        FileNotFoundError, ValueError: naming the input and what is wrong.
    """
    _check_images(_load_images(pair, preprocessing), pair)


def _label_metrics(images: dict, result, warped_label: torch.Tensor, identity_mm: torch.Tensor, labels) -> dict:
    """Dice and HD95 of the warped moving label, and of the unregistered one (through the affines only)."""
    fixed_grid = result.fixed_grid
    moving_label, fixed_label = images["moving_label"].as_tensor(), images["fixed_label"].as_tensor()
    before = warp_image_mm(moving_label, result.moving_grid, identity_mm, fixed_grid.shape, mode="nearest")
    spacing = fixed_grid.spacing.tolist()
    if labels is not None:  # only the chosen ids count; the others become background
        keep = torch.tensor(labels, dtype=torch.float64)
        fixed_label, warped_label, before = (torch.where(torch.isin(t.double(), keep), t.double(), 0.0)
                                             for t in (fixed_label, warped_label, before))
    overlap_before = label_overlap(fixed_label, before, spacing)
    overlap = label_overlap(fixed_label, warped_label, spacing)
    per_label = {str(k): {"dice_before": overlap_before["per_label"].get(k, {}).get("dice"), **v}
                 for k, v in overlap["per_label"].items()}
    return {"dice_before": overlap_before["dice"], "dice": overlap["dice"],
            "hd95_mm_before": overlap_before["hd95_mm"], "hd95_mm": overlap["hd95_mm"], "per_label": per_label}


def _process(pair: dict, pair_dir: Path, *, preset, overrides: dict, device, seed: int, outputs, progress,
             labels, preprocessing) -> tuple[dict, dict]:
    from ..register import register

    images = _load_images(pair, preprocessing)
    _check_labels(images)  # register() checks the rest, before any work
    fixed, moving = images["fixed"], images["moving"]
    result = register(fixed, moving, preset, fixed_mask=images.get("fixed_mask"), moving_mask=images.get("moving_mask"),
                      initial_transform=pair.get(START_KEY), seed=seed, device=device, progress=progress, **overrides)
    if not torch.isfinite(result.ddf).all():
        raise ValueError("the registration produced a non-finite displacement field")

    writing = time.perf_counter()
    pair_dir.mkdir(parents=True, exist_ok=True)
    affine = fixed.affine  # the fixed file's own header (MONAI's 4 x 4, also in 2D)
    quality = result.quality or {}
    row: dict[str, Any] = {"motion": result.motion, "seconds": float(result.seconds),
                           "final_loss": float(result.loss_history[-1]) if result.loss_history else math.nan,
                           "similarity_before": quality.get("no_registration"), "similarity": quality.get("final"),
                           "suspect": quality.get("suspect"), "weak_evidence": quality.get("weak_evidence"),
                           "returned": quality.get("returned")}
    note = "" if not quality else (
        f"{quality['metric']} (lower is better): {quality['no_registration']:.4g} unregistered, "
        f"{quality['final']:.4g} registered" + ("  -- SUSPECT: worse than its start" if quality["suspect"] else "")
        + ("  -- WEAK EVIDENCE: the images shared little information at the start" if quality.get("weak_evidence") else "")
        + {"as_placed": "; returned as placed", "bounded": "; registered again within bounds (preset bounded)"}.get(
            quality.get("returned"), ""))
    # the compressing writers (gzip releases the GIL) run beside the QC figure and the label warp
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = [pool.submit(save_itk, result, pair_dir, outputs)]
        if "warped" in outputs:
            pending.append(pool.submit(save_nifti, pair_dir / "warped.nii.gz", result.warped.as_tensor(), affine))
        if "ddf" in outputs:
            pending.append(pool.submit(save_nifti, pair_dir / "ddf.nii.gz", result.ddf, affine))
        written = []
        warped_label = None
        if "moving_label" in images:
            warped_label = result.warp(images["moving_label"].as_tensor(), mode="nearest").as_tensor()
            if "labels" in outputs:
                written.append(save_nifti(pair_dir / "warped_label.nii.gz", warped_label, affine, label=True))
        det = jacobian_determinant(result.ddf)
        row["folding_percent"] = 100.0 * float((det <= 0).float().mean())
        row["sdlogj"] = float(log_jacobian_std(result.ddf))  # Learn2Reg's regularity measure
        if "jacobian" in outputs:
            written.append(save_nifti(pair_dir / "jacobian.nii.gz", det[None], affine))
        identity_mm = result.fixed_grid.mm_points(dtype=torch.float64)  # no registration: through the affines only
        if "qc" in outputs:
            fixed_gray, _ = as_image_and_grid(fixed, "fixed", quiet=True)
            moving_before = warp_image_mm(result.moving_image.float(), result.moving_grid, identity_mm,
                                          result.fixed_grid.shape)
            origin = "upper" if str(pair["fixed"]).lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")) \
                else "lower"
            written.append(write_qc_png(pair_dir / "qc.png", fixed_gray[0].numpy(), moving_before[0].numpy(),
                                        result.warped.as_tensor()[0].numpy(), det.numpy(), title=pair["id"],
                                        origin=origin, note=note))
        row["itk"] = pending[0].result()
        written += [future.result() for future in pending[1:]]
    if (pair_dir / "itk").is_dir():
        written += [p for p in sorted((pair_dir / "itk").iterdir()) if p.is_file()]
    extra: dict[str, Any] = {"write_seconds": time.perf_counter() - writing}
    measuring = time.perf_counter()
    if warped_label is not None and "fixed_label" in images:
        metrics = _label_metrics(images, result, warped_label, identity_mm, labels)
        extra["per_label"] = metrics.pop("per_label")
        row.update(metrics)
    extra["metric_seconds"] = time.perf_counter() - measuring
    extra["stage_seconds"] = result.stage_seconds
    extra["stages"] = result.stages  # what ran: per stage iterations, seconds, final loss, similarity at start and end
    extra["start"] = result.start
    extra["quality"] = quality
    files = {str(p.relative_to(pair_dir)): p.stat().st_size for p in written}
    return row, dict(extra, files=files)


def _base_row(pair: dict, preset) -> dict:
    row = {field: None for field in ROW_FIELDS}
    row.update(pair=pair["id"], preset=preset if isinstance(preset, str) else "custom",
               **{k: pair.get(k) for k in IMAGE_KEYS})
    return row


def _split_progress(overrides: dict | None, progress):
    """``--set progress=...`` is the progress setting, not a preset option (it was passed twice)."""
    overrides = dict(overrides or {})
    if "progress" in overrides:
        progress = overrides.pop("progress")
    return overrides, progress


def _show_progress(progress) -> bool:
    if progress in (None, "auto"):
        return sys.stderr.isatty()
    return _as_bool(progress, "progress")


def register_pair(pair: dict, output_dir, *, preset="deformable", overrides: dict | None = None, device=None,
                  seed: int = 0, itk: bool = True, outputs=None, progress=False, labels=None,
                  preprocessing=None) -> dict:
    """Register one datalist pair and write its chosen outputs into ``output_dir/<pair id>/``.

    Skips the pair when its outputs are complete for the same inputs (file contents), preset,
    overrides, seed, device and outputs; clears and redoes a partial or failed one. Never raises for
    a bad pair: the error is logged, written to ``error.json`` and returned in the row.

    Args:
        pair: a :func:`~monai_inr_reg.pipeline.load_datalist` entry: ``id``, ``fixed``, ``moving``
            and optional ``fixed_label``, ``moving_label``, ``fixed_mask``, ``moving_mask``,
            ``initial_transform`` (paths).
        output_dir: the run's output folder.
        preset, overrides, seed, device: as for :func:`monai_inr_reg.register`.
        itk: False leaves out the ITK / ANTs files whatever ``outputs`` says.
        outputs: names from :data:`~monai_inr_reg.pipeline.writers.OUTPUTS` (default
            :data:`~monai_inr_reg.pipeline.writers.DEFAULT_OUTPUTS`).
        progress: show the registration's stage bar (True, False, "auto": on a terminal).
        labels: label ids for Dice / HD95 (see :func:`parse_labels`); default every label.
        preprocessing: optional MONAI dictionary transform that loads the pair's ``{key: path}``
            into channel-first MetaTensors (default: MONAI's ``LoadImage`` per file).

    Returns:
        The metrics row (keys ``ROW_FIELDS``): ``status`` ``"ok"`` or ``"failed"`` with ``error``;
        Dice and HD95 (mm) before and after when both labels are given; folding percent of the
        field; registration seconds (without reading, writing or building the CPU kernel); final loss.
    """
    overrides, progress = _split_progress(overrides, progress)
    outputs = check_outputs(outputs)
    if not _as_bool(itk, "itk"):
        outputs = tuple(o for o in outputs if o not in ("h5", "tfm", "ants", "inverse"))
    labels = parse_labels(labels)
    pair_dir = Path(output_dir) / pair["id"]
    settings = settings_for(pair, preset=preset, overrides=overrides, seed=seed, device=device, outputs=outputs)
    if labels is not None:
        settings["labels"] = list(labels)
    if preprocessing is not None:
        settings["preprocessing"] = _describe(preprocessing)
    stored = complete_row(pair_dir, settings)
    if stored is not None:
        logger.info("pair %s: done earlier with the same inputs and settings, skipped", pair["id"])
        return stored
    clear_pair(pair_dir)
    row = _base_row(pair, preset)
    start = time.perf_counter()
    try:
        values, record = _process(pair, pair_dir, preset=preset, overrides=overrides, device=device, seed=seed,
                                  outputs=outputs, progress=_show_progress(progress), labels=labels,
                                  preprocessing=preprocessing)
    except Exception as err:  # a bad pair must not stop the others; recorded with its message
        message = f"{type(err).__name__}: {err}"
        logger.error("pair %s: FAILED: %s", pair["id"], message)
        logger.debug("pair %s traceback:\n%s", pair["id"], traceback.format_exc())
        row.update(status="failed", error=message)
        write_text(pair_dir / "error.json", json.dumps(json_safe({"row": row, "settings": settings}), indent=1))
        return row
    row.update(values, status="ok", error="")
    write_text(pair_dir / "done.json", json.dumps(json_safe({"row": row, "settings": settings, **record}), indent=1))
    dice = "" if row.get("dice") is None else \
        f", Dice {row['dice_before']:.3f} -> {row['dice']:.3f} (measured in {record['metric_seconds']:.1f} s)"
    size = sum(record["files"].values()) / 1e6
    logger.info("pair %s: done, registered in %.1f s, outputs (%.1f MB) written in %.1f s%s, folding %.3f %%",
                pair["id"], row["seconds"], size, record["write_seconds"], dice, row["folding_percent"])
    logger.debug("pair %s: %.1f s in all", pair["id"], time.perf_counter() - start)
    return row


def run_pairs(pairs: list[dict], output_dir, *, preset="deformable", overrides: dict | None = None, device=None,
              seed: int = 0, itk: bool = True, outputs=None, progress=False, labels=None, preprocessing=None,
              metrics_pairs: list[dict] | None = None) -> list[dict]:
    """:func:`register_pair` for each pair in order, with a bar over the pairs when ``progress``.

    With ``metrics_pairs`` (usually the whole datalist), the metrics files are rebuilt after every
    pair, so an interrupted run still leaves a readable (partial) table.
    """
    overrides, progress = _split_progress(overrides, progress)
    show = _show_progress(progress)
    write_table = "metrics" in check_outputs(outputs) and metrics_pairs is not None
    bar = None
    if show and len(pairs) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="pairs", unit="pair", position=0)
    rows = []
    for pair in pairs:
        if bar is not None:
            bar.set_postfix_str(pair["id"], refresh=True)
        rows.append(register_pair(pair, output_dir, preset=preset, overrides=overrides, device=device, seed=seed,
                                  itk=itk, outputs=outputs, progress=show, labels=labels,
                                  preprocessing=preprocessing))
        if write_table:
            write_metrics(output_dir, metrics_pairs, base_row=lambda p: _base_row(p, preset))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
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
                 device=None, seed: int = 0, itk: bool = True, distributed: bool = False, outputs=None,
                 progress="auto", labels=None, preprocessing=None) -> list[dict]:
    """Register every pair of a datalist (the bundle's ``run``); optionally sharded over torchrun ranks.

    With ``distributed=True`` (launched by ``torchrun``), a ``torch.distributed`` process group is
    made (gloo on CPU, nccl on CUDA; each rank on ``cuda:LOCAL_RANK``), rank ``r`` of ``W`` takes
    pairs ``r::W``, and rank 0 merges every pair's row into the metrics files after a barrier.
    ``output_dir`` must be shared by all nodes.

    Args:
        datalist: datalist JSON path (see :func:`~monai_inr_reg.pipeline.load_datalist`) or parsed dict.
        output_dir: output folder (created). Pairs registered into it earlier keep their rows.
        dataset_dir: base of relative paths in the datalist (default: the datalist's folder).
        preset, overrides, seed: as for :func:`monai_inr_reg.register`; checked before any work.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``None`` / ``"auto"``.
        itk: False leaves out the ITK / ANTs transform files.
        distributed: shard over the ranks of a ``torchrun`` launch.
        outputs: what each pair writes (:data:`~monai_inr_reg.pipeline.writers.OUTPUTS`; a list or
            ``"warped,h5,qc"``); default :data:`~monai_inr_reg.pipeline.writers.DEFAULT_OUTPUTS`.
        progress: bars over pairs and stages: ``"auto"`` (on a terminal), True or False.
        labels: label ids for Dice / HD95 (``"2,3,4"``, a list, or a file); default every label.
        preprocessing: optional MONAI dictionary transform applied to each pair's ``{key: path}``
            to load it (the bundle's ``preprocessing``: ``LoadImaged``, ``EnsureChannelFirstd``,
            and, where wanted, ``Orientationd``, ``ScaleIntensityRanged``, ...); default: MONAI's
            ``LoadImage`` per file. Changing it redoes the pairs.

    Returns:
        This rank's rows (all rows on a single process).

    Raises:
        ValueError, FileNotFoundError: unknown preset, option or output, bad datalist (before any work).
        PairFailures: at the end, when some pairs failed (rank 0: any pair; other ranks: their own).
    """
    from ..config import load_preset

    overrides, progress = _split_progress(overrides, progress)
    itk, distributed = _as_bool(itk, "itk"), _as_bool(distributed, "distributed")
    load_preset(preset, **overrides)  # unknown preset / option: fail before any work
    outputs = check_outputs(outputs)
    labels = parse_labels(labels)
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
                         outputs=outputs, progress=progress, labels=labels, preprocessing=preprocessing,
                         metrics_pairs=None if distributed else pairs)
        if distributed:
            import torch.distributed as dist

            dist.barrier()
        if rank == 0 and "metrics" in outputs:
            write_metrics(output_dir, pairs, base_row=lambda p: _base_row(p, preset))
        reported = rows
        if rank == 0 and world > 1:  # rank 0 reports every rank's failures, from the pair records
            reported = [json.loads((output_dir / p["id"] / name).read_text())["row"] for p in pairs
                        for name in ("done.json", "error.json") if (output_dir / p["id"] / name).is_file()]
        failed = [r for r in reported if r["status"] != "ok"]
        if distributed:
            dist.barrier()
    finally:
        if group_made:
            import torch.distributed as dist

            dist.destroy_process_group()
    if failed:
        raise PairFailures(failed, output_dir / "metrics.csv")
    return rows
