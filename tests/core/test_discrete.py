"""The bounded discrete displacement search of the functional core."""

import pytest
import torch

from monai_inr_reg.core.discrete import box_smooth, coupled_displacements, displacement_costs, shift_table, weighted_smooth


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


def test_weights_restrict_a_cells_cost_to_its_weighted_voxels():
    """With weights (a fixed mask), a cell's cost is the weighted mean of its voxels' costs: all
    ones give the unweighted costs, a half-covered cell the mean over its inside half, an empty cell 0."""
    fixed, moving = features((8, 8), seed=1), features((8, 8), seed=2)
    plain = displacement_costs(fixed, moving, 1, 4)
    assert torch.allclose(displacement_costs(fixed, moving, 1, 4, weight=torch.ones(1, 8, 8)), plain)
    weight = torch.zeros(1, 8, 8)
    weight[0, :4, :2] = 1.0  # cell (0, 0): its left half; the other cells: nothing
    costs = displacement_costs(fixed, moving, 1, 4, weight=weight)
    padded = torch.nn.functional.pad(moving[None], [1, 1, 1, 1], mode="replicate")[0]
    for k, (dy, dx) in enumerate(shift_table(2, 1).int().tolist()):
        window = padded[:, 1 + dy:5 + dy, 1 + dx:5 + dx]
        expected = (fixed[:, :4, :4] - window).pow(2).mean(0)[:, :2].mean()
        assert torch.allclose(costs[k, 0, 0], expected, atol=1e-6)
    assert torch.equal(costs[:, 1:, :], torch.zeros_like(costs[:, 1:, :])) and torch.equal(costs[:, 0, 1], torch.zeros(9))


def test_cells_of_no_weight_follow_their_neighbours_and_do_not_drag_them():
    """Cells outside the mask (weight 0, cost 0 under every shift) take the shift of the cells that see
    the images, also six cells away, and the cells at the mask's edge keep theirs. Unweighted, the
    empty cells sit at zero and pull the edge."""
    shift = (2.0, -1.0)
    fixed, moving = shifted_pair((48, 48), (2, -1))
    costs = displacement_costs(fixed, moving, 2, 4)
    costs[:, :, 6:] = 0.0  # the right half of the cells sees nothing
    weight = torch.ones(1, 12, 12)
    weight[:, :, 6:] = 0.0
    expected = torch.tensor(shift).reshape(2, 1, 1)
    weighted = coupled_displacements(costs, 2, weight=weight)
    assert torch.allclose(weighted[:, 2:-2, 2:], expected.expand(2, 8, 10), atol=1e-6)  # the edge and the empty half
    unweighted = coupled_displacements(costs, 2)
    assert torch.equal(unweighted[:, :, 9:], torch.zeros(2, 12, 3))
    assert float((unweighted[:, 2:-2, 5] - expected[:, :, 0]).abs().min()) > 0.3  # the edge is pulled


def test_weighted_smooth():
    """All ones: the box filter. Zero weight in the middle: the mean of the weighted neighbours. A hole
    wider than the filter fills in from its edge, ring by ring; no weight at all gives zeros."""
    field = features((10, 12), channels=2)
    assert torch.allclose(weighted_smooth(field, torch.ones(1, 10, 12)), box_smooth(field), atol=1e-6)
    weight = torch.ones(1, 10, 12)
    weight[0, 5, 6] = 0.0
    expected = (box_smooth(field)[:, 5, 6] * 9 - field[:, 5, 6]) / 8
    assert torch.allclose(weighted_smooth(field, weight)[:, 5, 6], expected, atol=1e-6)
    constant = torch.tensor([1.5, -2.0]).reshape(2, 1, 1).expand(2, 10, 12).clone()
    weight = torch.zeros(1, 10, 12)
    weight[0, :, :2] = 1.0
    assert torch.allclose(weighted_smooth(constant, weight), constant)  # ten columns away, the same
    assert torch.equal(weighted_smooth(constant, torch.zeros(1, 10, 12)), torch.zeros(2, 10, 12))


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        displacement_costs(torch.rand(2, 8, 8), torch.rand(2, 8, 9), 1, 2)
    with pytest.raises(ValueError, match=r"'weight' must have shape \(1, 8, 8\)"):
        displacement_costs(torch.rand(2, 8, 8), torch.rand(2, 8, 8), 1, 2, weight=torch.ones(8, 8))
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
