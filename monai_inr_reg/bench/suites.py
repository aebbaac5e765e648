"""The four benchmark suites: rigid-levels, deformable2d, brain3d, multimodal3d.

Each suite builds its cases from ``../shared/data`` with known ground truth (see
:mod:`.protocols`), runs every requested method on the same cases, scores them, and returns a
payload ``{"suite", "machine", "options", "notes", "cases": [...], "tables": markdown}``; the CLI
(:func:`monai_inr_reg.bench.main`) prints the tables and writes the JSON and QC figures.

A method that raises is recorded with its error (and counted as a failure) so one broken method
never hides the others.
"""

from __future__ import annotations

import math
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.grid import ImageGrid, apply_affine
from ..core.sample import warp_image_mm
from . import data as bdata
from . import metrics as bmetrics
from . import protocols
from .baselines import ANTS_SETTINGS, ELASTIX_SETTINGS, matrix_to_ddf_mm
from .peers import PEER_SETTINGS
from .methods import DEFORMABLE_METHODS, RIGID_METHODS, method_available, method_label, run_method
from ..qc import write_comparison_png
from .report import markdown_table

__all__ = ["SuiteOptions", "SUITES", "run_suite", "DEFAULT_METHODS"]

DEFAULT_METHODS = {
    "rigid-levels": ("identity", "ours-rigid", "ours-near-rigid", "ants", "elastix"),
    "deformable2d": ("identity", "ours", "ants-syn", "ants-syncc", "convexadam", "fireants"),
    "brain3d": ("identity", "ours", "ants-syn", "ants-syncc", "convexadam", "fireants"),
    "multimodal3d": ("identity", "ours", "ants-syn", "convexadam", "fireants"),
}
_DATASET_IDS = {"brainweb": 0, "stroke": 1, "ixi002": 2}  # fixed seed streams: same motions for multi/single
DEFAULT_CASES = {"rigid-levels": 20, "deformable2d": 10, "brain3d": 2, "multimodal3d": 5}
_DLMUSE_CASES = 5  # brain3d's DLMUSE pairs (of 9) when --cases is not given


@dataclass
class SuiteOptions:
    """Options shared by the suites (the CLI flags).

    Attributes:
        cases: cases per level (rigid-levels) or per group; None: the suite's default.
        methods: subset of the suite's methods; None: all of them.
        iterations_scale: passed to our ``register`` as the override ``iterations_scale``.
        datasets: restrict to these data sets (``brainweb``, ``stroke``, ``ixi002``, ``prostate``, ``aseg``,
            ``dlmuse``).
        downsample: integer factor for the 3D suites' grids (quick runs only).
        warp_rms_mm, warp_correlation_mm: the random smooth warps (RMS length over the mask, and
            correlation length); None: 3 mm and 30 mm (2D) / 40 mm (3D).
        qc: QC figures per case group (0: none).
    """

    data_dir: Path
    out_dir: Path
    cases: int | None = None
    methods: tuple[str, ...] | None = None
    seed: int = 0
    iterations_scale: float | None = None
    threads: int = 1
    datasets: tuple[str, ...] | None = None
    downsample: int = 1
    warp_rms_mm: float | None = None
    warp_correlation_mm: float | None = None
    qc: int = 1
    log: object = field(default=None, repr=False)

    def say(self, text: str) -> None:
        print(text, file=self.log or sys.stderr, flush=True)


def _methods(suite: str, opts: SuiteOptions, *, multimodal: bool | None = None) -> list[str]:
    allowed = RIGID_METHODS if suite == "rigid-levels" else DEFORMABLE_METHODS
    names = list(opts.methods) if opts.methods else list(DEFAULT_METHODS[suite])
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"bench {suite}: '--methods' {bad} not available for this suite; choose from {list(allowed)}")
    if multimodal and "ants-syncc" in names:  # CC is a single-modal metric
        names.remove("ants-syncc")
    if multimodal and "ours-affine" in names:
        raise ValueError(f"bench {suite}: '--methods' ours-affine runs the single-modal preset affine; this suite is multi-modal")
    return names


