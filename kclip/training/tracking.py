"""The callbacks of a training run: recall, checkpoints, schedules, crash recovery, CSV and W&B.

W&B is optional (`--trainer.logger none` writes no wandb files at all). When it is on, a run goes
online only if the user is logged in, and otherwise offline, with one line saying how to sync it;
the online start has a short timeout and falls back to offline, so nothing waits on the network.
"""

import math
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import keras

from kclip.training.callbacks import (
    BestModelExport,
    EvaluationEarlyStopping,
    EvaluationReduceLROnPlateau,
    LearningRateLogger,
    RecallCallback,
    RestoreOnlyBackup,
    ResumeReport,
    TimeBudget,
    WarmupCosineSchedule,
)

MONITOR = "val_rsum"
ONLINE_INIT_TIMEOUT_S = 20


def wandb_mode():
    """'online' when logged in, else 'offline', so that no run waits on the network.

    An explicit WANDB_MODE in the environment wins.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import wandb

        if wandb.api.api_key:
            return "online"
    except Exception:  # no netrc, unreadable settings: treat as logged out
        pass
    return "offline"


def git_state(path=None):
    """{'commit': sha, 'dirty': bool} of the git checkout holding kclip, or {} outside one."""
    path = Path(path or Path(__file__).resolve().parent)
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()

        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def start_wandb_run(config, output_dir):
    """Starts (or, offline, records locally) the W&B run for `config`; returns it."""
    import wandb

    mode = wandb_mode()
    values = asdict(config)
    git = git_state()
    if git:
        values["git"] = git
    arguments = dict(
        project=config.trainer.wandb_project,
        config=values,
        dir=os.environ.get("WANDB_DIR") or str(output_dir),
        job_type="train",
    )
    if mode == "online":
        try:
            run = wandb.init(mode="online", settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S), **arguments)
        except Exception as error:  # no network, server down: keep training, sync later
            print(f"W&B could not go online ({type(error).__name__}: {error}); logging offline instead.")
            mode = "offline"
    if mode != "online":
        run = wandb.init(mode=mode, **arguments)
    if mode == "offline":
        run_folder = os.path.dirname(run.dir)
        print(f"W&B is offline (not logged in): the run is in {run_folder}; "
              f"upload it later with `wandb sync {run_folder}`.", flush=True)
    if git:
        run.summary["git_commit"] = git["commit"]
    return run


def schedule_callbacks(config, time_budget=None):
    trainer = config.trainer
    if trainer.lr_schedule == "plateau":
        return [EvaluationReduceLROnPlateau(monitor=MONITOR, mode="max", factor=trainer.plateau_factor,
                                            patience=trainer.plateau_patience, verbose=1)]
    if trainer.lr_schedule == "cosine":
        return [WarmupCosineSchedule(config.model.head_lr, trainer.warmup_epochs, trainer.max_epochs,
                                     time_budget=time_budget)]
    return []


def training_callbacks(config, output_dir, validation_images=()):
    """The callbacks of `train`, in the order they must run at each epoch's end.

    Recall first (it adds the keys the others watch), then the schedules, the best-model export,
    the backup (after the schedules, so a resumed run has the new learning rate), the CSV log and
    W&B last. Monitoring callbacks need validation images; without them they are left out.

    Under torch data parallel only rank 0 writes (best model, backup, CSV, W&B); every rank
    evaluates, so that the schedules and early stopping decide alike on all of them.
    """
    from kclip.backends.torch import distributed

    output_dir = Path(output_dir)
    trainer = config.trainer
    primary = distributed.is_primary()
    callbacks, recall = [], None
    # First, so that a batch that ends the budget stops the epoch before anything else runs.
    time_budget = TimeBudget(trainer.max_train_minutes) if trainer.max_train_minutes else None
    if time_budget is not None:
        callbacks.append(time_budget)
    if validation_images:
        recall = RecallCallback(validation_images, every_n_epochs=trainer.eval_every_n_epochs,
                                batch_size=config.data.val_batch_size)
        callbacks.append(recall)
    callbacks.append(LearningRateLogger())
    if recall is not None or trainer.lr_schedule == "cosine":
        callbacks += schedule_callbacks(config, time_budget)
    if recall is not None:
        if primary:
            callbacks.append(BestModelExport(output_dir / "best.keras", monitor=MONITOR, mode="max"))
        if trainer.early_stopping_patience is not None:
            callbacks.append(EvaluationEarlyStopping(monitor=MONITOR, mode="max",
                                                     patience=trainer.early_stopping_patience, verbose=1))
    backup = keras.callbacks.BackupAndRestore if primary else RestoreOnlyBackup
    callbacks.append(backup(str(output_dir / "backup"), double_checkpoint=True))
    if primary:
        callbacks += [ResumeReport(), keras.callbacks.CSVLogger(str(output_dir / "history.csv"), append=True)]
    if trainer.terminate_on_nan:
        callbacks.append(keras.callbacks.TerminateOnNaN())
    if trainer.logger == "wandb" and primary:
        callbacks += wandb_callbacks(config, output_dir, recall)
    return callbacks


def wandb_callbacks(config, output_dir, recall):
    from kclip.utils.optional import require_tensorflow

    # W&B's Keras callbacks import TensorFlow (tf.keras); without it, say what to do instead.
    require_tensorflow("W&B's Keras callbacks (trainer.logger: wandb)")
    from wandb.integration.keras import WandbMetricsLogger, WandbModelCheckpoint

    from kclip.training.wandb_tables import RetrievalTableCallback

    if wandb_mode() == "disabled":
        return []
    start_wandb_run(config, output_dir)
    callbacks = []
    if recall is not None:
        callbacks.append(RetrievalTableCallback(
            recall,
            max_sentences=config.log_prediction_callback.max_sentences,
            max_matches=config.log_prediction_callback.max_matches,
        ))
    callbacks.append(WandbMetricsLogger(log_freq=config.trainer.log_every_n_steps or "epoch"))
    if config.trainer.checkpoint_model_to_wandb:
        callbacks.append(WandbModelCheckpoint(str(output_dir / "wandb_checkpoint.keras")))
    return callbacks


def finish_tracking(test_metrics=None, grid_path=None, exit_code=0):
    """Puts test metrics and the grid on the W&B run (if one is active) and closes it."""
    try:
        import wandb
    except ImportError:
        return
    run = wandb.run
    if run is None:
        return
    if test_metrics:
        run.summary.update({f"test/{key}": value for key, value in test_metrics.items()
                            if isinstance(value, (int, float)) and math.isfinite(value)})
    if grid_path is not None and Path(grid_path).exists():
        run.log({"test/retrieval_grid": wandb.Image(str(grid_path))})
    run.finish(exit_code=exit_code)
