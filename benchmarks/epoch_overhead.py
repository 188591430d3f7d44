"""Where a training epoch's time goes outside the train steps: callbacks, validation, the iterator.

    python benchmarks/epoch_overhead.py 10 [config overrides...]

Trains configs/demo.yaml in float32 for the given number of epochs (default 10) with a timer
around every kclip training callback's epoch and batch hooks, and prints one JSON object: fit's
seconds, the train steps' seconds, fit's validation passes, each epoch's wall time, and the
seconds spent in each callback hook (over 0.01 s).
"""
import collections
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import kclip  # noqa: E402
import kclip.training.run as run  # noqa: E402

HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
         "on_test_begin", "on_test_end", "on_test_batch_end")
seconds_in_hook = collections.defaultdict(float)


def timed(callback):
    for hook_name in HOOKS:
        hook = getattr(callback, hook_name)

        def timed_hook(*args, hook=hook, key=f"{type(callback).__name__}.{hook_name}", **kwargs):
            started = time.perf_counter()
            result = hook(*args, **kwargs)
            seconds_in_hook[key] += time.perf_counter() - started
            return result

        setattr(callback, hook_name, timed_hook)
    return callback


class Stopwatch(keras.callbacks.Callback):
    """fit's total, the train steps', the validation passes' and each epoch's seconds."""

    def __init__(self):
        super().__init__()
        self.step_seconds, self.validation_seconds, self.steps, self.epoch_seconds = 0.0, 0.0, 0, []

    def on_train_begin(self, logs=None):
        self.fit_started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.step_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step_seconds += time.perf_counter() - self.step_started
        self.steps += 1

    def on_test_begin(self, logs=None):
        self.validation_started = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation_seconds += time.perf_counter() - self.validation_started

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self.epoch_started)

    def on_train_end(self, logs=None):
        self.fit_seconds = time.perf_counter() - self.fit_started


def main():
    epochs = sys.argv[1] if len(sys.argv) > 1 else "10"
    training_callbacks = run.training_callbacks
    run.training_callbacks = lambda *args, **kwargs: [timed(callback)
                                                      for callback in training_callbacks(*args, **kwargs)]
    stopwatch = Stopwatch()
    config = kclip.parse_config(["--config", "configs/demo.yaml", "--output_dir", tempfile.mkdtemp(),
                                 "--trainer.precision", "float32", "--trainer.max_epochs", epochs,
                                 "--trainer.max_train_minutes", "30", *sys.argv[2:]])
    kclip.train(config, callbacks=[stopwatch], verbose=0)
    print(json.dumps({
        "fit_s": round(stopwatch.fit_seconds, 2), "steps_s": round(stopwatch.step_seconds, 2),
        "n_steps": stopwatch.steps, "validation_s": round(stopwatch.validation_seconds, 2),
        "epoch_walls": [round(seconds, 2) for seconds in stopwatch.epoch_seconds],
        "callbacks": {key: round(value, 3) for key, value in sorted(seconds_in_hook.items(), key=lambda item: -item[1])
                      if value > 0.01},
    }, indent=1))


if __name__ == "__main__":
    main()
