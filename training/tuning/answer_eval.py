"""Score instruction examples with a local transformers model, through the same scoring functions the
service applies to vLLM's logprobs, and summarise per task:
  pointwise_mae        mean |E[rating] - true rating| (off-format answers count as the scale midpoint)
  pairwise_accuracy    share of pairs where P(Yes) > 0.5 matches the label
  listwise_hits_at_5   mean share of the relevant candidates among the 5 letters the model generates
Scoring runs in float32: bf16 rounds P(Yes) to a handful of values (measured, see shared notes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from service.llm.prompt_tokens import PromptEncoder
from service.ranking.scoring import expected_rating, parse_listwise, yes_probability
from service.ranking.tasks import TASKS
from training.tuning.tune import encode_example

TOP_LOGPROBS = 20


@dataclass
class AnswerReport:
    answer_loss: float
    pointwise_mae: float | None
    pairwise_accuracy: float | None
    listwise_hits_at_5: float | None
    invalid_answers: dict[str, int]
    counts: dict[str, int]


def _left_padded(seqs: list[list[int]], pad_id: int, device, fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in seqs)
    ids = torch.tensor([[pad_id if fill is None else fill] * (width - len(x)) + x for x in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs], device=device)
    return ids, mask


def _chat_inputs(tokenizer, rows: list[dict], device, token_block: int = 0) -> dict:
    """The prompts as serving sends them: chat template, then the block layout the model is tuned on."""
    encoder = PromptEncoder.from_hf_tokenizer(tokenizer, token_block)
    seqs = [encoder.encode(tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)) for r in rows]
    ids, mask = _left_padded(seqs, tokenizer.pad_token_id, device)
    return {"input_ids": ids, "attention_mask": mask}


def next_token_logprobs(model, tokenizer, rows: list[dict], token_block: int = 0) -> list[dict[str, float]]:
    inputs = _chat_inputs(tokenizer, rows, model.device, token_block)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1, :].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logprobs, TOP_LOGPROBS, dim=-1)
    return [
        {tokenizer.decode([int(t)]): float(v) for t, v in zip(idx, val)}
        for idx, val in zip(top.indices, top.values)
    ]


def generate_answers(model, tokenizer, rows: list[dict], max_new_tokens: int = 16, token_block: int = 0) -> list[str]:
    inputs = _chat_inputs(tokenizer, rows, model.device, token_block)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(seq[inputs["input_ids"].shape[1] :], skip_special_tokens=True) for seq in out]


def evaluate_answers(model, tokenizer, rows: list[dict], batch_size: int = 8, max_rating: int = 5, progress: bool = True, token_block: int = 0) -> AnswerReport:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    errors: dict[str, list[float]] = {t: [] for t in TASKS}
    invalid = dict.fromkeys(TASKS, 0)
    by_task = {t: [r for r in rows if r["task"] == t] for t in errors}
    bar = tqdm(total=len(rows), desc="score answers", disable=not progress, leave=False)
    for task, task_rows in by_task.items():
        for start in range(0, len(task_rows), batch_size):
            batch = task_rows[start : start + batch_size]
            if task == "listwise":
                for row, text in zip(batch, generate_answers(model, tokenizer, batch, token_block=token_block)):
                    relevant = set(row["label"]["relevant_letters"])
                    parsed = parse_listwise(text, n_candidates=row["label"]["n_candidates"], top=5)
                    invalid["listwise"] += not parsed.well_formed
                    errors["listwise"].append(len(set(parsed.positions[:5]) & relevant) / len(relevant))
            else:
                for row, lp in zip(batch, next_token_logprobs(model, tokenizer, batch, token_block)):
                    if task == "pointwise":
                        score = expected_rating(lp, max_rating)
                        invalid["pointwise"] += not score.valid
                        value = score.value if score.valid else (1 + max_rating) / 2
                        errors["pointwise"].append(abs(value - row["label"]["rating"]))
                    else:
                        score = yes_probability(lp)
                        invalid["pairwise"] += not score.valid
                        errors["pairwise"].append(float((score.value > 0.5) == row["label"]["prefers_a"]))
            bar.update(len(batch))
    bar.close()
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return AnswerReport(
        answer_loss=answer_loss(model, tokenizer, rows, batch_size, token_block),
        pointwise_mae=mean(errors["pointwise"]),
        pairwise_accuracy=mean(errors["pairwise"]),
        listwise_hits_at_5=mean(errors["listwise"]),
        invalid_answers=invalid,
        counts={t: len(v) for t, v in by_task.items()},
    )


def reference_scores(valid_rows: list[dict], train_rows: list[dict]) -> dict:
    """What a model gets without reading anything but the hint (or the label distribution): the
    bar to clear for the LLM to add something of its own.
      pointwise_mae of the training labels' median rating; pairwise_accuracy and listwise_hits_at_5
      of simply following the backbone's hint in the prompt."""
    train_ratings = [r["label"]["rating"] for r in train_rows if r["task"] == "pointwise"]
    valid_ratings = [r["label"]["rating"] for r in valid_rows if r["task"] == "pointwise"]
    out: dict = {}
    if train_ratings and valid_ratings:
        out["pointwise_mae_of_median"] = float(np.mean(np.abs(np.array(valid_ratings) - np.median(train_ratings))))
    hint = hint_reliability(valid_rows)
    if hint["pairs"]:
        out["pairwise_accuracy_of_hint"] = hint["pairwise_accuracy"]
    if hint["lists"]:
        out["listwise_hits_at_5_of_hint"] = hint["listwise_hits_at_5"]
    return out


def hint_reliability(rows: list[dict]) -> dict:
    """How often following the prompt's hint alone answers right: pairwise accuracy of the hinted
    preference, and the share of relevant listwise candidates among the hint's top letters."""
    pairs = [r["label"] for r in rows if r["task"] == "pairwise" and "hint_prefers_a" in r["label"]]
    lists = [r["label"] for r in rows if r["task"] == "listwise" and "hint_top" in r["label"] and r["label"]["relevant_letters"]]
    return {
        "pairwise_accuracy": float(np.mean([p["hint_prefers_a"] == p["prefers_a"] for p in pairs])) if pairs else None,
        "listwise_hits_at_5": float(np.mean([len(set(x["hint_top"]) & set(x["relevant_letters"])) / len(x["relevant_letters"]) for x in lists])) if lists else None,
        "pairs": len(pairs),
        "lists": len(lists),
    }


def answer_loss(model, tokenizer, rows: list[dict], batch_size: int = 8, token_block: int = 0) -> float:
    """Mean negative log-likelihood of the answer tokens (the tuning loss, on held-out rows, encoded
    as tuning encodes them)."""
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        examples = [encode_example(tokenizer, r, 10**6, token_block) for r in rows[start : start + batch_size]]
        ids, mask = _left_padded([e["input_ids"] for e in examples], tokenizer.pad_token_id, model.device)
        labels, _ = _left_padded([e["labels"] for e in examples], tokenizer.pad_token_id, model.device, fill=-100)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:]
        keep = target != -100
        nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total / max(count, 1)
