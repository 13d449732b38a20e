"""Epoch checkpoints: an interrupted training resumes after its last saved epoch and ends exactly where
an uninterrupted one does; a checkpoint never resumes into another training."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_dataset
from training.backbones import REGISTRY, get_backbone
from training.data.fingerprint import split_fingerprint
from training.data.split import leave_one_out

ITERATIVE = sorted(set(REGISTRY) - {"pop"})


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def split():
    return leave_one_out(synthetic_dataset())


def make(name, split, **overrides):
    cls = get_backbone(name)
    return cls(split.n_users, split.n_items, cls.Config(epochs=4, batch_size=64, eval_every=1, patience=10, **overrides))


def interrupt_at(model, epoch):
    """Make `model.train_epoch` raise when it starts epoch `epoch` (as a killed process would stop)."""
    real, calls = model.train_epoch, []

    def train_epoch(split, rng):
        calls.append(1)
        if len(calls) == epoch:
            raise Interrupted
        return real(split, rng)

    model.train_epoch = train_epoch


def scores(model, split):
    users = np.arange(split.n_users)
    return model.score(users, [split.history(u, "test") for u in users])


@pytest.mark.parametrize("name", ITERATIVE)
def test_interrupted_training_resumes_after_the_last_epoch_and_ends_as_an_uninterrupted_one(name, split, tmp_path):
    whole = make(name, split)
    whole_log = whole.fit(split, progress=False)

    checkpoint = tmp_path / "ckpt.pt"
    first = make(name, split)
    interrupt_at(first, 3)
    with pytest.raises(Interrupted):
        first.fit(split, progress=False, checkpoint=checkpoint)
    assert checkpoint.is_file()

    second = make(name, split)
    epochs_started = []
    real = second.train_epoch
    second.train_epoch = lambda s, rng: (epochs_started.append(1), real(s, rng))[1]
    log = second.fit(split, progress=False, checkpoint=checkpoint)

    assert log.resumed_at == [2]
    assert len(epochs_started) == 2  # epochs 3 and 4 only
    assert log.epochs_run == whole_log.epochs_run == 4
    assert log.best_epoch == whole_log.best_epoch
    assert [h["valid_NDCG@10"] for h in log.history] == [h["valid_NDCG@10"] for h in whole_log.history]
    assert len(log.epoch_seconds) == 4
    np.testing.assert_allclose(scores(second, split), scores(whole, split), rtol=1e-5, atol=1e-6)


def test_a_finished_training_left_in_its_checkpoint_is_not_trained_again(split, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    make("mf", split).fit(split, progress=False, checkpoint=checkpoint)
    again = make("mf", split)
    again.train_epoch = lambda s, rng: pytest.fail("trained again")
    log = again.fit(split, progress=False, checkpoint=checkpoint)
    assert log.epochs_run == 4 and log.resumed_at == [4]


def test_checkpoint_key_changes_with_the_settings_and_the_data(split):
    other = leave_one_out(synthetic_dataset(seed=1))
    key = make("mf", split).checkpoint_key(split_fingerprint(split))
    assert key == make("mf", split).checkpoint_key(split_fingerprint(split))
    assert key != make("mf", split, lr=0.5).checkpoint_key(split_fingerprint(split))
    assert key != make("mf", split).checkpoint_key(split_fingerprint(other))
    assert key != make("lightgcn", split).checkpoint_key(split_fingerprint(split))
