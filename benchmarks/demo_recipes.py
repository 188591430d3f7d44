"""One demo recipe, trained and tested as the demo does it: prints (and appends) a JSON line.

    python benchmarks/demo_recipes.py --name baseline-fp32 --out benchmarks/results/demo-recipes-2026-11-29.jsonl \
        -- --trainer.precision float32 --trainer.max_epochs 20

Everything after `--` overrides configs/demo.yaml. The line holds test recall (the demo's
held-out split), training seconds (fit alone, evaluation excluded), the median step time,
epochs actually run (a `trainer.max_train_minutes` guard may stop early), the precision and
the CPU it ran on with its load average: on a shared machine timings are pessimistic,
recall is not.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import kclip  # noqa: E402
from harness import cpu_fields, emit  # noqa: E402


class Clock(keras.callbacks.Callback):
    """Step times and epochs run, outside the recall callback's evaluation."""

    def __init__(self):
        super().__init__()
        self.steps, self.epochs = [], 0

    def on_train_begin(self, logs=None):
        self.began = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(time.perf_counter() - self.started)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1

    def on_train_end(self, logs=None):
        self.fit_s = time.perf_counter() - self.began


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", help="append the JSON line to this file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    output_dir = tempfile.mkdtemp(prefix="kclip-recipe-")
    config = kclip.parse_config(["--config", args.config, "--output_dir", output_dir, *args.overrides])
    before = cpu_fields()
    clock = Clock()
    started = time.perf_counter()
    model, _, metrics = kclip.train(config, callbacks=[clock], verbose=0)
    total = time.perf_counter() - started
    after = cpu_fields()
    steps = clock.steps[5:] or clock.steps
    line = {
        "benchmark": "demo_recipe",
        "name": args.name,
        "overrides": args.overrides,
        # The model's own policy: train() restores the global one when it returns.
        "precision": model.dtype_policy.name,
        "image_size": config.model.image_size,
        "batch_size": config.data.train_batch_size,
        "max_epochs": config.trainer.max_epochs,
        "epochs_run": clock.epochs,
        "fit_s": round(clock.fit_s, 1),
        "train_and_test_s": round(total, 1),
        "median_step_s": round(statistics.median(steps), 4),
        "steps_run": len(clock.steps),
        "params": kclip.load_model(os.path.join(output_dir, "model.keras")).count_params(),
        "test": {key: round(float(value), 4) for key, value in metrics.items()},
        **{key: value for key, value in before.items() if key != "loadavg_1m"},
        "loadavg_1m_start": before["loadavg_1m"],
        "loadavg_1m_end": after["loadavg_1m"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    emit(line, args.out)


if __name__ == "__main__":
    main()
