"""Register a 2D multi-modal pair from PNG files and save a QC figure.

    python examples/multimodal_png_qc.py --fixed T1.png --moving PD.png --output-dir out/

For example with the BrainWeb slices (T1 fixed, proton density moved by 13, 17 px):

    python examples/multimodal_png_qc.py --fixed ../shared/data/2d-brainweb-t1-pd/BrainT1SliceBorder20.png \
        --moving ../shared/data/2d-brainweb-t1-pd/BrainProtonDensitySliceShifted13x17y.png

Without files it draws a synthetic "T1"/"PD" phantom pair (same anatomy, different contrast), moves the
PD one by a known rotation and shift, and also reports the error against the unmoved PD image.
Outputs: ``warped.png`` (moving on the fixed grid), ``qc.png`` (fixed, moving, warped with the fixed
edges over it, checkerboard after, Jacobian determinant), ``ddf.nii.gz`` (MONAI DDF, fixed grid).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from monai.transforms import LoadImage

from monai_inr_reg.core.fields import jacobian_determinant
from monai_inr_reg.pipeline import save_nifti
from monai_inr_reg.qc import write_qc_png
from monai_inr_reg.transforms import InrRegistration

# tissues of the phantom: (centre x, y, radii x, y) in [-1, 1] units, intensity in "T1" and in "PD"
TISSUES = [((0.0, 0.0), (0.80, 0.95), 0.35, 0.75), ((0.0, 0.05), (0.62, 0.78), 0.80, 0.55),
           ((-0.25, -0.2), (0.18, 0.28), 0.15, 1.00), ((0.22, -0.2), (0.18, 0.28), 0.15, 1.00),
           ((0.0, 0.45), (0.30, 0.14), 0.55, 0.30), ((0.1, -0.55), (0.12, 0.10), 1.00, 0.20)]


def phantom(size: int, contrast: int, angle_deg: float = 0.0, shift_px=(0.0, 0.0)) -> np.ndarray:
    """A (rows, cols) phantom in [0, 1] seen through a rotation about the centre and a shift (in pixels)."""
    rows, cols = np.meshgrid(np.arange(size, dtype=float), np.arange(size, dtype=float), indexing="ij")
    centre = (size - 1) / 2
    x, y = cols - centre - shift_px[0], rows - centre - shift_px[1]
    a = math.radians(angle_deg)
    x, y = (math.cos(a) * x + math.sin(a) * y) / (size / 2.2), (-math.sin(a) * x + math.cos(a) * y) / (size / 2.2)
    image = np.zeros_like(x)
    for (cx, cy), (rx, ry), *values in TISSUES:
        inside = 1 / (1 + np.exp((np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1) * 25))
        image = image * (1 - inside) + values[contrast] * inside
    return image


def save_png(path: Path, image: np.ndarray) -> None:
    low, high = np.percentile(image, [0.5, 99.5])
    scaled = np.clip((image - low) / (high - low if high > low else 1.0), 0, 1)
    Image.fromarray((scaled * 255).round().astype(np.uint8)).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixed", type=Path), parser.add_argument("--moving", type=Path)
    parser.add_argument("--output-dir", type=Path, help="output folder (default: a new temporary folder)")
    parser.add_argument("--preset", default="multimodal-rigid")
    parser.add_argument("--iterations-scale", type=float, default=1.0, help="fewer iterations for a quick try")
    parser.add_argument("--size", type=int, default=128, help="synthetic image size, pixels")
    parser.add_argument("--angle", type=float, default=8.0, help="synthetic rotation, degrees")
    parser.add_argument("--shift", type=float, nargs=2, default=(6.0, -4.0), help="synthetic shift (x, y), pixels")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="multimodal_png_qc-"))
    out.mkdir(parents=True, exist_ok=True)

    truth = None
    if args.fixed is None or args.moving is None:
        args.fixed, args.moving = out / "fixed_t1.png", out / "moving_pd.png"
        save_png(args.fixed, phantom(args.size, 0))
        save_png(args.moving, phantom(args.size, 1, args.angle, args.shift))
        truth = phantom(args.size, 1)  # the PD image where it belongs: what a perfect warp gives back

    # PNG files load through MONAI's LoadImage as (1, x, y) = (1, columns, rows), identity affine
    load = LoadImage(image_only=True, ensure_channel_first=True)
    fixed_image, moving_image = load(str(args.fixed)), load(str(args.moving))
    registration = InrRegistration(args.preset, iterations_scale=args.iterations_scale, device=args.device)
    warped_image, ddf = registration(fixed_image, moving_image)
    fixed, moving = fixed_image[0].numpy().T, moving_image[0].numpy().T  # (rows, cols) for display
    warped = warped_image[0].numpy().T
    det = jacobian_determinant(torch.as_tensor(ddf)).numpy()
    save_png(out / "warped.png", warped)
    save_nifti(out / "ddf.nii.gz", ddf, ddf.affine)

    done = warped_image.applied_operations[-1]["extra_info"]  # what InrRegistration recorded
    matrix = np.asarray(done["matrix_mm"])
    angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    title = f"{args.preset}: {done['seconds']:.1f} s, rotation found {abs(angle):.2f} deg"
    print(title)
    if truth is not None:
        scale = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
        before = float(np.abs(scale(moving) - scale(truth)).mean())
        after = float(np.abs(scale(warped) - scale(truth)).mean())
        print(f"synthetic truth: rotation {args.angle:.2f} deg; mean |PD - true PD| before {before:.4f}, after {after:.4f}")
        title += f"; error to the true PD {before:.3f} -> {after:.3f}"
    # arrays as loaded, (x, y); the figure shows x across and, for PNG files, row 0 at the top
    before = moving_image[0].numpy() if moving_image.shape == fixed_image.shape else warped_image[0].numpy()
    write_qc_png(out / "qc.png", fixed_image[0].numpy(), before, warped_image[0].numpy(), det, title=title,
                 origin="upper")
    print(f"QC figure: {out / 'qc.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
