"""A training process killed mid-run resumes, when the same command is run again, where it stopped."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
STEPS = 2


def _epochs(history_csv):
    if not history_csv.exists():
        return []
    with open(history_csv) as handle:
        return [row for row in csv.DictReader(handle) if row.get("epoch")]


def test_killed_training_resumes_from_last_epoch(tmp_path):
    from kclip.training.callbacks import warmup_cosine

    config = tiny_config(tmp_path / "run", tmp_path / "data", max_epochs=EPOCHS, steps_per_epoch=STEPS,
                         lr_schedule="cosine", warmup_epochs=1.0, eval_every_n_epochs=EPOCHS)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(asdict(config)))
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(config_path)]
    env = {**os.environ, "KERAS_BACKEND": "torch", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    history_csv = tmp_path / "run" / "history.csv"
    metadata = tmp_path / "run" / "backup" / "training_metadata.json"

    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while len(_epochs(history_csv)) < 2:  # epochs 0 and 1 done
            if first.poll() is not None:
                pytest.fail(f"training ended before it could be killed:\n{first.stdout.read().decode()[-3000:]}")
            if time.time() > deadline:
                pytest.fail("training did not finish two epochs in time")
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    done = json.loads(metadata.read_text())["epoch"]
    assert 2 <= done < EPOCHS
    rows_before = len(_epochs(history_csv))

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    # Epoch counter and optimizer state restored: the optimizer has taken every step of the done epochs.
    assert f"Resumed from the backup: epoch {done} done, optimizer step {done * STEPS}," in second.stdout

    rows = _epochs(history_csv)
    new_epochs = [int(row["epoch"]) for row in rows[rows_before:]]
    assert new_epochs == list(range(done, EPOCHS))  # continues, does not restart at 0
    assert [int(row["epoch"]) for row in rows] == list(range(EPOCHS))
    # The learning-rate schedule continues on the same curve (the rate of each epoch's last batch).
    for row in rows:
        epoch = int(row["epoch"])
        expected = warmup_cosine(epoch + (STEPS - 0.5) / STEPS, config.model.head_lr, 1.0, EPOCHS)
        assert float(row["learning_rate"]) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert (tmp_path / "run" / "model.keras").exists()
    assert not (tmp_path / "run" / "backup").exists()  # removed once training finished
