"""The sampled softmax SASRec and CL4SRec train with on large catalogues: each state's target against
uniformly drawn items, never against itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.backbones.sequence import sampled_softmax_loss


def test_it_is_the_cross_entropy_of_the_target_against_the_drawn_items():
    torch.manual_seed(0)
    states, table = torch.randn(5, 8), torch.randn(50, 8)
    targets = torch.tensor([0, 7, 7, 20, 49])
    torch.manual_seed(1)
    loss = sampled_softmax_loss(states, table, targets, 10)
    torch.manual_seed(1)
    drawn = torch.randint(0, 50, (10,))
    expected = []
    for state, target in zip(states, targets):
        others = [int(i) for i in drawn if int(i) != int(target)]
        logits = torch.stack([state @ table[target]] + [state @ table[i] for i in others])
        expected.append(F.cross_entropy(logits[None], torch.tensor([0])))
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-5)


def test_a_drawn_item_that_is_the_target_is_not_a_negative():
    states, table = torch.ones(1, 4), torch.ones(3, 4)
    # every item scores the same, so masking the target leaves one equal negative of each other item
    torch.manual_seed(0)
    loss = sampled_softmax_loss(states, table, torch.tensor([0]), 200)
    torch.manual_seed(0)
    others = int((torch.randint(0, 3, (200,)) != 0).sum())
    assert torch.isclose(loss, torch.log(torch.tensor(1.0 + others)), atol=1e-5)
