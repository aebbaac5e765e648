"""The similarity features of the functional core."""

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
