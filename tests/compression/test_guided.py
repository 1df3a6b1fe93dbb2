import math

import pytest
import torch

from donut_hole.compression.guided import attention_loss, glyph_loss


def test_attention_loss_known_values():
    grid = (4, 4)
    exact = torch.zeros(1, 2, 16)
    exact[0, 0, 5] = 1.0  # all the mass on the target cell
    exact[0, 1, 0] = 1.0  # an unlocated token: ignored
    cells = torch.tensor([[5, -1]])
    assert float(attention_loss(exact, cells, grid=grid)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((1, 1, 16), 1 / 16)
    # an inner cell's 3x3 block holds 9 of 16 cells; a corner's 2x2 block 4
    assert float(attention_loss(uniform, torch.tensor([[5]]), grid=grid)) == pytest.approx(-math.log(9 / 16))
    assert float(attention_loss(uniform, torch.tensor([[0]]), grid=grid)) == pytest.approx(-math.log(4 / 16))
    neighbour = torch.zeros(1, 1, 16)
    neighbour[0, 0, 6] = 1.0  # the next cell counts as on target
    assert float(attention_loss(neighbour, torch.tensor([[5]]), grid=grid)) == pytest.approx(0.0, abs=1e-6)


def test_glyph_loss_weighs_blank_cells_less():
    logits = torch.zeros(1, 2, 3)
    logits[0, 0, 2] = 10.0  # confident in class 2 for both cells
    logits[0, 1, 2] = 10.0
    right = glyph_loss(logits, torch.tensor([[2, 2]]), blank_id=0, blank_weight=0.1)
    wrong_blank = glyph_loss(logits, torch.tensor([[2, 0]]), blank_id=0, blank_weight=0.1)
    wrong_glyph = glyph_loss(logits, torch.tensor([[1, 2]]), blank_id=0, blank_weight=0.1)
    assert float(right) < 1e-3
    assert float(wrong_blank) < float(wrong_glyph)
