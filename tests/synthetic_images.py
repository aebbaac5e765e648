"""Small synthetic images with known motion for the tests (import as ``synthetic_images``)."""

from __future__ import annotations

import math

import torch


def shifted(image: torch.Tensor, shift_voxel) -> torch.Tensor:
    """``moving`` with ``moving(p + shift) = image(p)``: the fixed -> moving DDF is ``+shift`` everywhere."""
    from monai_inr_reg.core.sample import warp_image

    ddf = torch.tensor(shift_voxel, dtype=torch.float32).reshape((-1,) + (1,) * (image.ndim - 1))
    return warp_image(image, -ddf.expand((image.ndim - 1,) + tuple(image.shape[1:])).contiguous())


def phantom(shape, *, seed: int = 0, blobs: int = 12) -> torch.Tensor:
    """A smooth random phantom ``(1, *shape)`` in [0, 1]: Gaussian blobs of random size inside an ellipse."""
    g = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    axes = [torch.linspace(-1, 1, s) for s in shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    image = torch.zeros(shape)
    for _ in range(blobs):
        center = (torch.rand(ndim, generator=g) - 0.5) * 1.2
        width = 0.08 + 0.2 * torch.rand(1, generator=g)
        amp = 0.4 + 0.6 * torch.rand(1, generator=g)
        r2 = ((coords - center.reshape((ndim,) + (1,) * ndim)) ** 2).sum(0)
        image += amp * torch.exp(-r2 / (2 * width**2))
    body = (coords**2 / 0.8**2).sum(0) < 1.0
    image = image * body + 0.3 * body
    return (image / image.max())[None]


def smooth_field(shape, amplitude_voxel: float, *, seed: int = 0, waves: int = 2) -> torch.Tensor:
    """A smooth, invertible displacement ``(D, *shape)`` in voxels: a few low-frequency sines."""
    g = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    axes = [torch.linspace(0, 1, s) for s in shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    field = torch.zeros((ndim,) + tuple(shape))
    for d in range(ndim):
        for _ in range(waves):
            freq = 0.5 + torch.rand(ndim, generator=g)
            phase = 2 * math.pi * torch.rand(1, generator=g)
            field[d] += torch.sin(2 * math.pi * (freq.reshape((ndim,) + (1,) * ndim) * coords).sum(0) + phase)
    return field * (amplitude_voxel / waves)


def gaussian_blobs(shape, shift=None, *, seed: int = 7, blobs: int = 6, width=(0.08, 0.16)) -> "np.ndarray":
    """Float32 numpy array ``shape`` in [0, 1]: Gaussian blobs around the centre, all moved by ``shift``
    voxels (array order; default none). A pattern with no symmetry, for shifts recovered exactly."""
    import numpy as np

    shift = (0.0,) * len(shape) if shift is None else shift
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    rng = np.random.default_rng(seed)
    out = np.zeros(shape)
    for _ in range(blobs):
        centre = [rng.uniform(0.25, 0.75) * s for s in shape]
        sigma = rng.uniform(*width) * min(shape)
        weight = rng.uniform(0.3, 1.0)
        out += weight * np.exp(-sum((g - c - d) ** 2 for g, c, d in zip(grids, centre, shift)) / (2 * sigma ** 2))
    return (out / out.max()).astype(np.float32)
