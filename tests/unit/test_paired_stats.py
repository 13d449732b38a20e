"""Paired comparisons: intervals, p-values and the detectable effect behave as statistics should."""

from __future__ import annotations

import numpy as np
import pytest

from training.paired_stats import paired_comparison


def test_a_clear_gain_has_an_interval_above_zero_and_a_small_p_value():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 900)
    out = paired_comparison(b + 0.05 + rng.normal(0, 0.05, 900), b)
    assert out["ci_low"] > 0 and out["p_value"] < 1e-6
    assert out["ci_low"] <= out["diff"] <= out["ci_high"]


def test_noise_alone_keeps_zero_inside_the_interval_most_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(40):
        b = rng.uniform(0, 1, 300)
        out = paired_comparison(b + rng.normal(0, 0.2, 300), b, n_boot=500, seed=trial)
        covered += out["ci_low"] <= 0 <= out["ci_high"]
    assert covered >= 34  # ~95% nominal coverage


def test_the_detectable_effect_shrinks_with_the_square_root_of_the_users():
    rng = np.random.default_rng(2)
    small = paired_comparison(rng.normal(0, 1, 200), np.zeros(200))
    large = paired_comparison(rng.normal(0, 1, 3200), np.zeros(3200))
    assert large["mde"] == pytest.approx(small["mde"] / 4, rel=0.15)
    assert small["mde"] == pytest.approx(2.8 / np.sqrt(200), rel=0.15)


def test_identical_rankers_differ_by_nothing():
    x = np.array([0.0, 0.5, 1.0])
    out = paired_comparison(x, x)
    assert out["diff"] == 0 and out["p_value"] == 1.0 and out["mde"] == 0


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="same users"):
        paired_comparison(np.zeros(3), np.zeros(4))