def _peer_notes(names) -> list[str]:
    """The settings of the peers (ConvexAdam, FireANTs) among ``names``, for a suite's notes."""
    return [f"{name}: {PEER_SETTINGS[name]}" for name in PEER_SETTINGS if name in names]


def _want(opts: SuiteOptions, dataset: str) -> bool:
    return opts.datasets is None or dataset in opts.datasets


def _mapped_points(out, grid: ImageGrid) -> torch.Tensor:
    points = grid.mm_points(dtype=torch.float64)
    if out.ddf_mm is not None:
        return points + out.ddf_mm.reshape(grid.ndim, -1).T.to(torch.float64)
    return apply_affine(out.matrix_mm, points)


def _warp(out, image: np.ndarray, image_grid: ImageGrid, fixed_grid: ImageGrid, *, mode: str = "bilinear") -> np.ndarray:
    """Moving image(s) ``(*S)`` or ``(C, *S)`` on ``image_grid`` resampled onto the fixed grid through ``out``."""
    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))
    batched = tensor.ndim == image_grid.ndim + 1
    tensor = tensor if batched else tensor[None]
    warped = warp_image_mm(tensor, image_grid, _mapped_points(out, fixed_grid), fixed_grid.shape, mode=mode).numpy()
    return warped if batched else warped[0]


def _ddf(out, grid: ImageGrid) -> torch.Tensor:
    return out.ddf_mm.to(torch.float64) if out.ddf_mm is not None else matrix_to_ddf_mm(out.matrix_mm, grid)


def _try(opts: SuiteOptions, name: str, fn):
    """Run ``fn()``; on an exception log it and return ``(None, message)``."""
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001 - a broken method must not stop the suite
        message = f"{type(err).__name__}: {err}"
        opts.say(f"  ! {name} failed: {message}")
        opts.say("".join(traceback.format_exception(err)[-3:]).rstrip())
        return None, message


def _skip_unavailable(names: list[str], opts: SuiteOptions, notes: list[str]) -> list[str]:
    keep = []
    for name in names:
        ok, why = method_available(name)
        if ok:
            keep.append(name)
        else:
            notes.append(f"{name} skipped: {why}")
            opts.say(f"  - {name} skipped: {why}")
    return keep


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else math.nan


# ----------------------------------------------------------------------------------------- rigid-levels

def _rigid_groups(opts: SuiteOptions):
    """(dataset, multimodal, loader) for every rigid / 2D group the options allow."""
    for dataset in ("brainweb", "stroke", "ixi002"):
        if not _want(opts, dataset):
            continue
        for multimodal in (True, False):
            if dataset == "brainweb":
                yield dataset, multimodal, (lambda mm=multimodal: [bdata.brainweb_pair(opts.data_dir, multimodal=mm)])
            else:
                yield dataset, multimodal, (lambda d=dataset, mm=multimodal:
                                            bdata.volume_slice_pairs(opts.data_dir, d, multimodal=mm))


def _group_name(pair: bdata.AlignedPair) -> str:
    kind = "multi-modal" if pair.multimodal else "single-modal"
    return f"{pair.name} {pair.contrasts[0]}<-{pair.contrasts[1]} ({kind})"


