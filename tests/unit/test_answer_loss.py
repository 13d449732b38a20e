"""The answer-only tuning loss is the default causal-LM loss, computed on fewer logits."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.tuning.answer_loss import answer_loss_sum


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg)


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # right padding on the last row
    labels = torch.full_like(ids, -100)
    labels[0, 10:12] = ids[0, 10:12]  # answers of different lengths at different places
    labels[1, 5:8] = ids[1, 5:8]
    labels[2, 8] = ids[2, 8]
    return ids, mask, labels


def test_the_answer_only_loss_and_its_gradients_equal_the_models_own_loss():
    ids, mask, labels = batch()
    reference = tiny_llama()
    expected = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    model = tiny_llama()
    total, count = answer_loss_sum(model, ids, mask, labels)
    (total / count).backward()
    assert count == 6
    torch.testing.assert_close(total / count, expected)
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_only_the_answer_positions_are_projected_onto_the_vocabulary():
    ids, mask, labels = batch()
    model = tiny_llama()
    seen = []
    model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    answer_loss_sum(model, ids, mask, labels)
    assert seen == [torch.Size([3, 6, 97])]  # positions 4-6, 7, 9-10: the union over the rows, not all 12
