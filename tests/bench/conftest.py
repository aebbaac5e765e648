"""Fixtures for the benchmark harness tests: a smooth synthetic 2D pair and the shared data folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_inr_reg.bench.data import AlignedPair, default_data_dir
from monai_inr_reg.core.grid import ImageGrid


def smooth_image(shape, *, seed: int = 0, blobs: int = 10) -> np.ndarray:
    """Smooth Gaussian blobs under a smooth window (about 0 near the border), float32 ``shape``, in [0, 1]."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    image = np.zeros(shape)
    for _ in range(blobs):
        c = (rng.random(len(shape)) - 0.5) * 1.0
        w = 0.1 + 0.15 * rng.random()
        image += (0.4 + 0.6 * rng.random()) * np.exp(-sum((a - ci) ** 2 for a, ci in zip(axes, c)) / (2 * w * w))
    window = np.exp(-((sum(a ** 2 for a in axes) / 0.6 ** 2) ** 2))  # smooth: bilinear resampling stays exact-ish
    image = image * window
    return (image / image.max()).astype(np.float32)


@pytest.fixture
def pair_2d() -> AlignedPair:
    """A 96 x 80 single-modal pair on the identity-RAS grid (as 2D arrays without affine)."""
    img = smooth_image((96, 80))
    grid = ImageGrid.from_ras_affine(img.shape, None)
    mask = img > 0.05
    return AlignedPair("synthetic", img, img.copy(), mask, grid, False, ("A", "A"))


@pytest.fixture
def data_dir():
    path = default_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent")
    return path


torch.set_num_threads(1)