def run_rigid_levels(opts: SuiteOptions) -> dict:
    """Zurich-protocol rigid levels on 2D pairs; success = mean corner error / width < 0.02."""
    n = opts.cases or DEFAULT_CASES["rigid-levels"]
    records, notes, tables = [], [], []
    names = _skip_unavailable(_methods("rigid-levels", opts), opts, notes)
    for dataset, multimodal, load in _rigid_groups(opts):
        pairs = load()
        group = _group_name(pairs[0])
        opts.say(f"[rigid-levels] {group}: {len(pairs)} slice(s), {n} cases x 4 levels")
        cases = protocols.sample_rigid_cases(n, pairs[0].fixed.shape[1], seed=opts.seed * 100 + _DATASET_IDS[dataset])
        qc_done = 0
        for case in cases:
            pair = pairs[case.index % len(pairs)]
            true = protocols.rigid_matrix_mm(case, pair.grid)
            moving = protocols.move_rigid(pair.source, pair.grid, true)
            outputs = {}
            for name in names:
                out, error = _try(opts, name, lambda: run_method(
                    name, pair.fixed, pair.grid, moving, pair.grid, multimodal=multimodal,
                    seed=opts.seed, iterations_scale=opts.iterations_scale, threads=opts.threads))
                rec = {"suite": "rigid-levels", "group": group, "dataset": dataset, "multimodal": multimodal,
                       "level": case.level, "case": case.index, "slice": pair.meta.get("slice"),
                       "angle_deg": case.angle_deg, "translation_px": list(case.translation_px),
                       "true_matrix_mm": true, "method": name, "error": error}
                if out is not None:
                    outputs[name] = out
                    if out.matrix_mm is not None:
                        rec.update(bmetrics.corner_error(pair.grid, true, matrix_mm=out.matrix_mm))
                        rec["matrix_mm"] = out.matrix_mm
                    else:  # a field (near-rigid): read at the corners, and an affine fitted inside the mask
                        rec.update(bmetrics.corner_error(pair.grid, true, ddf_mm=out.ddf_mm))
                        fit = _fit_in_mask(out.ddf_mm, pair.grid, pair.mask)
                        rec["relative_error_fit"] = bmetrics.corner_error(pair.grid, true, matrix_mm=fit)["relative_error"]
                    rec.update(seconds=out.seconds, peak_mb=out.peak_mb, info=out.info)
                else:
                    rec.update(corner_error_mm=math.nan, relative_error=math.nan, success=False)
                records.append(rec)
                from_start = rec.get("info", {}).get("refined_from_start")
                opts.say(f"  L{case.level} #{case.index} {name}: rel {rec['relative_error']:.4f} "
                         f"{'ok' if rec['success'] else 'FAIL'} {rec.get('seconds', math.nan):.2f} s"
                         + (" (refined from the start)" if from_start else ""))
            if qc_done < opts.qc and case.level == max(c.level for c in cases) and outputs:
                qc_done += 1
                _qc(opts, f"rigid-levels_{dataset}_{'multi' if multimodal else 'single'}_L{case.level}_{case.index}",
                    pair.fixed, moving, pair.grid, outputs, multimodal, f"{group}, level {case.level} case {case.index}")
        tables.append(f"### {group}\n\n" + _rigid_table([r for r in records if r["group"] == group], names, multimodal))
    notes += [f"ANTs: {ANTS_SETTINGS['ants-rigid-ms']} (single-modal), {ANTS_SETTINGS['ants-rigid-mi']} (multi-modal)",
              f"elastix: {ELASTIX_SETTINGS}",
              "ours-rigid: preset multimodal-rigid / rigid; ours-near-rigid: same stages with the near_rigid hash motion "
              "(scored at the corner voxels of its field; 'fit' = affine least-squares fit inside the brain mask)",
              "corner error: mean distance of the 4 corner pixel centres under recovered vs true map, / width "
              "(PNG columns); success < 0.02",
              "from start: pairs where our refinement's first level ended better from the initial alignment "
              "than from the image-net stage, and continued from there (the refine stage's candidates: previous, start)"]
    return {"suite": "rigid-levels", "notes": notes, "cases": records, "tables": "\n\n".join(tables)}


