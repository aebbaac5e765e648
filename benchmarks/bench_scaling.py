"""Cost against image size: seconds of our rigid and deformable presets and of ANTs on synthetic
pairs of growing size, same run, same thread count (issue 12: cost that grows with the work).

Each pair is a smooth phantom and the same phantom under a known smooth warp (2.5 voxels) and a
small shift, in 2D (128^2, 256^2, 512^2) and 3D (64^3, 128^3, 160x192x224). Prints a markdown table
(seconds and ours / ANTs); run by hand and record it in docs/benchmarks.md.

    python benchmarks/bench_scaling.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {"2d": [(128, 128), (256, 256), (512, 512)], "3d": [(64, 64, 64), (128, 128, 128), (160, 192, 224)]}


def synthetic_pair(shape, *, with_field: bool = False):
    """``(fixed, moving)`` ``(1, *shape)`` float32: a blob phantom and the phantom under a known smooth
    warp, ``moving(p) = fixed(p + field(p))``; with ``with_field`` also ``field`` ``(D, *shape)`` (voxels)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic_images import phantom, smooth_field

    from monai_inr_reg.core.sample import warp_image

    fixed = phantom(shape, seed=1)
    field = smooth_field(shape, 2.5, seed=2) + 1.5
    return (fixed, warp_image(fixed, field), field) if with_field else (fixed, warp_image(fixed, field))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dims", default="2d,3d")
    parser.add_argument("--presets", default="rigid,deformable")
    parser.add_argument("--no-ants", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from monai_inr_reg import register
    from monai_inr_reg._ext import kernel_available
    from monai_inr_reg.bench import baselines
    from monai_inr_reg.core.grid import ImageGrid

    kernel_available()
    with_ants = not args.no_ants and baselines.ants_available()
    ants_name = {"rigid": "ANTs Rigid (MeanSquares)", "deformable": "ANTs SyN (Mattes MI)"}
    print(f"threads {args.threads}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print("| size | voxels | preset | ours s | by stage (s) | ANTs s | ours / ANTs |")
    print("|---|---|---|---|---|---|---|")
    for dims in args.dims.split(","):
        for shape in SIZES[dims]:
            fixed, moving = synthetic_pair(shape)
            grid = ImageGrid.from_ras_affine(shape, None)
            for preset in args.presets.split(","):
                start = time.perf_counter()
                result = register(fixed, moving, preset, progress=False)
                ours = time.perf_counter() - start
                stages = ", ".join(f"{s['name']} {s['seconds']:.1f}" for s in result.stages)
                stages += f", field {result.stage_seconds['field']:.1f}"
                ants = float("nan")
                if with_ants:
                    f, m = fixed[0].numpy().astype(np.float64), moving[0].numpy().astype(np.float64)
                    start = time.perf_counter()
                    if preset == "rigid":
                        baselines.ants_rigid(f, grid, m, grid, metric="meansquares")
                    else:
                        baselines.ants_syn(f, grid, m, grid, metric="MI")
                    ants = time.perf_counter() - start
                name = "x".join(map(str, shape))
                print(f"| {name} | {int(np.prod(shape)):,} | {preset} | {ours:.1f} | {stages} | {ants:.1f} "
                      f"({ants_name[preset]}) | {ours / ants:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
