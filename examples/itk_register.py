"""Register two images with ITK in and ITK out, then apply the transform with ITK and with ANTs.

    python examples/itk_register.py FIXED MOVING [--preset rigid] [--out DIR]
    python examples/itk_register.py            # makes a tiny 2D pair (a known 3 mm, -2 mm shift)

Steps: read both images with ``itk.imread``; ``register_itk`` returns an ITK transform (fixed
points -> moving points) and the warped moving image on the fixed grid; the transform is written
as ``transform.h5`` with ``itk.transformwrite``; the moving image is resampled through the file
with ``itk.resample_image_filter`` and, when antspyx is installed, with ``ants.apply_transforms``;
both must match the returned warped image.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np


def make_pair(directory: Path, shift_mm=(3.0, -2.0)) -> tuple[Path, Path]:
    """Write a tiny oblique 2D pair (different grids; moving content shifted by ``shift_mm``) as .mha."""
    import itk

    def blobs(size, spacing, origin, degrees, shift):
        a = math.radians(degrees)
        direction = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        i, j = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")  # ITK index (x, y)
        points = np.einsum("ab,bij->aij", direction * np.asarray(spacing), np.stack([i, j]))
        x, y = points[0] + origin[0] - shift[0], points[1] + origin[1] - shift[1]
        value = np.zeros(size)
        for cx, cy, sigma, height in [(21, 13, 5, 1.0), (35, 11, 4, 0.7), (32, 26, 6, 0.9), (23, 27, 3, 0.5)]:
            value += height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        image = itk.image_from_array(np.ascontiguousarray(value.T, dtype=np.float32))  # ITK arrays are (y, x)
        image.SetSpacing(list(spacing))
        image.SetOrigin(list(origin))
        image.SetDirection(itk.matrix_from_array(direction))
        return image

    directory.mkdir(parents=True, exist_ok=True)
    fixed, moving = directory / "fixed.mha", directory / "moving.mha"
    itk.imwrite(blobs((48, 40), (1.0, 1.2), (5.0, -3.0), 20, (0.0, 0.0)), str(fixed))
    itk.imwrite(blobs((44, 44), (1.1, 1.1), (4.0, -4.0), -10, shift_mm), str(moving))
    return fixed, moving


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed", nargs="?", help="fixed image (any ITK format); default: a tiny made-up pair")
    parser.add_argument("moving", nargs="?", help="moving image")
    parser.add_argument("--preset", default=None, help="default: rigid for the made-up pair, else deformable")
    parser.add_argument("--out", help="output folder (default: a new temporary folder)")
    parser.add_argument("--iterations-scale", type=float, default=1.0, help="multiplies every stage's iterations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import itk

    from monai_inr_reg import register_itk

    out = Path(args.out or tempfile.mkdtemp(prefix="itk_register-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.fixed is None:
        fixed_path, moving_path = make_pair(out)
        preset = args.preset or "rigid"
    elif args.moving is None:
        parser.error("give both FIXED and MOVING, or neither")
    else:
        fixed_path, moving_path = Path(args.fixed), Path(args.moving)
        preset = args.preset or "deformable"

    fixed = itk.imread(str(fixed_path), itk.F)
    moving = itk.imread(str(moving_path), itk.F)
    transform, warped = register_itk(fixed, moving, preset, seed=args.seed, iterations_scale=args.iterations_scale)
    itk.imwrite(warped, str(out / "warped.nii.gz"))
    transform_path = out / "transform.h5"
    itk.transformwrite([transform], str(transform_path))
    print(f"{transform.GetNameOfClass()} written to {transform_path}")

    # 1. ITK: resample the moving image through the transform read back from the file
    reread = itk.transformread(str(transform_path))[0]
    resampled = itk.resample_image_filter(moving, transform=reread, use_reference_image=True, reference_image=fixed)
    reference = itk.array_from_image(warped)
    scale = float(np.abs(itk.array_from_image(moving)).max())
    # compare where the sample lies inside the moving image (at its edge, resamplers pad differently):
    # a ones image with a zero border resamples to exactly 1 only there
    ones = np.zeros(itk.array_view_from_image(moving).shape, np.float32)
    ones[(slice(1, -1),) * ones.ndim] = 1.0
    ones_image = itk.image_from_array(ones)
    ones_image.CopyInformation(moving)
    inside = itk.array_from_image(itk.resample_image_filter(
        ones_image, transform=reread, use_reference_image=True, reference_image=fixed)) > 1 - 1e-6
    report = {"transform": transform, "transform_path": transform_path, "warped": warped, "inside": inside,
              "itk_difference": float(np.abs(itk.array_from_image(resampled) - reference)[inside].max()) / scale}
    print(f"itk.resample_image_filter vs warped: max relative difference {report['itk_difference']:.2e} "
          f"over the {inside.mean():.0%} of fixed voxels that map inside the moving image")

    # 2. ANTs, when installed: the same file through ants.apply_transforms
    try:
        import ants
    except ImportError:
        print("antspyx not installed: skipping ants.apply_transforms")
    else:
        applied = ants.apply_transforms(ants.image_read(str(fixed_path)), ants.image_read(str(moving_path)),
                                        [str(transform_path)], interpolator="linear")
        # ANTs arrays are in ITK index order (x, y[, z]); ITK's are the reverse
        report["ants_difference"] = float(np.abs(applied.numpy().T - reference)[inside].max()) / scale
        print(f"ants.apply_transforms vs warped: max relative difference {report['ants_difference']:.2e}")
    return report


if __name__ == "__main__":
    main()
