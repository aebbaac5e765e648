"""Write a small set of files to try the README's commands on (no download):

    python examples/make_example_files.py example_data

- ``fixed.png`` / ``moving.png``: a 2D pair saved as RGB PNGs (as most PNGs are), 128 x 128; the
  moving phantom is in another contrast, rotated by 8 degrees and shifted by (6, -4) px.
- ``fixed.nii.gz`` / ``moving.nii.gz``: a 3D pair, 48 x 44 x 40 voxels of 1.5 mm on an oblique grid;
  the moving volume is the fixed object rotated by 25 degrees about its centre and shifted.
- ``fixed_mask.nii.gz``: the region to register by (a box around the fixed object; both volumes
  also hold a bright slab outside it that does not move, as a scanner table).
- ``moving_label.nii.gz``: a label map on the moving grid (to apply the transform to later).
- ``initial.tfm``: an ITK rigid start, 20 degrees of the 25, as a user may have from an earlier
  run or a manual alignment.
- ``truth.txt``: the true 3D motion, fixed LPS mm -> moving LPS mm (4 x 4).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

SHAPE_3D = (48, 44, 40)
ANGLE_3D = 25.0
START_3D = 20.0
SHIFT_3D_MM = (4.0, -3.0, 2.0)


def _affine_ras() -> np.ndarray:
    tilt = math.radians(12.0)
    rotation = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * 1.5
    affine[:3, 3] = [-30.0, -35.0, -20.0]
    return affine


def _rigid_lps(degrees: float, shift_mm, centre_lps: np.ndarray) -> np.ndarray:
    """Rotation about the LPS z axis through ``centre_lps``, then a shift: fixed LPS mm -> moving LPS mm."""
    t = math.radians(degrees)
    rotation = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre_lps - rotation @ centre_lps + np.asarray(shift_mm)
    return matrix


def _volume(points_lps: np.ndarray, centre_lps: np.ndarray) -> np.ndarray:
    """An asymmetric object of blobs around ``centre_lps`` at points ``(P, 3)`` (LPS mm)."""
    rng = np.random.default_rng(11)
    value = np.zeros(len(points_lps))
    for _ in range(8):
        offset = rng.uniform(-14.0, 14.0, 3) * np.array([1.0, 1.0, 0.8])
        width = rng.uniform(3.5, 7.0)
        value += rng.uniform(0.4, 1.0) * np.exp(-((points_lps - centre_lps - offset) ** 2).sum(1) / (2 * width ** 2))
    return value


def write_3d(out: Path) -> None:
    import itk
    import nibabel as nib

    affine = _affine_ras()
    lps_from_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    mm_from_voxel = lps_from_ras @ affine
    voxels = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in SHAPE_3D], indexing="ij"), -1).reshape(-1, 3)
    points = voxels @ mm_from_voxel[:3, :3].T + mm_from_voxel[:3, 3]
    centre = points.mean(0)
    truth = _rigid_lps(ANGLE_3D, SHIFT_3D_MM, centre)
    fixed = _volume(points, centre)
    # moving(truth(x)) = fixed(x): the moving volume at y is the fixed object at truth^-1(y)
    inverse = np.linalg.inv(truth)
    source = points @ inverse[:3, :3].T + inverse[:3, 3]
    moving = _volume(source, centre)
    # outside the mask: a bright slab that does not move with the object (as a scanner table)
    slab = np.exp(-((points[:, 2] - centre[2] - 27.0) ** 2) / 2.0)
    fixed, moving = fixed + slab, moving + slab
    inside = (np.abs(points - centre) < np.array([24.0, 24.0, 22.0])).all(1)
    label = (_volume(source, centre) > 0.5).astype(np.uint8) + (_volume(source, centre) > 0.8).astype(np.uint8)
    for name, data in (("fixed", fixed), ("moving", moving)):
        nib.save(nib.Nifti1Image(data.reshape(SHAPE_3D).astype(np.float32), affine), str(out / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(inside.reshape(SHAPE_3D).astype(np.uint8), affine), str(out / "fixed_mask.nii.gz"))
    nib.save(nib.Nifti1Image(label.reshape(SHAPE_3D), affine), str(out / "moving_label.nii.gz"))
    start = _rigid_lps(START_3D, SHIFT_3D_MM, centre)
    transform = itk.AffineTransform[itk.D, 3].New()
    transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(start[:3, :3])))
    transform.SetTranslation([float(v) for v in start[:3, 3]])
    itk.transformwrite([transform], str(out / "initial.tfm"))
    np.savetxt(out / "truth.txt", truth, fmt="%.6f")


def write_2d(out: Path) -> None:
    from PIL import Image

    from monai_inr_reg.demo import make_demo_pair

    fixed, moving, _ = make_demo_pair(128)
    for name, image in (("fixed", fixed), ("moving", moving)):
        grey = np.round(255 * image[0].numpy().T).astype(np.uint8)  # PNG rows are the second array axis
        rgb = np.stack([grey, grey, grey], -1)
        Image.fromarray(rgb, mode="RGB").save(out / f"{name}.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_2d(args.output_dir)
    write_3d(args.output_dir)
    print(f"example files in {args.output_dir}: {', '.join(sorted(p.name for p in args.output_dir.iterdir()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
