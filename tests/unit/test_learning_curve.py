"""The learning curve's verdict follows the stop rule: flat unless the largest size moved beyond its noise."""

from __future__ import annotations

from training.evaluation.learning_curve import markdown, verdict


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
