"""Does a similarity rank alignments like the anatomy's overlap? The prostate MR -> TRUS pairs
(issue 15): for each pair, the identity and random affine maps about it, each scored by the gland
Dice and by several similarities of the warped MR with the TRUS over their overlap.

LC2 (the ultrasound as a local linear combination of the MR and its gradient magnitude) is the
metric built for ultrasound to MR.

Prints per pair and per similarity the Spearman correlation with the gland Dice and the Dice of the
map the similarity ranks best, minus the identity's; run by hand and record it in docs/benchmarks.md.

    python benchmarks/similarity_vs_overlap.py [--maps 25] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def random_affine(center_mm: np.ndarray, rng: np.random.Generator, spread: float) -> torch.Tensor:
    """A ``4 x 4`` fixed mm -> moving mm map about ``center_mm``: rotations of 0.15 rad, log-scalings of
    0.12 and shifts of 2.5 mm (standard deviations, each times ``spread``)."""
    from scipy.spatial.transform import Rotation

    linear = Rotation.from_rotvec(rng.normal(0, 0.15 * spread, 3)).as_matrix() @ np.diag(np.exp(rng.normal(0, 0.12 * spread, 3)))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = center_mm - linear @ center_mm + rng.normal(0, 2.5 * spread, 3)
    return torch.as_tensor(matrix)


def similarities(fixed: torch.Tensor, warped: torch.Tensor, inside: torch.Tensor) -> dict[str, float]:
    """Higher is more similar; ``fixed``, ``warped`` ``(1, *S)`` in [0, 1], ``inside`` ``(*S)`` bool."""
    from monai_inr_reg.core.losses import gaussian_smooth, mind_ssc, mutual_information, normalised_patches

    flat = inside.reshape(-1)
    out = {}
    for sigma in (0.0, 1.0):
        a, b = gaussian_smooth(fixed, sigma).reshape(-1)[flat], gaussian_smooth(warped, sigma).reshape(-1)[flat]
        out[f"mutual information, 16 bins, smoothing {sigma:g}"] = float(mutual_information(a, b, 16))
    out["MIND-SSC (negative L2)"] = -float((mind_ssc(fixed) - mind_ssc(warped)).pow(2).mean(0)[inside].mean())
    local = (normalised_patches(gaussian_smooth(fixed, 1.0), 2) * normalised_patches(gaussian_smooth(warped, 1.0), 2)).sum(1)
    out["local correlation squared, 5-voxel windows"] = float(local.reshape(inside.shape)[inside].pow(2).mean())

    def unit_gradient(image):
        gradient = torch.stack(torch.gradient(gaussian_smooth(image, 1.0)[0]))
        return gradient / (gradient.norm(dim=0, keepdim=True) + 0.05 * gradient.norm(dim=0).mean())

    out["normalised gradient fields"] = float((unit_gradient(fixed) * unit_gradient(warped)).sum(0).pow(2)[inside].mean())
    out["LC2, 5-voxel windows"] = linear_combination_of_linear_correlations(fixed, warped, inside, 2)
    return out


def linear_combination_of_linear_correlations(ultrasound: torch.Tensor, other: torch.Tensor, inside: torch.Tensor,
                                              radius: int) -> float:
    """LC2 (Wein et al., "Global registration of ultrasound to MRI using the LC2 metric", 2013): in each
    window of ``2 radius + 1`` voxels, the share of the ultrasound's variance explained by a linear
    combination of the other image and its gradient magnitude (least squares), weighted by the
    ultrasound's variance there: ``sum explained / sum variance`` over the windows centred ``inside``.
    ``ultrasound``, ``other`` ``(1, *S)`` on one grid (3D), ``inside`` ``(*S)`` bool; in [0, 1]."""
    import torch.nn.functional as F

    def window_mean(image):  # (C, *S) -> (C, *S), the window's mean, edges repeated
        padded = F.pad(image[None].double(), [radius] * 6, mode="replicate")
        return F.avg_pool3d(padded, 2 * radius + 1, stride=1)[0]

    u, m = ultrasound.double(), other.double()
    g = torch.stack(torch.gradient(m[0])).norm(dim=0, keepdim=True)
    mean_u, mean_m, mean_g = window_mean(u)[0], window_mean(m)[0], window_mean(g)[0]
    var_u = (window_mean(u * u)[0] - mean_u ** 2).clamp_min(0)
    mm = window_mean(m * m)[0] - mean_m ** 2 + 1e-6
    gg = window_mean(g * g)[0] - mean_g ** 2 + 1e-6
    mg = window_mean(m * g)[0] - mean_m * mean_g
    mu = window_mean(m * u)[0] - mean_m * mean_u
    gu = window_mean(g * u)[0] - mean_g * mean_u
    # the 2 x 2 normal equations solved in closed form: explained = c^T C^-1 c
    explained = (gg * mu * mu - 2 * mg * mu * gu + mm * gu * gu) / (mm * gg - mg * mg).clamp_min(1e-12)
    explained = torch.minimum(explained.clamp_min(0), var_u)
    return float(explained[inside].sum() / var_u[inside].sum().clamp_min(1e-12))


def main(argv=None) -> int:
    from scipy import stats

    from monai_inr_reg.bench import data as bdata
    from monai_inr_reg.bench import metrics as bmetrics
    from monai_inr_reg.core.grid import apply_affine
    from monai_inr_reg.core.sample import warp_image_mm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=25, help="maps per pair, the identity included")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)

    def normalised(image):
        low, high = np.percentile(image, [1, 99])
        return torch.as_tensor(np.clip((image - low) / (high - low + 1e-9), 0, 1), dtype=torch.float32)[None]

    summary: dict[str, list] = {}
    for pair in bdata.prostate_pairs(args.data_dir):
        grid = pair.fixed_grid
        points = grid.mm_points(dtype=torch.float64)
        center = np.asarray(grid.center_mm(), dtype=np.float64)
        fixed = normalised(pair.fixed)
        moving = torch.as_tensor(pair.moving, dtype=torch.float32)[None]
        labels = torch.as_tensor(pair.moving_labels, dtype=torch.float32)
        dice, scores = [], []
        for k in range(args.maps):
            matrix = torch.eye(4, dtype=torch.float64) if k == 0 else random_affine(center, rng, 1.0 if k <= args.maps // 2 else 2.0)
            mapped = apply_affine(matrix, points)

            def warp(image, mode="bilinear"):
                return warp_image_mm(image, pair.moving_grid, mapped, grid.shape, mode=mode)

            overlap = bmetrics.label_overlap(pair.fixed_labels, warp(labels, "nearest").numpy(), grid.spacing.tolist())
            dice.append(overlap["per_label"].get(1, {}).get("dice", float("nan")))
            inside = warp(torch.ones_like(moving))[0] > 0.99
            scores.append(similarities(fixed, normalised(warp(moving)[0].numpy()), inside))
        dice = np.asarray(dice)
        line = [f"{pair.name}: gland Dice {dice[0]:.2f} (best of the maps {dice.max():.2f})"]
        for name in scores[0]:
            values = np.asarray([s[name] for s in scores])
            rho, picked = stats.spearmanr(values, dice)[0], dice[int(np.argmax(values))]
            summary.setdefault(name, []).append((rho, picked - dice[0]))
            line.append(f"{name}: rho {rho:+.2f}, its pick {picked:.2f}")
        print("; ".join(line), flush=True)
    print("\n| similarity | mean Spearman rho with gland Dice | Dice of the map it ranks best, minus the identity's (mean / worst) |")
    print("|---|---|---|")
    for name, rows in summary.items():
        rows = np.asarray(rows)
        print(f"| {name} | {rows[:, 0].mean():+.2f} | {rows[:, 1].mean():+.2f} / {rows[:, 1].min():+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
