"""The bounded discrete displacement search of the functional core."""

import pytest
import torch

from monai_inr_reg.core.discrete import box_smooth, coupled_displacements, displacement_costs, shift_table


def features(shape, seed=0, channels=3):
    """Random smooth-ish features ``(C, *shape)``: distinct at every voxel, so one shift matches best."""
    generator = torch.Generator().manual_seed(seed)
    return box_smooth(torch.rand((channels,) + tuple(shape), generator=generator))


def shifted_pair(shape, shift, margin=4):
    """``(fixed, moving)`` features with ``moving(x + shift) = fixed(x)``, cut from one larger image."""
    big = features(tuple(n + 2 * margin for n in shape))
    fixed = big[(slice(None),) + tuple(slice(margin, margin + n) for n in shape)]
    moving = big[(slice(None),) + tuple(slice(margin - s, margin - s + n) for n, s in zip(shape, shift))]
    return fixed, moving


@pytest.mark.parametrize("shape, shift", [((40, 48), (2, -3)), ((24, 28, 24), (1, -2, 2))], ids=["2d", "3d"])
def test_a_shift_is_found_in_every_cell(shape, shift):
    """Every cell whose shifted window stays inside the grid finds ``shift`` as its cheapest (cost 0),
    and the coupled field is ``shift`` away from the border cells."""
    fixed, moving = shifted_pair(shape, shift)
    radius, cell = 3, 4
    costs = displacement_costs(fixed, moving, radius, cell)
    cells = tuple(-(-n // cell) for n in shape)
    table = shift_table(len(shape), radius)
    assert costs.shape == (table.shape[0],) + cells
    best = table[costs.argmin(0)]  # (*cells, D)
    interior = tuple(slice(1, -1) for _ in shape)
    assert torch.equal(best[interior], torch.tensor(shift, dtype=torch.float32).expand_as(best[interior]))
    field = coupled_displacements(costs, radius)
    assert field.shape == (len(shape),) + cells
    inner = (slice(None),) + tuple(slice(2, -2) for _ in shape)
    expected = torch.tensor(shift, dtype=torch.float32).reshape((-1,) + (1,) * len(shape))
    assert torch.allclose(field[inner], expected.expand_as(field[inner]), atol=1e-6)


def test_nothing_moves_farther_than_the_radius():
    """A shift beyond the radius is not found; every component of the field stays within it."""
    fixed, moving = shifted_pair((24, 24), (6, 0), margin=6)
    field = coupled_displacements(displacement_costs(fixed, moving, 2, 4), 2)
    assert float(field.abs().max()) <= 2.0


def test_coupling_smooths_a_noisy_field():
    """One cell whose costs favour a wild shift follows its neighbours once coupled."""
    fixed = features((32, 32))
    costs = displacement_costs(fixed, fixed, 2, 4)  # identity everywhere: cost 0 at shift (0, 0)
    table = shift_table(2, 2)
    wild = int(((table - torch.tensor([2.0, -2.0])).abs().sum(1) == 0).nonzero()[0, 0])
    costs[:, 3, 3] = 1e-4
    costs[wild, 3, 3] = 0.0  # the cell alone would jump by (2, -2): cheaper by a hair
    assert torch.equal(table[costs.argmin(0)][3, 3], torch.tensor([2.0, -2.0]))
    field = coupled_displacements(costs, 2)
    assert float(field.abs().max()) < 0.5


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        displacement_costs(torch.rand(2, 8, 8), torch.rand(2, 8, 9), 1, 2)
    with pytest.raises(ValueError, match="radius 2 gives 25 shifts"):
        coupled_displacements(torch.rand(9, 4, 4), 2)


def test_featureless_cells_stay_put():
    """Costs that tie everywhere (nothing to match) give no motion, not the table's first (corner) shift."""
    costs = torch.zeros(shift_table(3, 2).shape[0], 3, 4, 5)
    assert torch.equal(coupled_displacements(costs, 2), torch.zeros(3, 3, 4, 5))


def test_block_mean_covers_short_axes():
    """Blocks of 3 on axes of 7 and 2 voxels: ceil(7 / 3) = 3 blocks, the last one short; the 2-voxel axis
    is one block."""
    from monai_inr_reg.core.discrete import block_mean

    image = torch.arange(14.0).reshape(1, 7, 2)
    out = block_mean(image, 3)
    assert out.shape == (1, 3, 1)
    assert torch.allclose(out[0, :, 0], torch.tensor([image[0, :3].mean(), image[0, 3:6].mean(), image[0, 6:].mean()]))