def _fit_in_mask(ddf_mm: torch.Tensor, grid: ImageGrid, mask: np.ndarray) -> torch.Tensor:
    points = grid.mm_points(dtype=torch.float64)
    keep = torch.as_tensor(np.asarray(mask, dtype=bool).reshape(-1))
    mapped = points + ddf_mm.reshape(grid.ndim, -1).T.to(torch.float64)
    design = torch.cat([points[keep], torch.ones(int(keep.sum()), 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, mapped[keep]).solution
    out = torch.eye(grid.ndim + 1, dtype=torch.float64)
    out[: grid.ndim] = coef.T
    return out


def _rigid_table(records: list[dict], names: list[str], multimodal: bool) -> str:
    levels = sorted({r["level"] for r in records})
    headers = (["method"] + [f"L{lv} success" for lv in levels] + [f"L{lv} mean rel. err" for lv in levels]
               + ["s/pair", "from start"])
    rows = []
    for name in names:
        mine = [r for r in records if r["method"] == name]
        succ, err = [], []
        for lv in levels:
            at = [r for r in mine if r["level"] == lv]
            k = sum(bool(r["success"]) for r in at)
            succ.append(f"{k}/{len(at)} ({100.0 * k / max(len(at), 1):.0f} %)")
            err.append(_mean([r["relative_error"] for r in at]))
        # ours: pairs whose refine stage continued from the initial alignment (candidates: previous, start)
        kept = [bool(r["info"]["refined_from_start"]) for r in mine if "refined_from_start" in r.get("info", {})]
        rows.append([method_label(name, multimodal=multimodal)] + succ + err + [_mean([r.get("seconds") for r in mine])]
                    + [f"{sum(kept)}/{len(kept)}" if kept else "-"])
    return markdown_table(headers, rows)


def _qc(opts, stem, fixed, moving, grid, outputs, multimodal, title, moving_grid=None):
    if opts.qc <= 0:
        return
    # identity is the "before" panel; on different grids it is drawn as a method (moving resampled as is)
    warped = {method_label(k, multimodal=multimodal): _warp(o, moving, moving_grid or grid, grid)
              for k, o in outputs.items() if k != "identity" or moving_grid is not None}
    path = write_comparison_png(Path(opts.out_dir) / "qc" / f"{stem}.png", fixed, moving, warped, title=title)
    opts.say(f"  qc: {path}")


# ----------------------------------------------------------------------------------------- deformable2d

def _warp_params(opts: SuiteOptions, ndim: int) -> tuple[float, float]:
    rms = opts.warp_rms_mm if opts.warp_rms_mm is not None else 3.0
    corr = opts.warp_correlation_mm if opts.warp_correlation_mm is not None else (30.0 if ndim == 2 else 40.0)
    return rms, corr


def _score_field(out, true_ddf, grid, mask) -> dict:
    ddf = _ddf(out, grid)
    rec = bmetrics.endpoint_error(ddf, true_ddf, mask)
    rec["folding_percent"] = bmetrics.folding_percent_mm(ddf, grid)
    rec["folding_percent_mask"] = bmetrics.folding_percent_mm(ddf, grid, mask)
    rec["sdlogj"] = bmetrics.sdlogj_mm(ddf, grid, mask)
    return rec


def _warp_cases(opts: SuiteOptions, suite: str, group: str, pairs, names, n: int, records: list, *,
                dataset: str, multimodal: bool) -> None:
    """Known smooth warps on aligned pairs: end-point error inside the mask, folding, time."""
    qc_done = 0
    for index in range(n):
        pair = pairs[index % len(pairs)]
        rms, corr = _warp_params(opts, pair.grid.ndim)
        true = protocols.random_smooth_ddf_mm(pair.grid, rms_mm=rms, correlation_mm=corr,
                                              seed=opts.seed * 1000 + index, mask=pair.mask)
        moving, residual = protocols.move_deformable(pair.source, pair.grid, true)
        outputs = {}
        for name in names:
            out, error = _try(opts, name, lambda: run_method(
                name, pair.fixed, pair.grid, moving, pair.grid, multimodal=multimodal, seed=opts.seed,
                iterations_scale=opts.iterations_scale, threads=opts.threads))
            rec = {"suite": suite, "group": group, "dataset": dataset, "multimodal": multimodal, "case": index,
                   "slice": pair.meta.get("slice"), "warp_rms_mm": rms, "warp_correlation_mm": corr,
                   "inverse_residual_mm": residual, "method": name, "error": error}
            if out is not None:
                outputs[name] = out
                rec.update(_score_field(out, true, pair.grid, pair.mask))
                rec.update(seconds=out.seconds, peak_mb=out.peak_mb, info=out.info)
            records.append(rec)
            opts.say(f"  #{index} {name}: EPE median {rec.get('epe_median_mm', math.nan):.3f} mm, "
                     f"folding {rec.get('folding_percent', math.nan):.3f} %, {rec.get('seconds', math.nan):.2f} s")
        if qc_done < opts.qc and outputs:
            qc_done += 1
            _qc(opts, f"{suite}_{dataset}_{'multi' if multimodal else 'single'}_{index}", pair.fixed, moving,
                pair.grid, outputs, multimodal, f"{group}, case {index}")


def _field_table(records: list[dict], names: list[str], multimodal: bool, unit: str) -> str:
    headers = ["method", f"median EPE ({unit})", f"p90 EPE ({unit})", "folding %", "SDlogJ", "s/pair", "peak MiB"]
    rows = []
    for name in names:
        mine = [r for r in records if r["method"] == name]
        failed = sum(r["error"] is not None for r in mine)
        label = method_label(name, multimodal=multimodal) + (f" ({failed} failed)" if failed else "")
        rows.append([label, _mean([r.get("epe_median_mm") for r in mine]), _mean([r.get("epe_p90_mm") for r in mine]),
                     _mean([r.get("folding_percent") for r in mine]), _mean([r.get("sdlogj") for r in mine]),
                     _mean([r.get("seconds") for r in mine]), _mean([r.get("peak_mb") for r in mine])])
    return markdown_table(headers, rows)


def run_deformable2d(opts: SuiteOptions) -> dict:
    """Known random smooth warps on 2D pairs (BrainWeb, stroke and IXI002 slices), single- and multi-modal."""
    n = opts.cases or DEFAULT_CASES["deformable2d"]
    records, notes, tables = [], [], []
    for dataset, multimodal, load in _rigid_groups(opts):
        names = _skip_unavailable(_methods("deformable2d", opts, multimodal=multimodal), opts, notes)
        pairs = load()
        group = _group_name(pairs[0])
        opts.say(f"[deformable2d] {group}: {n} cases")
        _warp_cases(opts, "deformable2d", group, pairs, names, n, records, dataset=dataset, multimodal=multimodal)
        tables.append(f"### {group}\n\n" + _field_table([r for r in records if r["group"] == group], names,
                                                        multimodal, "px"))
    rms, corr = _warp_params(opts, 2)
    notes += [f"warps: random smooth fields, RMS {rms} mm over the brain mask, correlation length {corr} mm, "
              "min Jacobian determinant >= 0.2; moving = source warped through the numerically inverted field",
              "EPE inside the brain mask (1 px = 1 mm); folding % over the whole fixed grid",
              f"ANTs SyN (MI): {ANTS_SETTINGS['ants-syn']}", f"ANTs SyN (CC): {ANTS_SETTINGS['ants-syncc']} (single-modal only)",
              "ours: preset deformable / multimodal-deformable"]
    notes += _peer_notes(_methods("deformable2d", opts))
    return {"suite": "deformable2d", "notes": notes, "cases": records, "tables": "\n\n".join(tables)}


# ----------------------------------------------------------------------------------------- brain3d

def _label_case(opts, suite, group, pair: bdata.LabelledPair, names, records, *, qc_stem: str | None):
    spacing = pair.fixed_grid.spacing.tolist()
    outputs = {}
    for name in names:
        out, error = _try(opts, name, lambda: run_method(
            name, pair.fixed, pair.fixed_grid, pair.moving, pair.moving_grid, multimodal=pair.multimodal,
            seed=opts.seed, iterations_scale=opts.iterations_scale, threads=opts.threads))
        rec = {"suite": suite, "group": group, "case": pair.name, "method": name, "error": error}
        if out is not None:
            outputs[name] = out
            warped = _warp(out, pair.moving_labels, pair.moving_grid, pair.fixed_grid, mode="nearest")
            overlap = bmetrics.label_overlap(pair.fixed_labels, warped, spacing)
            rec.update(dice=overlap["dice"], hd95_mm=overlap["hd95_mm"], per_label=overlap["per_label"])
            if suite == "multimodal3d":
                rec["gland_dice"] = overlap["per_label"].get(1, {}).get("dice", math.nan)
                landmarks = bmetrics.centroid_error_mm(pair.fixed_labels, warped, pair.fixed_grid)
                rec["landmark_errors_mm"] = landmarks
                rec["landmark_error_mm"] = _mean(list(landmarks.values()))
            ddf = _ddf(out, pair.fixed_grid)
            rec["folding_percent"] = bmetrics.folding_percent_mm(ddf, pair.fixed_grid)
            rec["sdlogj"] = bmetrics.sdlogj_mm(ddf, pair.fixed_grid)
            rec.update(seconds=out.seconds, peak_mb=out.peak_mb, info=out.info)
        records.append(rec)
        opts.say(f"  {pair.name} {name}: Dice {rec.get('dice', math.nan):.3f}, HD95 {rec.get('hd95_mm', math.nan):.2f} mm, "
                 f"folding {rec.get('folding_percent', math.nan):.3f} %, {rec.get('seconds', math.nan):.1f} s")
    if qc_stem and outputs:
        _qc(opts, qc_stem, pair.fixed, pair.moving, pair.fixed_grid, outputs, pair.multimodal, f"{group}: {pair.name}",
            moving_grid=pair.moving_grid)


def _label_table(records, names, multimodal, *, prostate: bool = False) -> str:
    if prostate:
        headers = ["method", "gland Dice", "landmark error (mm)", "folding %", "SDlogJ", "s/pair", "peak MiB"]
    else:
        headers = ["method", "Dice", "HD95 (mm)", "folding %", "SDlogJ", "s/pair", "peak MiB"]
    rows = []
    for name in names:
        mine = [r for r in records if r["method"] == name]
        failed = sum(r["error"] is not None for r in mine)
        label = method_label(name, multimodal=multimodal) + (f" ({failed} failed)" if failed else "")
        first = [_mean([r.get("gland_dice") for r in mine]), _mean([r.get("landmark_error_mm") for r in mine])] \
            if prostate else [_mean([r.get("dice") for r in mine]), _mean([r.get("hd95_mm") for r in mine])]
        rows.append([label] + first + [_mean([r.get("folding_percent") for r in mine]), _mean([r.get("sdlogj") for r in mine]),
                                       _mean([r.get("seconds") for r in mine]), _mean([r.get("peak_mb") for r in mine])])
    return markdown_table(headers, rows)


def run_brain3d(opts: SuiteOptions) -> dict:
    """Inter-subject 3D brains: the aseg pair (1 mm, skull-stripped), both directions, Dice over 30 labels;
    IXI T1 heads (2 mm, with skull, native grids), consecutive subjects, Dice over about 148 DLMUSE
    labels. HD95, folding, time, memory."""
    records, notes, tables = [], [], []
    names = _skip_unavailable(_methods("brain3d", opts), opts, notes)
    groups = []
    if _want(opts, "aseg"):
        groups.append(("aseg T1 inter-subject", bdata.aseg_pairs(opts.data_dir, downsample=opts.downsample)[
            :min(opts.cases or DEFAULT_CASES["brain3d"], 2)]))
    if _want(opts, "dlmuse"):
        groups.append(("IXI T1 heads inter-subject (DLMUSE)",
                       bdata.dlmuse_pairs(opts.data_dir, cases=opts.cases or _DLMUSE_CASES, downsample=opts.downsample)))
    for group, pairs in groups:
        opts.say(f"[brain3d] {group}: {len(pairs)} pair(s), grid {pairs[0].fixed_grid.shape}")
        for i, pair in enumerate(pairs):
            _label_case(opts, "brain3d", group, pair, names, records, qc_stem=f"brain3d_{pair.name}" if i < opts.qc else None)
        tables.append(f"### {group}\n\n" + _label_table([r for r in records if r["group"] == group], names, False))
    notes += ["aseg: Dice the mean over the 30 evaluation labels; DLMUSE: over every label of the parcellation "
              "(about 148; subject k + 1 -> subject k, each on its native 2 mm grid); HD95: mean over labels present "
              "in both (mm); folding % over the whole fixed grid; peak MiB = resident memory increase during the call",
              f"ANTs SyN (MI): {ANTS_SETTINGS['ants-syn']}", f"ANTs SyN (CC): {ANTS_SETTINGS['ants-syncc']}",
              "ours: preset deformable"]
    if "ours-affine" in names or "ants-affine" in names:
        notes += [f"ANTs affine: {ANTS_SETTINGS['ants-affine']}", "ours-affine: preset affine"]
    notes += _peer_notes(names)
    if opts.downsample > 1:
        notes.append(f"grids downsampled by {opts.downsample} (quick run, not comparable to full-resolution numbers)")
    return {"suite": "brain3d", "notes": notes, "cases": records, "tables": "\n\n".join(tables)}


# ----------------------------------------------------------------------------------------- multimodal3d

def _downsampled_pair(pair: bdata.AlignedPair, factor: int) -> bdata.AlignedPair:
    if factor <= 1:
        return pair
    small = pair.grid.downsampled(factor)
    return bdata.AlignedPair(pair.name, bdata.resample(pair.fixed, pair.grid, small),
                             bdata.resample(pair.source, pair.grid, small),
                             bdata.resample(pair.mask.astype(np.float32), pair.grid, small) > 0.5,
                             small, pair.multimodal, pair.contrasts, pair.meta)


def run_multimodal3d(opts: SuiteOptions) -> dict:
    """3D multi-modal: stroke T1c -> T2 and IXI002 T1 -> T2 with known warps; prostate MR -> TRUS labels."""
    n = opts.cases or DEFAULT_CASES["multimodal3d"]
    records, notes, tables = [], [], []
    names = _skip_unavailable(_methods("multimodal3d", opts, multimodal=True), opts, notes)
    loaders = (("stroke", lambda: bdata.stroke_volume_pair(opts.data_dir)),
               ("ixi002", lambda: bdata.ixi_volume_pair(opts.data_dir, spacing_mm=2.0)))
    for dataset, load in loaders:
        if not _want(opts, dataset):
            continue
        pair = _downsampled_pair(load(), opts.downsample)
        group = _group_name(pair)
        opts.say(f"[multimodal3d] {group}: {n} warps, grid {pair.grid.shape}")
        _warp_cases(opts, "multimodal3d", group, [pair], names, n, records, dataset=dataset, multimodal=True)
        tables.append(f"### {group}\n\n" + _field_table([r for r in records if r["group"] == group], names, True, "mm"))
    if _want(opts, "prostate"):
        group = "prostate MR->TRUS"
        pairs = bdata.prostate_pairs(opts.data_dir, cases=n)
        opts.say(f"[multimodal3d] {group}: {len(pairs)} cases")
        for i, pair in enumerate(pairs):
            _label_case(opts, "multimodal3d", group, pair, names, records,
                        qc_stem=f"multimodal3d_prostate_{pair.name}" if i < opts.qc else None)
        tables.append(f"### {group}\n\n" + _label_table([r for r in records if r["group"] == group], names, True,
                                                        prostate=True))
    rms, corr = _warp_params(opts, 3)
    notes += ["stroke: native 2 mm grid (fixed T2, moving T1c); IXI002: common 2 mm RAS grid over the T2 brain mask "
              "(fixed T2, moving T1 resampled through the affines)",
              f"warps: RMS {rms} mm over the brain mask, correlation length {corr} mm; EPE in mm inside the brain mask",
              "prostate: both images fill the fixed (TRUS) extent (headers carry no relation); gland Dice = label "
              "channel 0; landmark error = centroid distance of channels 1-2 where present (mm)",
              f"ANTs SyN (MI): {ANTS_SETTINGS['ants-syn']} (includes its affine stage)", "ours: preset multimodal-deformable"]
    notes += _peer_notes(names)
    if opts.downsample > 1:
        notes.append(f"stroke/IXI grids downsampled by {opts.downsample} (quick run)")
    return {"suite": "multimodal3d", "notes": notes, "cases": records, "tables": "\n\n".join(tables)}


SUITES = {"rigid-levels": run_rigid_levels, "deformable2d": run_deformable2d, "brain3d": run_brain3d,
          "multimodal3d": run_multimodal3d}


def run_suite(name: str, opts: SuiteOptions) -> dict:
    """Run the suite ``name`` (one of :data:`SUITES`)."""
    if name not in SUITES:
        raise ValueError(f"bench: unknown suite {name!r}; choose from {list(SUITES)}")
    return SUITES[name](opts)
