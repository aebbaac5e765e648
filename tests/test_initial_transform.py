"""An initial transform (ITK .h5 / .tfm, ANTs .mat, a matrix) replaces the automatic start."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from scipy.ndimage import map_coordinates

from monai_inr_reg import register
from monai_inr_reg.cli import main
from monai_inr_reg.core.linear import nearest_rotation, rotation_matrix, rotation_parameters
from synthetic_images import gaussian_blobs

SHAPE = (64, 60)
ANGLE = 70.0  # degrees: beyond the presets' capture range from the centres of mass
OPTIONS = {}  # the preset as users run it: at half its iterations a 10-degree start error is not all taken up


def rotation_about_centre(degrees: float) -> np.ndarray:
    """``(3, 3)`` map fixed -> moving, LPS mm, for NIfTI files with an identity RAS affine: LPS = (-i, -j),
    so a rotation about the grid centre in LPS is the same rotation of voxel indices."""
    t = math.radians(degrees)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    centre = -(np.array(SHAPE) - 1) / 2
    matrix = np.eye(3)
    matrix[:2, :2] = rot
    matrix[:2, 2] = centre - rot @ centre
    return matrix


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Fixed and moving NIfTI files; the moving one is the fixed one seen through ``rotation_about_centre(ANGLE)``."""
    root = tmp_path_factory.mktemp("initial")
    fixed = gaussian_blobs(SHAPE, seed=3, blobs=7, width=(0.05, 0.12))
    # moving(phi(x)) = fixed(x): sample the fixed image at phi^-1(y) for every moving voxel y (voxel frame)
    inverse = np.linalg.inv(rotation_about_centre(ANGLE))
    ij = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in SHAPE], indexing="ij"), -1).reshape(-1, 2)
    lps = -ij
    source = -(lps @ inverse[:2, :2].T + inverse[:2, 2])
    moving = map_coordinates(fixed, source.T, order=3, mode="constant").reshape(SHAPE).astype(np.float32)
    paths = {"fixed": str(root / "fixed.nii.gz"), "moving": str(root / "moving.nii.gz")}
    nib.save(nib.Nifti1Image(fixed, np.eye(4)), paths["fixed"])
    nib.save(nib.Nifti1Image(moving, np.eye(4)), paths["moving"])
    return paths


def ants_mat(path, degrees: float) -> str:
    """An initial transform written by ANTs (an ``AffineTransform_double_2_2`` .mat, as antsRegistration writes)."""
    ants = pytest.importorskip("ants")
    matrix = rotation_about_centre(degrees)
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=2,
                                           matrix=matrix[:2, :2], translation=tuple(matrix[:2, 2]))
    ants.write_transform(transform, str(path))
    return str(path)


def corner_error_px(matrix: torch.Tensor) -> float:
    """Largest distance (voxels = mm here) between where ``matrix`` and the truth take the grid corners."""
    truth = torch.from_numpy(rotation_about_centre(ANGLE))
    corners = -torch.tensor([[0.0, 0.0], [SHAPE[0] - 1.0, 0.0], [0.0, SHAPE[1] - 1.0], [SHAPE[0] - 1.0, SHAPE[1] - 1.0]],
                            dtype=torch.float64)
    a = corners @ matrix[:2, :2].T + matrix[:2, 2]
    b = corners @ truth[:2, :2].T + truth[:2, 2]
    return float((a - b).norm(dim=1).max())


