"""The tuning loss on the answer tokens only, without projecting the prompt onto the vocabulary.

The default causal-LM loss turns every position into 49,152 vocabulary logits (and their
log-softmax and gradient: 8 x 300 x 49k floats each per step) and then ignores all but the few
answer positions, whose labels are the only ones not -100. On a CPU that projection is a large
share of a step. Asking the model for the logits of the answer positions alone (`logits_to_keep`
with their indices) gives the same loss and the same gradients for less work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer


def answer_loss_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the answer tokens, their count): position t predicts token t + 1,
    so the positions kept are those whose next label is not -100, the union over the batch's rows."""
    next_labels = labels[:, 1:]
    positions = (next_labels != -100).any(dim=0).nonzero().squeeze(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits
    targets = next_labels[:, positions]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


class AnswerOnlyTrainer(Trainer):
    """transformers' Trainer with `answer_loss_sum`, normalised as the default loss is: over the
    answer tokens of the whole accumulated batch when the Trainer counts them, else of this batch."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise NotImplementedError("the answer-only loss computes no full outputs")
        total, count = answer_loss_sum(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is not None:
            return total / num_items_in_batch
        return total / max(count, 1)
