"""What a training epoch costs as the data grows: the graph backbones propagate the whole graph a
constant number of times per epoch (so an epoch costs in proportion to the likes, not their square),
and scoring reuses one propagation per set of weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import synthetic_dataset
from training.backbones import get_backbone
from training.backbones.base import early_stopping_cadence, scaled_batch
from training.data.split import leave_one_out


def test_batch_and_learning_rate_are_unchanged_up_to_the_step_cap():
    assert scaled_batch(53_491, 2048, 1e-2, 32) == (2048, 1e-2)  # ML-100K's LightGCN epoch: 27 steps
    assert scaled_batch(10**6, 2048, 1e-2, 0) == (2048, 1e-2)  # 0: no cap


def test_above_the_cap_the_batch_grows_with_the_data_and_the_rate_by_its_square_root():
    batch, lr = scaled_batch(563_000, 2048, 1e-2, 32)
    assert math.ceil(563_000 / batch) == 32
    assert lr == pytest.approx(1e-2 * math.sqrt(batch / 2048))


def propagations_in_one_epoch(name: str, n_users: int) -> tuple[int, int]:
    split = leave_one_out(synthetic_dataset(n_users=n_users, n_items=40))
    cls = get_backbone(name)
    model = cls(split.n_users, split.n_items, cls.Config(batch_size=32, max_steps_per_epoch=4))
    model.train_epoch(split, np.random.default_rng(0))
    likes = len(split.liked_pairs()[0])
    return model.propagations_, likes


@pytest.mark.parametrize("name", ["lightgcn", "sgl"])
def test_full_graph_propagations_per_epoch_stay_constant_as_the_likes_grow(name):
    small, small_likes = propagations_in_one_epoch(name, 60)
    large, large_likes = propagations_in_one_epoch(name, 240)
    assert large_likes >= 3.5 * small_likes
    assert small > 0 and large == small  # so an epoch's cost grows with the likes (each propagation), not their square
    per_step = 1 if name == "lightgcn" else 3  # SGL also propagates its two dropped-edge views
    assert large == 4 * per_step


def test_scoring_propagates_once_per_set_of_weights_and_never_serves_stale_tables():
    split = leave_one_out(synthetic_dataset())
    cls = get_backbone("lightgcn")
    model = cls(split.n_users, split.n_items, cls.Config(epochs=1, batch_size=64))
    model.fit(split, progress=False)
    before = model.propagations_
    users = np.arange(split.n_users)
    histories = [split.history(u, "test") for u in users]
    first = model.score(users, histories)
    model.evaluate(split, "test")
    assert model.propagations_ == before + 1
    with torch.no_grad():
        model.module.item.weight.mul_(2.0)  # any in-place change of the weights (an optimizer step, a load)
    assert not np.allclose(model.score(users, histories), first)
    assert model.propagations_ == before + 2


def test_early_stopping_cadence_holds_on_ml100k_sizes_and_shrinks_with_more_training_per_epoch():
    assert early_stopping_cadence(2, 10, 53_491, 60_000) == (2, 10)  # ML-100K: the settings as given
    assert early_stopping_cadence(2, 10, 563_000, 60_000) == (1, 2)  # ML-1M: every epoch, 2 checks
    every, patience = early_stopping_cadence(2, 10, 140_000, 60_000)
    assert every == 1 and patience == round(20 / (140_000 / 60_000))  # epochs waited shrink with the data
    assert early_stopping_cadence(2, 10, 563_000, 0) == (2, 10)  # 0: never rescale
