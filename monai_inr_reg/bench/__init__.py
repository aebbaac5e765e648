"""Benchmarks against ANTs and elastix on the real images of ``../shared/data``.

Command line (also ``monai-inr-reg bench ...`` and ``python -m monai_inr_reg.bench ...``)::

    python -m monai_inr_reg.bench SUITE [--data-dir DIR] [--out DIR] [--cases N] [--methods a,b]
                                        [--iterations-scale S] [--seed S] [--threads T] ...
    python -m monai_inr_reg.bench SUITE --check-recorded docs/results/SUITE.json [--cases N]

Suites: ``rigid-levels`` (Zurich protocol rigid levels, 2D), ``deformable2d`` (known smooth warps,
2D), ``brain3d`` (aseg inter-subject, Dice / HD95), ``multimodal3d`` (known warps on stroke and
IXI002 volumes, prostate MR -> TRUS). Each prints a markdown table of ours vs the baselines per
case group, and writes ``SUITE.json`` (every case), ``SUITE.md`` (the tables) and ``qc/*.png``.
Needs the ``bench`` extra (antspyx, itk-elastix, matplotlib, pillow); a missing baseline is
skipped with a note. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .suites import DEFAULT_CASES, DEFAULT_METHODS, SUITES

    parser = argparse.ArgumentParser(
        prog="monai-inr-reg bench",
        description="Benchmark monai_inr_reg against ANTs and elastix on ../shared/data (see docs/benchmarks.md).")
    parser.add_argument("suite", choices=list(SUITES), help="which benchmark to run")
    parser.add_argument("--data-dir", default=None, help="data folder (default: ../shared/data when present)")
    parser.add_argument("--out", default=None, help="output folder (default: bench-results/SUITE)")
    parser.add_argument("--cases", type=int, default=None,
                        help="cases per level (rigid-levels) or per group; defaults: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_CASES.items())
                             + " (brain3d: the aseg directions, at most 2; its DLMUSE pairs 5, at most 9)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset; defaults: "
                             + "; ".join(f"{k}: {','.join(v)}" for k, v in DEFAULT_METHODS.items()))
    parser.add_argument("--iterations-scale", type=float, default=None,
                        help="passed to our register() as the override iterations_scale")
    parser.add_argument("--seed", type=int, default=0, help="seed of the protocols and of every method")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch, ANTs and elastix (default 1)")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of brainweb, stroke, ixi002, prostate, aseg, dlmuse")
    parser.add_argument("--downsample", type=int, default=1, help="3D suites: integer grid downsampling (quick runs)")
    parser.add_argument("--warp-rms", type=float, default=None, help="known warps: RMS length in mm (default 3)")
    parser.add_argument("--warp-corr", type=float, default=None,
                        help="known warps: correlation length in mm (default 30 in 2D, 40 in 3D)")
    parser.add_argument("--qc", type=int, default=1, help="QC figures per case group (0: none)")
    parser.add_argument("--check-recorded", default=None, metavar="RECORD.json",
                        help="rerun our methods on the first --cases (default 1) cases per group of a recorded "
                             "SUITE.json with its options; exit 1 when a figure moved beyond noise")
    return parser


def _split(value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _check_recorded(args, data_dir, out_dir) -> int:
    """Rerun a slice of a recorded suite (see :mod:`monai_inr_reg.bench.check`); 0: unchanged, 1: moved."""
    from .check import compare, load_record, our_methods
    from .report import markdown_table
    from .suites import SuiteOptions, run_suite

    try:
        record = load_record(args.check_recorded, args.suite)
    except (FileNotFoundError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    recorded = record["options"]
    opts = SuiteOptions(data_dir=data_dir, out_dir=out_dir, cases=args.cases or 1, methods=our_methods(record["cases"]),
                        seed=recorded.get("seed", 0), iterations_scale=recorded.get("iterations_scale"),
                        threads=args.threads, datasets=_split(recorded.get("datasets")),
                        downsample=recorded.get("downsample", 1), warp_rms_mm=recorded.get("warp_rms"),
                        warp_correlation_mm=recorded.get("warp_corr"), qc=0)
    fresh = run_suite(args.suite, opts)
    rows, ok = compare(args.suite, record["cases"], fresh["cases"])
    print(f"## {args.suite}: fresh run against {args.check_recorded}\n")
    print(markdown_table(["group", "case", "method", "figure", "recorded", "fresh", ""], rows))
    print("\nunchanged within noise" if ok else "\nMOVED: the recorded figures are stale (or something broke)")
    return 0 if ok else 1


def main(argv=None) -> int:
    """Run one benchmark suite from command-line arguments; returns the exit code."""
    args = build_parser().parse_args(argv)
    # thread counts before ANTs / ITK / torch start their pools (fair, reproducible timings on a shared CPU)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)

    from .data import resolve_data_dir
    from .report import machine_info, write_json, write_text
    from .suites import SuiteOptions, run_suite

    try:
        data_dir = resolve_data_dir(args.data_dir)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else Path("bench-results") / args.suite
    if args.check_recorded:
        return _check_recorded(args, data_dir, out_dir)
    opts = SuiteOptions(data_dir=data_dir, out_dir=out_dir, cases=args.cases, methods=_split(args.methods),
                        seed=args.seed, iterations_scale=args.iterations_scale, threads=args.threads,
                        datasets=_split(args.datasets), downsample=args.downsample, warp_rms_mm=args.warp_rms,
                        warp_correlation_mm=args.warp_corr, qc=args.qc)
    start = time.perf_counter()
    try:
        payload = run_suite(args.suite, opts)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"bench {args.suite}: {err}", file=sys.stderr)
        return 2
    command = "monai-inr-reg bench " + " ".join(sys.argv[1:] if argv is None else list(argv))
    payload.update(machine=machine_info(), command=command, wall_seconds=time.perf_counter() - start,
                   options={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    notes = "\n".join(f"- {n}" for n in payload["notes"])
    machine = payload["machine"]
    text = (f"## {args.suite}\n\n`{command}`\n\n{machine['date_utc']}, {machine['cpu']} "
            f"({machine['cpu_count']} CPUs, {args.threads} thread(s) used), torch {machine['torch']}, "
            f"antspyx {machine['antspyx']}, itk-elastix {machine['itk-elastix']}\n\n{payload['tables']}\n\n{notes}\n")
    print(text)
    write_json(out_dir / f"{args.suite}.json", payload)
    write_text(out_dir / f"{args.suite}.md", text)
    print(f"wrote {out_dir / (args.suite + '.json')} and {out_dir / (args.suite + '.md')}", file=sys.stderr)
    return 0
