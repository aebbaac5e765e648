"""The similarity features of the functional core."""

import pytest
import torch


def test_mind_ssc_channels_and_invariance():
    """MIND-SSC: 12 channels in 3D (pairs of the 6 axis neighbours sqrt(2) * dilation apart), 4 in 2D;
    the same features under any affine intensity map (an inverted contrast included); features of a
    shifted image are the shifted features (away from the border); values in (0, 1]."""
    from monai_inr_reg.core.losses import mind_ssc

    generator = torch.Generator().manual_seed(0)
    image3 = torch.rand(1, 20, 18, 16, generator=generator)
    features = mind_ssc(image3)
    assert features.shape == (12, 20, 18, 16) and float(features.min()) > 0 and float(features.max()) <= 1
    assert torch.allclose(mind_ssc(3.0 - 2.0 * image3), features, atol=1e-5)
    image2 = torch.rand(1, 40, 36, generator=generator)
    assert mind_ssc(image2).shape == (4, 40, 36)
    moved = torch.roll(image2, shifts=(3, -2), dims=(1, 2))
    inner = (slice(None), slice(10, -10), slice(10, -10))
    assert torch.allclose(mind_ssc(moved)[inner], torch.roll(mind_ssc(image2), shifts=(3, -2), dims=(1, 2))[inner],
                          atol=1e-5)
    # a structure descriptor: it changes where the image's structure does
    assert float((mind_ssc(image2) - mind_ssc(torch.rand(1, 40, 36, generator=generator))).abs().mean()) > 0.05


def test_normalised_patches_give_the_windowed_correlation():
    """The dot product of two rows of ``normalised_patches`` is the Pearson correlation of the two
    voxels' windows (checked against numpy); an increasing affine intensity map leaves the rows as
    they are, a decreasing one negates them; windows follow ``window_offsets`` (C order)."""
    import numpy as np

    from monai_inr_reg.core.losses import normalised_patches, window_offsets

    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 12, 10, 8, generator=generator, dtype=torch.float64), torch.rand(1, 12, 10, 8, generator=generator, dtype=torch.float64)
    rows_a, rows_b = normalised_patches(a, 1), normalised_patches(b, 1)
    assert rows_a.shape == (12 * 10 * 8, 27) and window_offsets(3, 1).shape == (27, 3)
    voxel = (5, 4, 3)
    index = (voxel[0] * 10 + voxel[1]) * 8 + voxel[2]
    window = tuple(slice(v - 1, v + 2) for v in voxel)
    expected = np.corrcoef(a[0][window].reshape(-1).numpy(), b[0][window].reshape(-1).numpy())[0, 1]
    assert float(rows_a[index] @ rows_b[index]) == pytest.approx(expected, abs=1e-9)
    centred = a[0][window].reshape(-1) - a[0][window].mean()
    assert torch.allclose(rows_a[index], centred / centred.norm(), atol=1e-12)  # C-order window
    assert torch.allclose(normalised_patches(2.0 * a + 5.0, 1), rows_a, atol=1e-9)
    assert torch.allclose(normalised_patches(1.0 - a, 1), -rows_a, atol=1e-9)
