"""Loaders for the benchmark data in ``../shared/data`` (see its README): aligned pairs with ground truth.

Every loader returns arrays in array order on an explicit :class:`~monai_inr_reg.core.grid.ImageGrid`
(LPS mm), so the protocols and metrics never guess a geometry:

- 2D pairs (PNG slices, axial slices of volumes) carry **no affine**, i.e. identity RAS as for a
  tensor given to :func:`monai_inr_reg.register` without one: LPS ``x = -i``, ``y = -j``, 1 mm pixels.
  Volume slices are cut from a common 1 mm grid, so 1 px = 1 mm.
- 3D volumes keep their NIfTI (RAS) affine, converted once by ``ImageGrid.from_ras_affine``.

Resampling between grids goes through :func:`monai_inr_reg.core.sample.warp_image_mm` (physical
points), never through a re-derived index mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.grid import ImageGrid
from ..core.sample import warp_image_mm

__all__ = [
    "AlignedPair",
    "LabelledPair",
    "default_data_dir",
    "resolve_data_dir",
    "load_volume",
    "common_grid",
    "resample",
    "brainweb_pair",
    "volume_slice_pairs",
    "stroke_volume_pair",
    "ixi_volume_pair",
    "aseg_pairs",
    "prostate_pairs",
    "dlmuse_pairs",
]

_BRAINWEB = "2d-brainweb-t1-pd"
_STROKE = "3d-isles-stroke-p1"
_IXI = "3d-ixi002-t1-t2"
_ASEG = "3d-brain-aseg"
_PROSTATE = "3d-prostate-mr-trus"
_DLMUSE = "3d-ixi-t1-dlmuse"


@dataclass
class AlignedPair:
    """Two exactly aligned images on one grid: the fixed image and the source of the moving image.

    Attributes:
        name: short id, e.g. ``"brainweb T1<-PD"``.
        fixed: ``(*S)`` float32 fixed image, array order.
        source: ``(*S)`` float32, the other (or the same) contrast, voxel-for-voxel aligned with
            ``fixed``; protocols move it to make the moving image.
        mask: ``(*S)`` bool, where errors are scored (brain).
        grid: the common grid (LPS mm).
        multimodal: True when ``source`` is another contrast than ``fixed``.
        contrasts: (fixed contrast, moving contrast), for tables.
    """

    name: str
    fixed: np.ndarray
    source: np.ndarray
    mask: np.ndarray
    grid: ImageGrid
    multimodal: bool
    contrasts: tuple[str, str]
    meta: dict = field(default_factory=dict)


@dataclass
class LabelledPair:
    """A real pair with labels (no synthetic motion): fixed/moving on their own grids.

    Attributes:
        fixed, moving: ``(*S_fixed)`` / ``(*S_moving)`` float32 images.
        fixed_grid, moving_grid: their grids (LPS mm).
        fixed_labels, moving_labels: ``(C, *S)`` label images (``C == 1``: label ids; ``C > 1``:
            one binary channel per structure, as :mod:`monai_inr_reg.metrics` reads them).
        labels: label ids to score (None: all present).
    """

    name: str
    fixed: np.ndarray
    moving: np.ndarray
    fixed_grid: ImageGrid
    moving_grid: ImageGrid
    fixed_labels: np.ndarray
    moving_labels: np.ndarray
    multimodal: bool
    labels: list[int] | None = None
    meta: dict = field(default_factory=dict)


def default_data_dir() -> Path | None:
    """``../shared/data`` seen from the working directory or from the project root, if it exists."""
    here = Path(__file__).resolve().parents[2]  # project root (editable install)
    for candidate in (Path.cwd() / ".." / "shared" / "data", here / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def resolve_data_dir(data_dir=None) -> Path:
    """The data folder to use; raises ``FileNotFoundError`` naming ``--data-dir`` when absent."""
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    if path is None or not path.is_dir():
        raise FileNotFoundError(
            f"bench: '--data-dir' {str(path) if path else '(default ../shared/data)'} is not a folder; "
            "pass the folder holding 2d-brainweb-t1-pd/, 3d-brain-aseg/, ... (see its README)")
    return path


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"bench: data file {path} is missing (see the data README)")
    return path


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    arr = np.asarray(Image.open(_need(path)))
    if arr.ndim == 3:  # grey PNG stored as RGB(A): channels are equal for these slices
        arr = arr[..., 0]
    return arr.astype(np.float32)


def load_volume(path) -> tuple[np.ndarray, ImageGrid]:
    """A NIfTI volume (first 3 axes) as float32 array order and its grid (RAS affine -> LPS)."""
    import nibabel as nib

    img = nib.load(str(_need(Path(path))))
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data, ImageGrid.from_ras_affine(data.shape[:3], img.affine)


def resample(image: np.ndarray, image_grid: ImageGrid, out_grid: ImageGrid, *, mode: str = "bilinear") -> np.ndarray:
    """Resample ``image`` ``(*S_in)`` on ``image_grid`` onto ``out_grid`` through physical points (zeros outside)."""
    points = out_grid.mm_points(dtype=torch.float64)
    out = warp_image_mm(torch.as_tensor(image, dtype=torch.float32)[None], image_grid, points, out_grid.shape, mode=mode)
    return out[0].numpy()


def common_grid(masks_and_grids, *, spacing_mm: float = 1.0, margin_mm: float = 10.0) -> ImageGrid:
    """An axis-aligned RAS grid (``spacing_mm`` isotropic) holding every mask's voxels plus a margin.

    Axis-aligned in RAS means array axis 2 is inferior -> superior, so ``volume[:, :, k]`` is axial.

    Args:
        masks_and_grids: iterable of ``(mask (*S) bool, ImageGrid)``.
    """
    lows, highs = [], []
    for mask, grid in masks_and_grids:
        idx = np.argwhere(mask)
        box = np.array([idx.min(0), idx.max(0)], dtype=np.float64)
        corners = torch.cartesian_prod(*[torch.tensor(box[:, a]) for a in range(3)])
        ras = grid.voxel_to_mm(corners) * torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)  # LPS -> RAS
        lows.append(ras.min(0).values)
        highs.append(ras.max(0).values)
    low = torch.stack(lows).min(0).values - margin_mm
    high = torch.stack(highs).max(0).values + margin_mm
    shape = tuple(int(np.ceil(float(h - l) / spacing_mm)) + 1 for l, h in zip(low, high))
    affine_ras = torch.eye(4, dtype=torch.float64)
    affine_ras[:3, :3] *= spacing_mm
    affine_ras[:3, 3] = low
    return ImageGrid.from_ras_affine(shape, affine_ras)


def _identity_grid(shape) -> ImageGrid:
    # 2D arrays are handed to register() without an affine: identity RAS (LPS x = -i, y = -j)
    return ImageGrid.from_ras_affine(tuple(shape), None)


def brainweb_pair(data_dir, *, multimodal: bool) -> AlignedPair:
    """BrainWeb T1 and PD slices with a 20 px border (257 x 221), exactly aligned.

    Fixed = T1; source = PD (multi-modal) or T1 (single-modal). Mask: ITK's elliptical brain mask
    (``BrainProtonDensitySliceBorder20Mask.png``) inside the head (T1 > 0).
    """
    folder = resolve_data_dir(data_dir) / _BRAINWEB
    t1 = _read_png(folder / "BrainT1SliceBorder20.png")
    pd = _read_png(folder / "BrainProtonDensitySliceBorder20.png")
    mask = (_read_png(folder / "BrainProtonDensitySliceBorder20Mask.png") > 0) & (t1 > 0)
    return AlignedPair("brainweb", t1, pd if multimodal else t1.copy(), mask, _identity_grid(t1.shape), multimodal,
                       ("T1", "PD" if multimodal else "T1"))


def _volume_contrasts(data_dir, dataset: str):
    """(fixed volume, source volume, brain mask) on their native grids, and names; fixed = T2."""
    folder = resolve_data_dir(data_dir) / dataset
    if dataset == _STROKE:
        fixed, fixed_grid = load_volume(folder / "t2_bias.nii.gz")
        source, source_grid = load_volume(folder / "t1c_bias.nii.gz")
        mask, mask_grid = load_volume(folder / "brainmask.nii.gz")
        return (fixed, fixed_grid), (source, source_grid), (mask > 0.5, mask_grid), ("T2", "T1c")
    fixed, fixed_grid = load_volume(folder / "hd_bet_IXI002-Guys-0828-T2.nii.gz")
    source, source_grid = load_volume(folder / "hd_bet_IXI002-Guys-0828-T1.nii.gz")
    mask, mask_grid = load_volume(folder / "hd_bet_mask_IXI002-Guys-0828-T2.nii.gz")
    return (fixed, fixed_grid), (source, source_grid), (mask > 0.5, mask_grid), ("T2", "T1")


def _volume_pair_on(data_dir, dataset: str, *, multimodal: bool, spacing_mm: float, name: str) -> AlignedPair:
    (fixed, fg), (source, sg), (mask, mg), contrasts = _volume_contrasts(data_dir, dataset)
    grid = common_grid([(mask, mg)], spacing_mm=spacing_mm)
    fixed_c = resample(fixed, fg, grid)
    source_c = resample(source, sg, grid) if multimodal else fixed_c.copy()
    mask_c = resample(mask.astype(np.float32), mg, grid) > 0.5
    return AlignedPair(name, fixed_c, source_c, mask_c, grid, multimodal,
                       (contrasts[0], contrasts[1] if multimodal else contrasts[0]), {"dataset": dataset})


def stroke_volume_pair(data_dir, *, multimodal: bool = True, spacing_mm: float | None = None) -> AlignedPair:
    """ISLES stroke T2 (fixed) and T1c (source), co-registered voxel for voxel.

    ``spacing_mm=None`` keeps the native 2 mm grid and affine; otherwise a common RAS grid.
    """
    if spacing_mm is None:
        (fixed, grid), (source, _), (mask, _), contrasts = _volume_contrasts(data_dir, _STROKE)
        return AlignedPair("stroke", fixed, source if multimodal else fixed.copy(), mask, grid, multimodal,
                           (contrasts[0], contrasts[1] if multimodal else contrasts[0]), {"dataset": _STROKE})
    return _volume_pair_on(data_dir, _STROKE, multimodal=multimodal, spacing_mm=spacing_mm, name="stroke")


def ixi_volume_pair(data_dir, *, multimodal: bool = True, spacing_mm: float = 2.0) -> AlignedPair:
    """IXI002 T2 (fixed) and T1 (source, resampled through the affines) on a common RAS grid."""
    return _volume_pair_on(data_dir, _IXI, multimodal=multimodal, spacing_mm=spacing_mm, name="ixi002")


def volume_slice_pairs(data_dir, dataset: str, *, multimodal: bool, n_slices: int = 5) -> list[AlignedPair]:
    """Axial slices of a co-registered volume pair resampled to a common 1 mm grid.

    Args:
        dataset: ``"stroke"`` (ISLES T2 fixed, T1c moving) or ``"ixi002"`` (T2 fixed, T1 moving).
        n_slices: slices evenly spaced over those whose brain area is at least 80 % of the largest.

    Returns:
        2D pairs (no affine: 1 px = 1 mm), ``meta["slice"]`` the axial index on the common grid.
    """
    folder = {"stroke": _STROKE, "ixi002": _IXI}.get(dataset)
    if folder is None:
        raise ValueError(f"volume_slice_pairs(): 'dataset' must be 'stroke' or 'ixi002', got {dataset!r}")
    vol = _volume_pair_on(data_dir, folder, multimodal=multimodal, spacing_mm=1.0, name=dataset)
    area = vol.mask.sum(axis=(0, 1))
    candidates = np.flatnonzero(area >= 0.8 * area.max())
    picks = candidates[np.linspace(0, len(candidates) - 1, n_slices).round().astype(int)]
    pairs = []
    for k in dict.fromkeys(int(p) for p in picks):
        fixed = np.ascontiguousarray(vol.fixed[:, :, k])
        pairs.append(AlignedPair(dataset, fixed, np.ascontiguousarray(vol.source[:, :, k]),
                                 np.ascontiguousarray(vol.mask[:, :, k]), _identity_grid(fixed.shape), multimodal,
                                 vol.contrasts, {"dataset": folder, "slice": k}))
    return pairs


def _downsample_grid(grid: ImageGrid, factor: int) -> ImageGrid:
    return grid.downsampled(factor) if factor > 1 else grid


def aseg_pairs(data_dir, *, downsample: int = 1) -> list[LabelledPair]:
    """The two aseg brains (one 160 x 192 x 224, 1 mm space), both directions.

    The npz files carry no affine: identity RAS (1 mm). ``downsample`` > 1 resamples images
    (linear) and labels (nearest) onto a coarser grid over the same extent, for quick runs.
    """
    folder = resolve_data_dir(data_dir) / _ASEG
    scan = np.load(_need(folder / "test_scan.npz"))
    vol_a, seg_a = scan["vol"].astype(np.float32), scan["seg"].astype(np.float32)
    vol_b = np.load(_need(folder / "subject_1_vol.npz"))["vol_data"].astype(np.float32)
    seg_b = np.load(_need(folder / "subject_1_seg.npz"))["vol_data"].astype(np.float32)
    labels = [int(v) for v in np.load(_need(folder / "labels.npz"))["labels"]]
    grid = ImageGrid.from_ras_affine(vol_a.shape, None)
    if downsample > 1:
        small = _downsample_grid(grid, downsample)
        vol_a, vol_b = resample(vol_a, grid, small), resample(vol_b, grid, small)
        seg_a, seg_b = resample(seg_a, grid, small, mode="nearest"), resample(seg_b, grid, small, mode="nearest")
        grid = small

    def keep(seg):  # score the 30 evaluation labels only
        return np.where(np.isin(np.rint(seg), labels), np.rint(seg), 0).astype(np.float32)[None]

    a = ("test_scan", vol_a, keep(seg_a))
    b = ("subject_1", vol_b, keep(seg_b))
    return [LabelledPair(f"{m[0]}->{f[0]}", f[1], m[1], grid, grid, f[2], m[2], False, labels)
            for f, m in ((a, b), (b, a))]


def dlmuse_pairs(data_dir, *, cases: int | None = None, downsample: int = 1) -> list[LabelledPair]:
    """IXI T1 heads of different subjects (with skull, 2 mm, 120 x 120 x 90, each on its native grid)
    with their DLMUSE parcellations: subject ``k + 1`` (moving) -> subject ``k`` (fixed) in name order,
    ``k = 0 .. 8`` (the first ``cases``), scored over every parcellation label (about 148).
    ``downsample`` > 1: as :func:`aseg_pairs`, on each image's own grid."""
    folder = resolve_data_dir(data_dir) / _DLMUSE
    names = sorted(p.name[: -len("_T1.nii.gz")] for p in (folder / "T1").glob("*_T1.nii.gz"))
    if len(names) < 2:
        raise FileNotFoundError(f"{folder / 'T1'} holds {len(names)} T1 volume(s); the pairs need at least 2")

    def subject(name):
        image, grid = load_volume(folder / "T1" / f"{name}_T1.nii.gz")
        labels, label_grid = load_volume(folder / "DLMUSE" / f"{name}_T1_DLMUSE.nii.gz")
        if labels.shape != image.shape or not torch.allclose(label_grid.mm_from_voxel, grid.mm_from_voxel):
            raise ValueError(f"{name}: its DLMUSE parcellation is not on its T1's grid")
        if downsample > 1:
            small = _downsample_grid(grid, downsample)
            image, labels, grid = resample(image, grid, small), resample(labels, grid, small, mode="nearest"), small
        return name, image, grid, np.rint(labels)[None].astype(np.float32)

    pairs = []
    for k in range(len(names) - 1)[:cases]:
        (fixed_name, fixed, fixed_grid, fixed_labels), (moving_name, moving, moving_grid, moving_labels) = \
            subject(names[k]), subject(names[k + 1])
        pairs.append(LabelledPair(f"{moving_name.split('-')[0]}->{fixed_name.split('-')[0]}", fixed, moving, fixed_grid,
                                  moving_grid, fixed_labels, moving_labels, False))
    return pairs