def test_rotation_parameters_invert_rotation_matrix():
    for vector in ([0.3, -0.2, 0.5], [0.0, 0.0, 0.0], [0.0, math.pi - 1e-5, 0.0], [1.0, 2.0, -0.5]):
        rotation = rotation_matrix(torch.tensor(vector, dtype=torch.float64), 3)
        assert torch.allclose(rotation_matrix(rotation_parameters(rotation), 3), rotation, atol=1e-9)
    rotation_2d = rotation_matrix(torch.tensor([2.5], dtype=torch.float64), 2)
    assert torch.allclose(rotation_parameters(rotation_2d), torch.tensor([2.5], dtype=torch.float64))
    sheared = torch.tensor([[1.1, 0.2], [0.0, 0.9]], dtype=torch.float64) @ rotation_2d
    nearest = nearest_rotation(sheared)
    assert torch.allclose(nearest @ nearest.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert float(torch.linalg.det(nearest)) > 0


def test_ants_mat_start_brings_home_a_pair_the_automatic_start_loses(pair, tmp_path):
    automatic = register(pair["fixed"], pair["moving"], "rigid", **OPTIONS)
    assert corner_error_px(automatic.matrix_mm) > 5.0, "the pair must be beyond the automatic start's reach"
    started = register(pair["fixed"], pair["moving"], "rigid", initial_transform=ants_mat(tmp_path / "init.mat", 60.0),
                       **OPTIONS)
    assert corner_error_px(started.matrix_mm) < 0.5


def test_itk_files_and_matrices_start_alike(pair, tmp_path):
    import itk

    start = rotation_about_centre(60.0)
    affine = itk.AffineTransform[itk.D, 2].New()
    affine.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(start[:2, :2])))
    affine.SetTranslation([float(v) for v in start[:2, 2]])
    results = []
    for name in ("init.h5", "init.tfm"):
        itk.transformwrite([affine], str(tmp_path / name))
        results.append(register(pair["fixed"], pair["moving"], "rigid", initial_transform=str(tmp_path / name), **OPTIONS))
    results.append(register(pair["fixed"], pair["moving"], "rigid", initial_transform=start, **OPTIONS))
    for result in results:
        assert corner_error_px(result.matrix_mm) < 0.5
    assert torch.allclose(results[0].matrix_mm, results[2].matrix_mm, atol=1e-6)


def test_cli_initial_transform(pair, tmp_path):
    out = tmp_path / "out"
    code = main(["register", pair["fixed"], pair["moving"], "--initial-transform", ants_mat(tmp_path / "init.mat", 60.0),
                 "-o", str(out), "--id", "pair", "--preset", "rigid", "--set", "iterations_scale=0.5",
                 "--outputs", "warped,ddf"])
    assert code == 0
    ddf = LoadImage(image_only=True, ensure_channel_first=True)(str(out / "pair" / "ddf.nii.gz"))[..., 0]
    # the centre stays (a rotation about it); a corner moves as the true rotation takes it
    truth = rotation_about_centre(ANGLE)
    corner_lps = np.zeros(2)
    expected = -(truth[:2, :2] @ corner_lps + truth[:2, 2])  # moving voxel of fixed voxel (0, 0)
    assert np.abs(np.asarray(ddf[:, 0, 0]) - expected).max() < 0.5


def test_bad_initial_transforms_are_named(pair, tmp_path):
    import itk

    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match="'initial_transform' .*notes.h5' is not a transform file ITK can read"):
        register(pair["fixed"], pair["moving"], "rigid", initial_transform=str(text))
    with pytest.raises(FileNotFoundError, match="'initial_transform' .*absent.mat' does not exist"):
        register(pair["fixed"], pair["moving"], "rigid", initial_transform=str(tmp_path / "absent.mat"))
    euler3d = itk.Euler3DTransform[itk.D].New()
    itk.transformwrite([euler3d], str(tmp_path / "3d.tfm"))
    with pytest.raises(ValueError, match="is a 3D transform, the images are 2D"):
        register(pair["fixed"], pair["moving"], "rigid", initial_transform=str(tmp_path / "3d.tfm"))
    field = itk.Image[itk.Vector[itk.D, 2], 2].New()
    field.SetRegions([8, 8])
    field.Allocate()
    itk.array_view_from_image(field)[...] = 1.0
    displacement = itk.DisplacementFieldTransform[itk.D, 2].New()
    displacement.SetDisplacementField(field)
    itk.transformwrite([displacement], str(tmp_path / "field.h5"))
    with pytest.raises(ValueError, match="non-linear transform.*only rigid or affine"):
        register(pair["fixed"], pair["moving"], "rigid", initial_transform=str(tmp_path / "field.h5"))
    with pytest.raises(ValueError, match=r"'initial_transform' must be a \(3, 3\) homogeneous matrix"):
        register(pair["fixed"], pair["moving"], "rigid", initial_transform=np.eye(4))
