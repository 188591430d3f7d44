"""trainer.max_train_minutes: a slow machine stops on time, with the cosine rate at zero."""

import math

import keras
import numpy as np
import pytest

from helpers import fixed_batch, tiny_model
from kclip.training import callbacks as kclip_callbacks
from kclip.training.callbacks import TimeBudget, WarmupCosineSchedule


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_time_budget_stops_fit_and_the_schedule_follows_the_clock(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(kclip_callbacks.time, "monotonic", clock)
    rates, seen = [], []

    class Tick(keras.callbacks.Callback):
        # Each batch takes 10 "seconds" of the fake clock; the budget is 60 s. The rate the
        # schedule set at this batch's start is read at its end, before the clock moves on.
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)
            rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
            clock.now += 10.0

    budget = TimeBudget(minutes=1.0)
    schedule = WarmupCosineSchedule(peak=1e-3, warmup_epochs=0.0, total_epochs=50, time_budget=budget)
    keras.utils.set_random_seed(0)
    model = tiny_model()
    inputs, labels = fixed_batch(4)
    history = model.fit(inputs, labels, batch_size=2, epochs=50, verbose=0,
                        callbacks=[Tick(), budget, schedule])
    # 2 batches an epoch, 10 s each: the 6th batch reaches 60 s, in epoch 3 of 50.
    assert len(seen) == 6
    assert len(history.history["loss"]) == 3
    assert "Stopped by trainer.max_train_minutes (1 min) in epoch 3 of 50" in capsys.readouterr().out
    # By epochs alone the rate would barely move (0.5 of 50 epochs); on the clock, the
    # batch that starts at 50 of 60 s runs at the cosine's value for 5/6 of the way.
    assert rates[0] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25 / 50)), rel=1e-6)
    assert rates[5] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 50 / 60)), rel=1e-4)
    assert np.all(np.diff(rates) < 0)


def test_time_budget_rejects_a_non_positive_budget():
    with pytest.raises(ValueError, match="max_train_minutes"):
        TimeBudget(0)
