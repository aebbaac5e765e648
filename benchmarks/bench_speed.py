"""Speed of monai_inr_reg on this CPU: encoding throughput, seconds per iteration and per registration.

Prints a markdown table for a 2D pair (BrainWeb T1 vs PD, 221x257, or a synthetic 256x256 phantom
without the data) and a 3D pair (the two 160x192x224 brains of 3d-brain-aseg, or a synthetic volume
of that size), with ANTs on the same pair in the same run when ``--with-ants`` (ratios, not absolute
times, are what compare across noisy machines). Run by hand; record results in docs/benchmarks.md.

    python benchmarks/bench_speed.py --threads 2 --with-ants --ants-3d SyN,SyNCC --profile
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _default_data_dir() -> Path | None:
    candidate = Path(__file__).resolve().parents[2] / "shared" / "data"
    return candidate if candidate.is_dir() else None


def encoding_throughput(ndim: int, config: dict, points: int = 65536, repeats: int = 5) -> float:
    """Forward + backward (tables and points) of one encoding, million points per second (best of N)."""
    from monai_inr_reg.nn import HashGridEncoding

    enc = HashGridEncoding(ndim, config)
    x = torch.rand(points, ndim, requires_grad=True)
    grad = torch.ones(points, enc.n_output_dims)  # made outside the timing, as an MLP hands it over
    best = float("inf")
    for _ in range(repeats + 1):
        x.grad = None
        start = time.perf_counter()
        enc(x).backward(grad)
        best = min(best, time.perf_counter() - start)
    return points / best / 1e6


def import_seconds() -> float:
    code = "import time, torch, monai; t = time.perf_counter(); import monai_inr_reg; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def pair_2d(data_dir: Path | None):
    if data_dir is not None and (data_dir / "2d-brainweb-t1-pd").is_dir():
        from PIL import Image

        folder = data_dir / "2d-brainweb-t1-pd"
        load = lambda name: torch.tensor(np.asarray(Image.open(folder / name), np.float32).T[None].copy())  # noqa: E731
        return "BrainWeb T1 <- PD shifted (221x257)", load("BrainT1SliceBorder20.png"), load("BrainProtonDensitySliceShifted13x17y.png")
    from monai_inr_reg.demo import make_demo_pair

    fixed, moving, _ = make_demo_pair(size=256)
    return "Shepp-Logan two contrasts (256x256)", fixed, moving


def pair_3d(data_dir: Path | None):
    if data_dir is not None and (data_dir / "3d-brain-aseg").is_dir():
        folder = data_dir / "3d-brain-aseg"
        fixed = torch.tensor(np.load(folder / "test_scan.npz")["vol"], dtype=torch.float32)[None]
        moving = torch.tensor(np.load(folder / "subject_1_vol.npz")["vol_data"], dtype=torch.float32)[None]
        return "3d-brain-aseg subject_1 -> test_scan (160x192x224)", fixed, moving
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic_images import phantom, smooth_field

    from monai_inr_reg.core.sample import warp_image

    fixed = phantom((160, 192, 224), seed=0)
    return "synthetic phantom (160x192x224)", fixed, warp_image(fixed, smooth_field(fixed.shape[1:], 3.0, seed=1))


def ants_seconds(fixed: torch.Tensor, moving: torch.Tensor, transform: str, repeats: int = 1, **kwargs) -> float | None:
    """Wall time of ``ants.registration``: the first call when ``repeats == 1``, else the best of
    ``repeats`` calls after an untimed first one (both sides of a ratio measured warm)."""
    try:
        import ants
    except ImportError:
        return None
    f, m = ants.from_numpy(fixed[0].numpy().astype(np.float32)), ants.from_numpy(moving[0].numpy().astype(np.float32))
    if repeats > 1:
        ants.registration(f, m, type_of_transform=transform, **kwargs)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ants.registration(f, m, type_of_transform=transform, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


def profile_table(fixed, moving, preset: str, rows: int = 12) -> str:
    """Where the time of one registration goes: the ``rows`` costliest operators (torch profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    from monai_inr_reg import register

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        register(fixed, moving, preset, seed=0, progress=False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run_case(label: str, fixed, moving, preset: str, overrides: dict) -> dict:
    from monai_inr_reg import register

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = register(fixed, moving, preset, seed=0, progress=False, **overrides)
    peak_mib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, before) / 1024
    ends = dict(result.stage_ends)
    previous, per_iteration = 0, {}
    for name, end in result.stage_ends:
        if end > previous:
            per_iteration[name] = result.stage_seconds[name] / (end - previous)
        previous = end
    return {"case": label, "preset": preset, "seconds": result.seconds, "iterations": len(result.loss_history),
            "per_iteration_ms": {k: 1e3 * v for k, v in per_iteration.items()},
            "field_seconds": result.stage_seconds.get("field", 0.0), "peak_mib": peak_mib, "ends": ends}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=_default_data_dir())
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--with-ants", action="store_true", help="time ANTs on the same pairs (3D SyN takes minutes)")
    parser.add_argument("--dims", default="2,3")
    parser.add_argument("--iterations-scale-3d", type=float, default=1.0)
    parser.add_argument("--ants-3d", default="SyN",
                        help="comma-separated 3D ANTs baselines: SyN (default, Mattes MI) and/or SyNCC "
                             "(syn_metric='CC', syn_sampling=2: minutes per pair)")
    parser.add_argument("--profile", action="store_true", help="print the costliest operators of the 2D registration")
    parser.add_argument("--repeats", type=int, default=3,
                        help="2D: best of N warm runs for ours and ANTs after one untimed run (ours' first call, "
                             "which pays one-off set-up, is printed too)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))

    from monai_inr_reg.config import load_preset

    image = load_preset("deformable")["image"]["encoding"]
    print(f"threads {args.threads}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print("| measure | value |\n|---|---|")
    print(f"| import monai_inr_reg beyond torch + monai | {import_seconds():.2f} s |")
    print(f"| encoding fwd+bwd 2D (image net preset) | {encoding_throughput(2, image):.2f} M points/s |")
    print(f"| encoding fwd+bwd 3D (image net preset) | {encoding_throughput(3, image):.2f} M points/s |")

    rows = []
    dims = {int(d) for d in args.dims.split(",")}
    if 2 in dims:
        label, fixed, moving = pair_2d(args.data_dir)
        first = run_case(label, fixed, moving, "multimodal-rigid", {})
        row = min((run_case(label, fixed, moving, "multimodal-rigid", {}) for _ in range(args.repeats)),
                  key=lambda r: r["seconds"], default=first)
        row["first_seconds"] = first["seconds"]
        row["ants"] = (ants_seconds(fixed, moving, "Rigid", repeats=max(args.repeats, 1), aff_metric="mattes")
                       if args.with_ants else None)
        row["ants_name"] = "ANTs Rigid (Mattes MI)"
        rows.append(row)
        if args.profile:
            print(f"\nprofile of {label}, multimodal-rigid:\n\n```\n{profile_table(fixed, moving, 'multimodal-rigid')}```")
    if 3 in dims:
        label, fixed, moving = pair_3d(args.data_dir)
        row = run_case(label, fixed, moving, "deformable", {"iterations_scale": args.iterations_scale_3d})
        baselines = {"SyN": ("ANTs SyN (default, MI)", {}),
                     "SyNCC": ("ANTs SyN (CC, syn_sampling=2)", {"syn_metric": "CC", "syn_sampling": 2})}
        for name in args.ants_3d.split(","):
            if name not in baselines:
                parser.error(f"--ants-3d: unknown baseline {name!r}; choose from {list(baselines)}")
            title, kwargs = baselines[name]
            rows.append({**row, "ants": ants_seconds(fixed, moving, "SyN", **kwargs) if args.with_ants else None,
                         "ants_name": title})

    print("\n| case | preset | iterations | ms / iteration by stage | field s | total s | first call s | peak MiB "
          "| ANTs s | ours / ANTs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{k} {v:.1f}" for k, v in r["per_iteration_ms"].items())
        ants_s = "" if r["ants"] is None else f"{r['ants']:.2f} ({r['ants_name']})"
        ratio = "" if r["ants"] is None else f"{r['seconds'] / r['ants']:.1f}x"
        first = f"{r['first_seconds']:.2f}" if "first_seconds" in r else "= total"
        print(f"| {r['case']} | {r['preset']} | {r['iterations']} | {per} | {r['field_seconds']:.1f} | "
              f"{r['seconds']:.2f} | {first} | {r['peak_mib']:.0f} | {ants_s} | {ratio} |")


if __name__ == "__main__":
    main()
