"""Keras callbacks for a training run: validation recall, the best model, LR schedules, resume report.

Validation recall is computed every `every_n_epochs` epochs (and after the last one). On the
epochs in between the recall keys are still in the logs, as NaN, so that `history.csv` keeps the
same columns and `History` lists stay one entry per epoch; the callbacks here that watch a metric
skip NaN epochs, so patience is counted in evaluations.
"""

import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from kclip.evaluation.evaluate import embed_split, metrics_from_embeddings, tokenize_split
from kclip.backends.jax.distribution import undistributed
from kclip.utils.files import write_json

RECALL_KEYS = ("t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_r@1", "i2t_r@5", "i2t_r@10", "rsum")


def _current_value(logs, monitor):
    value = (logs or {}).get(monitor)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class RecallCallback(keras.callbacks.Callback):
    """Adds `val_t2i_r@k`, `val_i2t_r@k` and `val_rsum` (recalls as fractions) to the epoch logs.

    Keeps the last embeddings (`self.embeddings`, `self.evaluated_epoch`) so that other callbacks
    (the W&B retrieval table) can reuse them instead of embedding the split again.
    """

    def __init__(self, images, every_n_epochs=1, batch_size=64, prefix="val_", progress=None):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1; got {every_n_epochs}.")
        self.images = list(images)
        self.every_n_epochs = int(every_n_epochs)
        self.batch_size = batch_size
        self.prefix = prefix
        self.progress = progress
        self.embeddings = None
        self.evaluated_epoch = None
        self.metrics = None
        # The captions, tokenized at the first evaluation: the preprocessor does not train.
        self.tokenized = None

    def should_evaluate(self, epoch):
        last_epoch = (self.params or {}).get("epochs")
        return (epoch + 1) % self.every_n_epochs == 0 or (last_epoch is not None and epoch + 1 >= last_epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if not self.should_evaluate(epoch):
            logs.update({self.prefix + key: float("nan") for key in RECALL_KEYS})
            # `fit` validates on the same epochs (kclip.training.run.validation_epochs); NaN for its
            # validation loss and accuracies in between keeps the CSV's and W&B's columns aligned.
            for key in [key for key in logs if not key.startswith(self.prefix)]:
                logs.setdefault(self.prefix + key, float("nan"))
            return
        with undistributed():  # batches of any size; see kclip/backends/jax/distribution.py
            if self.tokenized is None:
                self.tokenized = tokenize_split(self.model, self.images, batch_size=self.batch_size)
            self.embeddings = embed_split(self.model, self.images, batch_size=self.batch_size, progress=self.progress,
                                          tokenized=self.tokenized)
        self.metrics = metrics_from_embeddings(self.images, self.embeddings)
        self.evaluated_epoch = epoch
        logs.update({self.prefix + key: self.metrics[key] for key in RECALL_KEYS})


class BestModelExport(keras.callbacks.Callback):
    """Exports the model (atomically, without optimizer state) when `monitor` improves.

    The best value is kept in a JSON file next to the model, so a resumed run only overwrites the
    model with a better one.
    """

    def __init__(self, path, monitor="val_rsum", mode="max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}.")
        self.path = Path(path)
        self.record_path = self.path.with_suffix(".json")
        self.monitor = monitor
        self.mode = mode
        self.best = None

    def on_train_begin(self, logs=None):
        if self.record_path.exists() and self.path.exists():
            try:
                record = json.loads(self.record_path.read_text())
                self.best = float(record[self.monitor])
            except (ValueError, KeyError, TypeError):
                self.best = None

    def _improves(self, value):
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = _current_value(logs, self.monitor)
        if value is None or not self._improves(value):
            return
        from kclip.training.export import export_model

        export_model(self.model, self.path)
        self.best = value
        write_json(self.record_path, {self.monitor: value, "epoch": epoch + 1})


class EvaluationEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that ignores epochs where the monitored value is missing or NaN."""

    def on_epoch_end(self, epoch, logs=None):
        if _current_value(logs, self.monitor) is not None:
            super().on_epoch_end(epoch, logs)


class EvaluationReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that ignores epochs where the monitored value is missing or NaN."""

    def on_epoch_end(self, epoch, logs=None):
        if _current_value(logs, self.monitor) is not None:
            super().on_epoch_end(epoch, logs)


def warmup_cosine(progress, peak, warmup, total):
    """Learning rate at `progress` epochs: linear warmup to `peak` over `warmup`, then cosine to 0."""
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    if total <= warmup:
        return peak
    fraction = min(1.0, (progress - warmup) / (total - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * fraction))


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `minutes` of wall-clock time have passed since `fit` began.

    A slow CPU then still finishes on time (after fewer epochs), and `fraction()` lets the
    cosine schedule run on the clock so the rate has reached zero when time runs out.
    The clock restarts when an interrupted run resumes.
    """

    def __init__(self, minutes):
        super().__init__()
        if minutes <= 0:
            raise ValueError(f"trainer.max_train_minutes must be positive, got {minutes}.")
        self.seconds = 60.0 * float(minutes)
        self.began = None
        self._elapsed = None
        self.stopped_at_epoch = None

    def on_train_begin(self, logs=None):
        self.began = time.monotonic()
        self._elapsed = None

    def fraction(self):
        if self.began is None:
            return 0.0
        elapsed = time.monotonic() - self.began if self._elapsed is None else self._elapsed
        return min(1.0, elapsed / self.seconds)

    def on_train_batch_begin(self, batch, logs=None):
        from kclip.backends.torch import distributed

        # Under torch data parallel every rank must step on the same learning rate and stop after the
        # same batch: all follow the slowest rank's clock, read once per batch.
        if distributed.active():
            self._elapsed = distributed.max_over_ranks(time.monotonic() - self.began)

    def on_train_batch_end(self, batch, logs=None):
        if self.fraction() >= 1.0 and not self.model.stop_training:
            self.model.stop_training = True
            self.stopped_at_epoch = self._epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_end(self, logs=None):
        if self.stopped_at_epoch is not None:
            print(f"Stopped by trainer.max_train_minutes ({self.seconds / 60:g} min) in epoch "
                  f"{self.stopped_at_epoch + 1} of {self.params.get('epochs')}.", flush=True)


class WarmupCosineSchedule(keras.callbacks.Callback):
    """Sets the optimizer's (heads') learning rate before every batch: warmup, then cosine decay.

    The rate is a function of the epoch counter and the batch, so a run restored by
    `BackupAndRestore` continues on the same curve. With `MultiRateAdamW` the towers' rates are
    multiples of this one and follow it in proportion.
    """

    def __init__(self, peak, warmup_epochs=1.0, total_epochs=None, time_budget=None):
        super().__init__()
        self.peak = float(peak)
        self.warmup_epochs = float(warmup_epochs)
        self.total_epochs = total_epochs
        # A `TimeBudget`: when the clock runs ahead of the epochs, the curve follows the clock.
        self.time_budget = time_budget
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps = (self.params or {}).get("steps") or 0
        total = self.total_epochs or (self.params or {}).get("epochs") or 1
        # The middle of the batch: neither the first nor the last batch trains at a zero rate.
        progress = self._epoch + ((batch + 0.5) / steps if steps else 0.5)
        if self.time_budget is not None:
            progress = max(progress, self.time_budget.fraction() * total)
        rate = warmup_cosine(progress, self.peak, self.warmup_epochs, total)
        self.model.optimizer.learning_rate.assign(rate)


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the (heads') learning rate in every epoch's logs, after any schedule has changed it."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(np.asarray(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


class RestoreOnlyBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` for the ranks other than 0 under data parallel: they resume from rank 0's
    backup like it, but never write or delete it."""

    def _save_model(self):
        pass

    def on_train_end(self, logs=None):
        pass


class ResumeReport(keras.callbacks.Callback):
    """Says so when `BackupAndRestore` (earlier in the callback list) resumed an interrupted run."""

    def on_train_begin(self, logs=None):
        epoch = getattr(self.model, "_initial_epoch", None) or 0
        if epoch:
            optimizer = self.model.optimizer
            step = int(keras.ops.convert_to_numpy(optimizer.iterations))
            rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            print(f"Resumed from the backup: epoch {epoch} done, optimizer step {step}, "
                  f"learning rate {rate:.3g}.", flush=True)
