"""`make replay` on the tiny run: users sent through a real gateway process on their test-time
state get exactly the order `make eval`'s computation gives them offline."""

from __future__ import annotations

import dataclasses
import json
import shutil

from service.ranking.policy import ServingPolicy
from tests.conftest import CACHE
from training.evaluation.replay import ReplayRequest, run_replay
from training.paths import Paths


def test_replayed_answers_are_the_offline_orders_of_the_policys_method(tiny_export, tiny_artifacts, tmp_path):
    folder = tmp_path / "policy"
    shutil.copytree(tiny_export / "policy" / "pop", folder)
    policy = dataclasses.replace(ServingPolicy.load(folder), method="rank_mean_no_llm")  # reads pop's and MF's scores: not the list's order
    policy.save(folder)
    assert policy.feature_backbones == ("mf", "pop")
    out = run_replay(ReplayRequest(backbone="pop", runs=("policy",), users=60, reports_dir=tmp_path, policy_dir=folder), Paths(cache=CACHE, artifacts=tiny_artifacts))
    [run] = json.loads(out.read_text())
    assert run["method"] == "rank_mean_no_llm" and run["users"] == 60 and run["degraded_answers"] == 0
    assert run["same_order_share"] == 1.0 and run["max_abs_ndcg_diff"] == 0.0
    assert run["served"] == run["offline"]
    assert run["changed_order_share"] > 0  # the method moved candidates, so the match is not the list's order twice
