"""The learning curve's verdict follows the stop rule: flat unless the largest size moved beyond its noise;
its rows come from an export's manifest as the tuning pipeline writes it, and its table and plot read them."""

from __future__ import annotations

import numpy as np

from training.evaluation.engine_runs import Record
from training.evaluation.learning_curve import SHUFFLED_ROW, markdown, plot, size_fields, task_rows, verdict
from training.evaluation.serving_policy import shuffled_utilities


def pipeline_manifest(examples: int, steps: int) -> dict:
    """The fields of an export's manifest the curve reads, in the shape `tune_export` and the serving-task validation write them."""
    diff = {"users": 942, "diff": 0.0109, "ci_low": 0.0011, "ci_high": 0.0197, "p_value": 0.028, "mde": 0.0139}
    return {
        "run_key": "b05f094af4a0", "machine": "2-core test CPU", "tune_seconds": 659.4,
        "instructions": {"train": {"examples": examples, "per_task": {"pointwise": 183, "pairwise": 344, "listwise": 136}, "users": 161,
                                   "tokens_per_example": {"pointwise": {"mean": 272.3, "max": 347}}}},
        "train_log": {"first_loss": 1.35, "last_loss": 0.31, "steps": steps, "seconds_per_step": 7.9},
        "serving_validation": {"backbone": "lightgcn", "m": 10, "users": 942, "users_asked": 180,
                               "NDCG@3": {"backbone": 0.0592, "pointwise": 0.0516, "pairwise": 0.0585, "listwise": 0.0656, "hybrid": 0.0701},
                               "hybrid_vs_backbone": diff},
    }


def rows(scale: float, gain_ci: tuple[float, float], hybrid_ci: tuple[float, float]) -> list[dict]:
    common = {"scale": scale, "examples": int(1265 * scale), "steps": int(159 * scale), "tune_minutes": 10.0, "machine": "m"}
    diff = {"diff": sum(gain_ci) / 2, "ci_low": gain_ci[0], "ci_high": gain_ci[1], "p_value": 0.5}
    return [
        common | {"task": "backbone", "valid_ndcg3": 0.060},
        common | {"task": "hybrid", "valid_ndcg3": 0.055, "hybrid_vs_backbone": {"diff": -0.005, "ci_low": hybrid_ci[0], "ci_high": hybrid_ci[1]}},
        common | {"task": "learned_no_llm", "valid_ndcg3": 0.070},
        common | {"task": "learned (with the task scores)", "valid_ndcg3": 0.069, "vs_learned_no_llm": diff},
    ]


def test_a_curve_whose_gains_stay_inside_the_noise_is_flat_and_keeps_the_tasks_out():
    report = {"dataset": "ml-100k", "machine": "m", "scales": [0.5, 1.0, 4.0],
              "rows": rows(0.5, (-0.01, 0.004), (-0.02, 0.0)) + rows(1.0, (-0.008, 0.003), (-0.02, 0.001)) + rows(4.0, (-0.004, 0.006), (-0.01, 0.004))}
    text = verdict(report)
    assert text.startswith("Flat from 1x to 4x") and "stay out of the default policy" in text


def test_a_gain_with_its_interval_above_zero_at_the_largest_size_is_not_flat():
    report = {"dataset": "ml-100k", "machine": "m", "scales": [1.0, 2.0],
              "rows": rows(1.0, (-0.008, 0.003), (-0.02, 0.001)) + rows(2.0, (0.002, 0.012), (-0.02, 0.001))}
    assert verdict(report).startswith("Not flat: at 2x the task scores add +0.0070")
    report["rows"] = rows(1.0, (-0.008, 0.003), (-0.02, 0.001)) + rows(2.0, (-0.01, 0.01), (0.001, 0.02))
    assert verdict(report) == "Not flat: the hybrid beats the backbone at 2x with the interval above 0."


def test_a_curve_without_a_size_above_1x_gives_no_verdict_and_the_table_has_a_row_per_size():
    report = {"dataset": "ml-100k", "machine": "m", "scales": [0.5, 1.0], "rows": rows(0.5, (-0.01, 0.0), (-0.02, 0.0)) + rows(1.0, (-0.01, 0.0), (-0.02, 0.0))}
    assert verdict(report) == "The curve has no size above 1x yet: no verdict."
    table = [line for line in markdown(report | {"verdict": ""}).splitlines() if line.startswith(("| 0.5x", "| 1x"))]
    assert table[0].startswith("| 0.5x | 632 | 79 |") and table[1].startswith("| 1x | 1265 | 159 |")


