"""Hash-grid encoding throughput: forward + backward (grads to tables and points), points per second.

Prints a markdown table for the pure-PyTorch path and, when it builds, the compiled CPU kernel.
Each figure is the best of ``--repeats`` timed runs (after one warm-up), so a machine shared
with other jobs gives a figure close to what an idle one gives.

    OMP_NUM_THREADS=2 python benchmarks/bench_encoding.py [--threads 2] [--points 65536] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from monai_inr_reg import _ext
from monai_inr_reg.core.encoding import hash_grid_encode, hash_grid_spec, level_weights

CONFIGS = [
    # (label, D, config)
    ("2D T=2^14, 4->256", 2, dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=14, base_resolution=4, finest_resolution=256)),
    ("3D T=2^19, 4->128", 3, dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=4, finest_resolution=128)),
    ("3D T=2^15, 4->128", 3, dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=15, base_resolution=4, finest_resolution=128)),
    ("3D T=2^19, 4->256", 3, dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=4, finest_resolution=256)),
    ("3D near-rigid 16x4", 3, dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=15, base_resolution=4, finest_resolution=4)),
]


def _time(fn, points, params, spec, weights, repeats: int) -> float:
    """Best wall time (s) of one forward + backward (the incoming gradient is made outside the timing,
    as an MLP hands it over)."""
    best = float("inf")
    grad = torch.ones(points.shape[0], spec.n_levels * spec.n_features, dtype=params.dtype)
    for i in range(repeats + 1):
        x = points.clone().requires_grad_()
        params.grad = None
        start = time.perf_counter()
        out = fn(x, params, spec, weights)
        out.backward(grad)
        elapsed = time.perf_counter() - start
        if i > 0:  # first run is a warm-up
            best = min(best, elapsed)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=None, help="coarse-to-fine alpha (default: all levels on)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    backends = [("pure PyTorch", hash_grid_encode)]
    start = time.perf_counter()
    if _ext.kernel_available():
        backends.append(("C++ kernel", _ext.hash_grid_encode_kernel))
        note = f"kernel build/load {time.perf_counter() - start:.1f} s"
    else:
        note = f"kernel unavailable: {_ext.build_info()['error'] or _ext.ENV_SWITCH + ' set'}"
    gen = torch.Generator().manual_seed(0)
    header = "| config | dense/hashed levels | " + " | ".join(f"{b} (M pts/s)" for b, _ in backends)
    if len(backends) == 2:
        header += " | kernel / pure"
    print(f"threads={args.threads}, P={args.points}, forward+backward, best of {args.repeats}; {note}\n")
    print(header + " |")
    print("|" + "---|" * (header.count("|")))
    for label, d, config in CONFIGS:
        spec = hash_grid_spec(d, config)
        params = torch.empty(spec.n_params).uniform_(-1, 1, generator=gen).requires_grad_()
        points = torch.rand(args.points, d, generator=gen)
        weights = None if args.alpha is None else level_weights(args.alpha, spec.n_levels)
        rates = [args.points / _time(fn, points, params, spec, weights, args.repeats) / 1e6 for _, fn in backends]
        row = f"| {label} | {spec.n_dense}/{spec.n_levels - spec.n_dense} | " + " | ".join(f"{r:.2f}" for r in rates)
        if len(rates) == 2:
            row += f" | {rates[1] / rates[0]:.1f}x"
        print(row + " |", flush=True)


if __name__ == "__main__":
    main()