def _prostate_grid(shape, extent_mm) -> ImageGrid:
    # voxel edges span [0, extent] on every axis (RAS, axis-aligned): both images fill one box
    spacing = np.asarray(extent_mm, dtype=np.float64) / np.asarray(shape, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = spacing / 2.0
    return ImageGrid.from_ras_affine(shape, torch.as_tensor(affine))


def prostate_pairs(data_dir, *, cases: int | None = None) -> list[LabelledPair]:
    """Prostate MR (moving, 64 x 64 x 60) -> 3D TRUS (fixed, 44 x 59 x 41) pairs with 4-D labels.

    The headers carry no physical relation between the two scans, so both grids are replaced by
    one box: each image's voxels fill the fixed image's physical extent (shape x 0.4 mm), as
    DeepReg resamples both to one shape. Errors in mm are in that (fixed) frame.
    Label channel 0 is the gland, channels 1-2 (where present) landmarks, matched by index.
    """
    import nibabel as nib

    folder = resolve_data_dir(data_dir) / _PROSTATE
    names = sorted(p.name for p in (folder / "fixed_images").glob("case*.nii.gz"))
    if cases is not None:
        names = names[:cases]
    pairs = []
    for name in names:
        fixed_img = nib.load(str(folder / "fixed_images" / name))
        fixed = np.asarray(fixed_img.dataobj, dtype=np.float32)
        moving = np.asarray(nib.load(str(_need(folder / "moving_images" / name))).dataobj, dtype=np.float32)
        fixed_lab = np.asarray(nib.load(str(_need(folder / "fixed_labels" / name))).dataobj, dtype=np.float32)
        moving_lab = np.asarray(nib.load(str(_need(folder / "moving_labels" / name))).dataobj, dtype=np.float32)
        if fixed_lab.ndim == 3:
            fixed_lab, moving_lab = fixed_lab[..., None], moving_lab[..., None]
        n = min(fixed_lab.shape[-1], moving_lab.shape[-1])
        extent = np.asarray(fixed.shape, dtype=np.float64) * np.abs(np.diag(fixed_img.affine)[:3])
        pairs.append(LabelledPair(
            name.split(".")[0], fixed, moving, _prostate_grid(fixed.shape, extent), _prostate_grid(moving.shape, extent),
            np.moveaxis(fixed_lab[..., :n], -1, 0).copy(), np.moveaxis(moving_lab[..., :n], -1, 0).copy(), True))
    return pairs
