"""Seconds and peak GPU memory of our deformable presets on one CUDA device (issue 16), with the
end-point error against the known warp, on synthetic pairs of the sizes that issue names: brain3d
(160 x 192 x 224, both directions: each image of a pair fixed once) and a 2D slice (200 x 220).

Each pair is a smooth phantom and the same phantom under a known smooth warp (2.5 voxels) and a
shift (:func:`bench_scaling.synthetic_pair`). The first registration in the process is a warm-up
(CUDA context, kernels) and is not timed. Prints a markdown table; run by ``benchmarks/gpu_check.sh``
and record it in docs/benchmarks.md with the card's name.

    python benchmarks/bench_gpu.py [--device cuda] [--presets deformable,multimodal-deformable] [--shapes 160x192x224,200x220]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scaling import synthetic_pair  # noqa: E402

SHAPES = "200x220,160x192x224"  # a 2D slice; brain3d's size (both directions)


def known_ddf(field: torch.Tensor) -> torch.Tensor:
    """The fixed -> moving voxel displacement ``u`` ``(D, *S)`` of a pair with
    ``moving(q) = fixed(q + field(q))``: ``u(p) = -field(p + u(p))``, the inverse of ``field``
    (:func:`monai_inr_reg.bench.protocols.invert_ddf_mm` on the pair's identity grid: mm = voxels)."""
    from monai_inr_reg.bench.protocols import invert_ddf_mm
    from monai_inr_reg.core.grid import ImageGrid

    ndim = field.shape[0]
    grid = ImageGrid(tuple(field.shape[1:]), torch.eye(ndim + 1, dtype=torch.float64))
    return invert_ddf_mm(field, grid)[0].to(torch.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--presets", default="deformable,multimodal-deformable")
    parser.add_argument("--shapes", default=SHAPES, help="comma-separated sizes, e.g. 160x192x224,200x220")
    args = parser.parse_args(argv)
    from monai_inr_reg import register

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}\n")
    print("| pair | preset | direction | seconds | field stage s | peak GPU MiB | median EPE (voxels) |")
    print("|---|---|---|---|---|---|---|")
    warm = False
    for shape in (tuple(int(n) for n in item.split("x")) for item in args.shapes.split(",")):
        fixed, moving, field = synthetic_pair(shape, with_field=True)
        truth = known_ddf(field)
        for preset in args.presets.split(","):
            directions = [("a <- b", fixed, moving, truth)]
            if len(shape) == 3:
                directions.append(("b <- a", moving, fixed, None))
            for direction, f, m, known in directions:
                if not warm:
                    register(f.to(device), m.to(device), preset, iterations_scale=0.05, progress=False, device=device)
                    warm = True
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                result = register(f.to(device), m.to(device), preset, progress=False, device=device)
                seconds = time.perf_counter() - start
                peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
                epe = float("nan")
                if known is not None:
                    inner = tuple(slice(s // 10, s - s // 10) for s in shape)
                    error = (result.ddf - known)[(slice(None),) + inner]
                    epe = float(error.pow(2).sum(0).sqrt().median())
                field = result.stage_seconds.get("deformable", float("nan"))
                print(f"| {'x'.join(map(str, shape))} | {preset} | {direction} | {seconds:.2f} | {field:.2f} | "
                      f"{peak:.0f} | {epe:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
