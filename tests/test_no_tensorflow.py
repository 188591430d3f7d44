"""kclip without TensorFlow: import, train one tiny epoch, export, index and search in a process
where every tensorflow* module is unimportable (tests/no_tensorflow_site), as on a GPU machine
that has its own torch and no TensorFlow."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import tiny_config
from kclip.data.sources import load_records


TESTS = Path(__file__).parent


def _run_without_tensorflow(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS / "no_tensorflow_site"), str(TESTS)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=TESTS.parent)


def test_tensorflow_is_unimportable_in_the_subprocess():
    probe = _run_without_tensorflow("-c", (
        "import importlib.util, importlib.metadata as m\n"
        "assert importlib.util.find_spec('tensorflow') is None\n"
        "try:\n    import tensorflow\nexcept ModuleNotFoundError:\n    print('absent')\n"))
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip() == "absent"


def test_train_export_index_and_search_without_tensorflow(tmp_path):
    run = _run_without_tensorflow(str(TESTS / "no_tensorflow_worker.py"), str(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["loader"] == "pydataset"  # chosen by itself, TensorFlow being absent
    assert seen["tensorflow_loaded"] == []
    assert seen["epochs"] == 1 and len(seen["loss"]) == 1 and len(seen["val_loss"]) == 1
    assert seen["model_file"]
    # The exported model was evaluated on the whole test split, as this process reads it.
    config = tiny_config(tmp_path / "run", tmp_path / "data")
    test_images = load_records(config.data, tmp_path / "records", seed=config.trainer.seed).for_split("test")
    assert seen["test_metrics"]["num_images"] == len(test_images) > 0
    assert seen["test_metrics"]["num_captions"] == sum(len(image.captions) for image in test_images)
    assert seen["index_size"] == seen["files"] == 24
    assert seen["results"] == seen["brute_force"]  # the index's answer is brute force over the files
    assert seen["same_embeddings"]


def test_the_tfdata_loader_says_what_to_install(tmp_path):
    run = _run_without_tensorflow("-c", (
        "import kclip\n"
        "from kclip.data.pipeline import training_dataset\n"
        "training_dataset([], None, 32, 4)\n"))
    assert run.returncode != 0
    assert "ImportError: the tf.data loader (data.loader: tfdata) and prepared TFDS shards needs tensorflow" \
        in run.stderr
    assert "pip install tensorflow" in run.stderr


def test_wandb_keras_callbacks_say_what_to_install():
    run = _run_without_tensorflow("-c", (
        "import kclip\n"
        "from kclip.training.tracking import wandb_callbacks\n"
        "wandb_callbacks(None, None, None)\n"))
    assert run.returncode != 0
    assert "ImportError: W&B's Keras callbacks (trainer.logger: wandb) needs tensorflow" in run.stderr
    assert "trainer.logger: none" in run.stderr