def test_rows_read_from_an_export_manifest_give_a_table_row_per_size_and_a_plot(tmp_path):
    report = {"dataset": "ml-100k", "machine": "m", "scales": [0.5, 1.0], "rows": [], "verdict": "", "recipe_seed": 2024}
    for scale, examples, steps in ((0.5, 663, 83), (1.0, 1265, 159)):
        common = size_fields(pipeline_manifest(examples, steps), scale, minutes=23.94, seed=2024)
        assert (common["examples"], common["steps"], common["instruction_users"], common["tune_minutes"], common["lora_minutes"]) == (examples, steps, 161, 23.9, 11.0)
        rows = task_rows(pipeline_manifest(examples, steps), common)
        assert [r["task"] for r in rows] == ["backbone", "pointwise", "pairwise", "listwise", "hybrid"]
        assert rows[-1]["hybrid_vs_backbone"]["ci_low"] == 0.0011
        learned = {"diff": 0.0031, "ci_low": -0.0049, "ci_high": 0.0110, "p_value": 0.4}
        control = {"diff": 0.0020, "ci_low": -0.0060, "ci_high": 0.0100, "p_value": 0.6}
        report["rows"] += rows + [common | {"task": "learned_no_llm", "valid_ndcg3": 0.0750}, common | {"task": SHUFFLED_ROW, "valid_ndcg3": 0.0761},
                                  common | {"task": "learned (with the task scores)", "valid_ndcg3": 0.0781, "vs_learned_no_llm": learned, "vs_shuffled": control}]
    table = [line for line in markdown(report).splitlines() if line.startswith(("| 0.5x", "| 1x"))]
    assert table == [f"| {size} | {n} | {steps} | 23.9 | 0.0592 | 0.0516 | 0.0585 | 0.0656 | 0.0701 | 0.0750 | 0.0761 | 0.0781 (+0.0031 [-0.0049, +0.0110]) | +0.0020 [-0.0060, +0.0100] |"
                     for size, n, steps in (("0.5x", 663, 83), ("1x", 1265, 159))]
    plot(report, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")


def test_a_replicate_at_another_seed_is_a_row_of_its_own_measures_the_noise_and_does_not_decide_the_verdict():
    def at(seed: int, scale: float, gain_ci: tuple[float, float], hybrid: float) -> list[dict]:
        out = [r | {"seed": seed} for r in rows(scale, gain_ci, (-0.02, 0.0))]
        out[1]["valid_ndcg3"] = hybrid
        return out

    report = {"dataset": "ml-100k", "machine": "m", "scales": [0.5, 1.0, 2.0], "recipe_seed": 2024,
              "rows": at(2025, 0.5, (0.001, 0.011), 0.058) + at(2024, 0.5, (-0.005, 0.011), 0.070) + at(2024, 1.0, (-0.007, 0.009), 0.058)
              + at(2024, 2.0, (-0.006, 0.010), 0.060) + at(2025, 2.0, (0.003, 0.013), 0.065)}
    report["verdict"] = verdict(report)
    assert report["verdict"].startswith("Flat from 1x to 2x")  # the seed-2025 gains above 0 are replicates, not the curve
    text = markdown(report)
    sizes = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| 0.5x") or line.startswith("| 1x") or line.startswith("| 2x")]
    assert sizes == ["| 0.5x", "| 0.5x (seed 2025)", "| 1x", "| 2x", "| 2x (seed 2025)"]
    assert "At 0.5x, 2 tuning runs of the same recipe (seeds 2024, 2025) differ in the hybrid's NDCG@3 by 0.0120 and in what the task scores add to the learned ranker by 0.0030" in text
    assert "At 2x, 2 tuning runs" in text and "At 1x" not in text


def test_a_gain_over_learned_no_llm_that_its_shuffled_control_matches_is_not_a_step_of_the_curve():
    report = {"dataset": "ml-100k", "machine": "m", "scales": [1.0, 2.0],
              "rows": rows(1.0, (-0.008, 0.003), (-0.02, 0.001)) + rows(2.0, (0.002, 0.012), (-0.02, 0.001))}
    report["rows"][-1]["vs_shuffled"] = {"diff": 0.001, "ci_low": -0.004, "ci_high": 0.006}
    assert verdict(report).startswith("Flat from 1x to 2x")
    report["rows"][-1]["vs_shuffled"] = {"diff": 0.006, "ci_low": 0.001, "ci_high": 0.011}
    assert verdict(report) == ("Not flat: at 2x the task scores add +0.0070 to the learned ranker with the interval above 0, "
                               "and +0.0060 over the same scores shuffled within each list, also above 0.")


def test_the_control_moves_each_users_task_scores_to_other_candidates_of_the_list_keeping_their_values():
    utilities = {"pointwise": [0.1, 0.2, 0.3, 0.4, 0.5], "pairwise": [1.0, 2.0, 3.0, 4.0, 5.0], "listwise": [5.0, 4.0, 3.0, 2.0, 1.0]}
    rec = Record(user=0, stage="valid", m=5, items=[10, 11, 12, 13, 14], target=12, utilities=utilities, invalid={}, dropped={}, seconds=0.0)
    shuffled = shuffled_utilities(rec, np.random.default_rng(3))
    assert sorted(shuffled["pointwise"]) == utilities["pointwise"] and list(shuffled["pointwise"]) != utilities["pointwise"]
    moved_to = np.argsort(np.argsort(shuffled["pointwise"]))  # where each candidate's pointwise score came from
    for task in ("pairwise", "listwise"):  # one permutation for all tasks: how they agree is kept
        assert np.array_equal(shuffled[task], np.asarray(utilities[task])[moved_to])
    unscored = Record(user=1, stage="valid", m=5, items=[1, 2, 3, 4, 5], target=3, utilities={}, invalid={}, dropped={}, seconds=0.0)
    assert shuffled_utilities(unscored, np.random.default_rng(3)) == {}
