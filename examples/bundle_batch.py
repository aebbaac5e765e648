"""Run the MONAI bundle over a datalist of image pairs and print the metrics table.

    python examples/bundle_batch.py --datalist DATA/datalist.json --dataset-dir DATA --output-dir out/

This calls exactly what you would type yourself (printed before it runs):

    python -m monai.bundle run --config_file bundle/configs/inference.yaml \
        --dataset_dir DATA --datalist DATA/datalist.json --output_dir out --preset deformable --device cpu

With ``--nproc N`` it shards the pairs over N processes with torchrun (torch.distributed):

    torchrun --standalone --nproc_per_node N -m monai.bundle run \
        --config_file "['bundle/configs/inference.yaml','bundle/configs/multi_gpu_inference.yaml']" ...

Without ``--datalist`` it writes a few small synthetic 2D pairs (with labels) and their datalist
into the output folder first. Rerunning skips pairs that are complete.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

BUNDLE_CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


def write_synthetic_datalist(directory: Path, n_pairs: int) -> Path:
    """``n_pairs`` 2D pairs of nested ellipses, each moving image shifted differently; relative paths."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    pairs = []
    for case in range(n_pairs):
        shift = np.array([4.0 - case, -3.0 + case])
        entry = {}
        for role, offset in (("fixed", np.zeros(2)), ("moving", shift)):
            index = np.stack(np.meshgrid(np.arange(48.0), np.arange(40.0), indexing="ij"), -1)
            points = index - np.array([23.5, 19.5]) - offset
            outer = np.sqrt(((points / [16.0, 12.0]) ** 2).sum(-1))
            inner = np.sqrt((((points - [4.0, -3.0]) / [6.0, 5.0]) ** 2).sum(-1))
            image = (100 / (1 + np.exp((outer - 1) * 8)) + 80 / (1 + np.exp((inner - 1) * 8))).astype(np.float32)
            label = np.where(inner < 1, 2, np.where(outer < 1, 1, 0)).astype(np.uint8)
            for key, data in ((role, image), (f"{role}_label", label)):
                name = f"images/case{case}_{key}.nii.gz"
                nib.save(nib.Nifti1Image(data, np.eye(4)), str(directory / name))
                entry[key] = name
        pairs.append(entry)
    datalist = directory / "datalist.json"
    datalist.write_text(json.dumps({"pairs": pairs}, indent=1))
    return datalist


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", type=Path)
    parser.add_argument("--dataset-dir", type=Path, help="base of relative paths (default: the datalist's folder)")
    parser.add_argument("--output-dir", type=Path, help="output folder (default: a new temporary folder)")
    parser.add_argument("--preset", default="deformable")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations-scale", type=float, default=1.0, help="fewer iterations for a quick try")
    parser.add_argument("--nproc", type=int, default=1, help="processes for torchrun (1: no torchrun)")
    parser.add_argument("--pairs", type=int, default=3, help="number of synthetic pairs without --datalist")
    parser.add_argument("--no-itk", dest="itk", action="store_false", help="skip the ITK / ANTs transform files")
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="bundle_batch-"))

    datalist = args.datalist or write_synthetic_datalist(args.output_dir / "input", args.pairs)
    dataset_dir = args.dataset_dir or datalist.parent
    configs = str(BUNDLE_CONFIGS / "inference.yaml")
    launcher = [sys.executable, "-m"]
    if args.nproc > 1:
        configs = f"['{BUNDLE_CONFIGS / 'inference.yaml'}','{BUNDLE_CONFIGS / 'multi_gpu_inference.yaml'}']"
        launcher += ["torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc), "-m"]
    command = [*launcher, "monai.bundle", "run", "--config_file", configs, "--dataset_dir", str(dataset_dir),
               "--datalist", str(datalist), "--output_dir", str(args.output_dir), "--preset", args.preset,
               "--device", args.device, "--overrides#iterations_scale", str(args.iterations_scale),
               "--write_itk", str(args.itk).lower()]
    print("python", " ".join(command[1:]), flush=True)
    code = subprocess.call(command)

    metrics = args.output_dir / "metrics.csv"
    if metrics.is_file():
        with open(metrics) as f:
            rows = list(csv.DictReader(f))
        print(f"\n{'pair':<32} {'status':<7} {'Dice before':>11} {'Dice':>6} {'HD95 mm':>8} {'fold %':>7} {'s':>6}")
        for r in rows:
            number = lambda k, fmt: format(float(r[k]), fmt) if r[k] else "-"  # noqa: E731
            print(f"{r['pair']:<32} {r['status']:<7} {number('dice_before', '.3f'):>11} {number('dice', '.3f'):>6} "
                  f"{number('hd95_mm', '.2f'):>8} {number('folding_percent', '.2f'):>7} {number('seconds', '.1f'):>6}")
            if r["error"]:
                print(f"    {r['error']}")
    print(f"\nbundle exit status {code}; outputs in {args.output_dir}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
