"""Callbacks for a training run: crash recovery, a CSV log and Weights & Biases."""

import os
from dataclasses import asdict

import keras


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


def start_wandb_run(config, output_dir):
    import wandb

    mode = wandb_mode()
    run = wandb.init(
        project=config.trainer.wandb_project,
        config=asdict(config),
        dir=str(output_dir),
        mode=mode,
    )
    if mode == "offline":
        print(f"W&B is offline (not logged in): the run is in {run.dir}; "
              f"upload it later with `wandb sync {os.path.dirname(run.dir)}`.")
    return run


def training_callbacks(config, output_dir):
    """BackupAndRestore (resume after a crash), CSVLogger and, if enabled, W&B."""
    callbacks = [
        keras.callbacks.BackupAndRestore(str(output_dir / "backup")),
        keras.callbacks.CSVLogger(str(output_dir / "history.csv"), append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.trainer.logger == "wandb":
        from wandb.integration.keras import WandbMetricsLogger

        start_wandb_run(config, output_dir)
        callbacks.append(WandbMetricsLogger(log_freq="epoch"))
    return callbacks
