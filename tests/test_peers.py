"""The peers of the benchmark (ConvexAdam, FireANTs) run for real and their maps come back in our
convention: a known shift between images on different grids is recovered in LPS mm."""

import numpy as np
import pytest
import torch

from monai_inr_reg.bench import peers
from monai_inr_reg.bench.methods import run_method
from monai_inr_reg.core.grid import ImageGrid
from monai_inr_reg.core.sample import warp_image_mm

pytestmark = pytest.mark.filterwarnings("ignore")


def _blobs(shape, seed=0, n=14):
    rng = np.random.default_rng(seed)
    axes = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    image = np.zeros(shape, np.float32)
    for _ in range(n):
        centre, radius = rng.uniform(6, np.array(shape) - 6), rng.uniform(2.5, 5)
        image += rng.uniform(0.5, 1.0) * np.exp(-((axes - centre) ** 2).sum(-1) / (2 * radius * radius))
    return image


def _shifted_pair(ndim, shift_mm):
    """A fixed image on a grid with spacing 1.5 mm and a flipped axis, and the moving image on another
    grid (origin 4.5 mm away): the true map is x -> x + shift_mm (LPS mm)."""
    shape = (40, 36, 32)[:ndim]
    ras = np.eye(ndim + 1)
    ras[:ndim, :ndim] = np.diag([1.5] * ndim)
    ras[0, 0] = -1.5  # RAS -> LPS flips two axes; flip one back so the direction is not diagonal +/-1 only
    ras[:ndim, ndim] = [30.0, -20.0, 10.0][:ndim]
    fixed_grid = ImageGrid.from_ras_affine(shape, torch.as_tensor(ras))
    moving_ras = ras.copy()
    moving_ras[:ndim, ndim] += 4.5
    moving_grid = ImageGrid.from_ras_affine(shape, torch.as_tensor(moving_ras))
    fixed = _blobs(shape)
    shift = torch.tensor(shift_mm, dtype=torch.float64)
    moving = warp_image_mm(torch.as_tensor(fixed)[None], fixed_grid, moving_grid.mm_points(dtype=torch.float64) - shift,
                           shape)[0].numpy()
    return fixed, fixed_grid, moving, moving_grid, shift


def _median_inner(ddf_mm, margin=8):
    ndim = ddf_mm.shape[0]
    inner = ddf_mm[(slice(None),) + tuple(slice(margin, -margin) for _ in range(ndim))]
    return inner.reshape(ndim, -1).median(1).values


@pytest.mark.parametrize("ndim", [2, 3])
def test_convexadam_recovers_a_shift_between_grids(ndim):
    pytest.importorskip("convexAdam")
    fixed, fixed_grid, moving, moving_grid, shift = _shifted_pair(ndim, [3.0, -2.0, 1.5][:ndim])
    start = peers.start_matrix(fixed, fixed_grid, moving, moving_grid, "deformable")
    assert start[:-1, -1].sub(shift).abs().max() < 1.0  # the centres of mass: close, not exact
    ddf = peers.convexadam(fixed, fixed_grid, moving, moving_grid, start_mm=start)
    assert ddf.shape == (ndim,) + fixed_grid.shape and ddf.dtype == torch.float64
    error = _median_inner(ddf) - shift
    assert error.abs().max() < 0.5 * 1.5, error  # half a voxel


@pytest.mark.parametrize("ndim", [2, 3])
def test_fireants_recovers_a_shift_between_grids(ndim):
    pytest.importorskip("fireants")
    fixed, fixed_grid, moving, moving_grid, shift = _shifted_pair(ndim, [3.0, -2.0, 1.5][:ndim])
    out = run_method("fireants", fixed, fixed_grid, moving, moving_grid, multimodal=False)
    assert out.matrix_mm is None and out.ddf_mm.shape == (ndim,) + fixed_grid.shape
    error = _median_inner(out.ddf_mm) - shift
    assert error.abs().max() < 0.5 * 1.5, error


def test_fireants_multimodal_uses_mi_on_another_contrast():
    pytest.importorskip("fireants")
    fixed, fixed_grid, moving, moving_grid, shift = _shifted_pair(2, [3.0, -2.0])
    other = np.sin(np.pi * moving / moving.max())  # non-monotone contrast, dark background kept
    out = run_method("fireants", fixed, fixed_grid, other, moving_grid, multimodal=True)
    assert out.info["metric"] == "MI"
    error = _median_inner(out.ddf_mm) - shift
    assert error.abs().max() < 0.5 * 1.5, error
