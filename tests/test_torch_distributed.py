"""trainer.distribution=data_parallel on torch: two gloo processes train what one process trains.

tests/torch_distributed_worker.py runs as two processes, set up as torchrun sets them up. Here,
in one process, the same model takes the same global batches through one autograd graph:
each half of the batch (and each chunk of a half, for gradient caching) through the towers on
its own, because batch norm normalizes with each rank's (each chunk's) rows, and the moving
statistics averaged over the halves; then the loss over the whole global batch, written
independently of the ranks' row-block form (`clip_loss`, `sigmoid_loss` on the square matrix).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kclip.models import losses

TESTS = Path(__file__).parent
WORLD = 2
pytestmark = pytest.mark.torch_only


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_distributed")
    port = free_port()
    processes = []
    for rank in range(WORLD):
        environment = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "",
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                       "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}"}
        processes.append(subprocess.Popen([sys.executable, str(TESTS / "torch_distributed_worker.py"), str(out)],
                                          env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    return [dict(np.load(out / f"rank{rank}.npz")) for rank in range(WORLD)]


def one_process(name, case, initial, inputs, image_ids, global_batch, steps):
    """(per-step losses, last step's gradients, final weights) in one process; see the module docstring."""
    import torch
    import torch_distributed_worker as worker

    model = worker.build(case)
    model.preprocessor = None
    model.set_weights(initial)
    local = global_batch // WORLD
    chunk = case["chunk"] or local
    state = [v for v in model.non_trainable_variables if v.value.is_floating_point()]
    step_losses = []
    for step in range(steps):
        rows = slice(step * global_batch, (step + 1) * global_batch)
        batch = {key: torch.as_tensor(value[rows]) for key, value in inputs.items()}
        ids = torch.as_tensor(image_ids[rows])
        for variable in model.trainable_weights:
            variable.value.grad = None
        before = [v.value.detach().clone() for v in state]
        images, texts, after = [], [], []
        for rank in range(WORLD):
            with torch.no_grad():
                for variable, value in zip(state, before):
                    variable.value.copy_(value)
            for start in range(rank * local, (rank + 1) * local, chunk):
                outputs = model({key: value[start:start + chunk] for key, value in batch.items()}, training=True)
                images.append(outputs["image_embeddings"])
                texts.append(outputs["text_embeddings"])
            after.append([v.value.detach().clone() for v in state])
        with torch.no_grad():
            for i, variable in enumerate(state):
                variable.value.copy_(sum(values[i] for values in after) / WORLD)
        images, texts = torch.cat(images), torch.cat(texts)
        if case["loss"] == "siglip":
            loss = losses.sigmoid_loss(model.sigmoid_logits(images, texts), ids)
        else:
            loss = losses.clip_loss(model.backbone.contrastive_logits(images, texts), ids)
        model.optimizer.scale_loss(loss).backward()
        variables = [v for v in model.trainable_weights if v.value.grad is not None]
        with torch.no_grad():
            model.optimizer.apply([v.value.grad for v in variables], variables)
        step_losses.append(float(loss.detach()))
    gradients = [np.zeros(v.shape, "float32") if v.value.grad is None else v.value.grad.numpy()
                 for v in model.trainable_weights]
    return np.asarray(step_losses), gradients, model.get_weights()


def arrays(result, name, kind):
    keys = sorted((key for key in result if key.startswith(f"{name}/{kind}/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    return [result[key] for key in keys]


@pytest.mark.parametrize("name", ["clip", "siglip_chunked"])
def test_two_gloo_processes_train_what_one_process_trains(ranks, name):
    import torch_distributed_worker as worker

    first, second = ranks
    # Both ranks hold the same model after every step: same weights, same averaged gradients.
    for kind in ("weights", "gradients"):
        for a, b in zip(arrays(first, name, kind), arrays(second, name, kind)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[f"{name}/losses"], second[f"{name}/losses"])

    case = worker.CASES[name]
    keras.utils.set_random_seed(0)
    probe = worker.build(case)
    inputs, image_ids = worker.batches(probe)
    want_losses, want_gradients, want_weights = one_process(
        name, case, arrays(first, name, "initial"), inputs, image_ids, worker.GLOBAL_BATCH, worker.STEPS)

    # fit logs the mean of the ranks' losses: the loss of the global batch.
    np.testing.assert_allclose(first[f"{name}/losses"], want_losses, rtol=1e-5)
    got_gradients = arrays(first, name, "gradients")
    assert len(got_gradients) == len(want_gradients) > 10
    # Loss scaling multiplies every gradient by 2**15: tolerances relative to the largest one.
    scale = max(np.abs(g).max() for g in want_gradients)
    for got, want in zip(got_gradients, want_gradients):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    got_weights = arrays(first, name, "weights")
    assert len(got_weights) == len(want_weights)
    for got, want in zip(got_weights, want_weights):
        # Adam divides by sqrt(v) + 1e-7: where a gradient is ~0 its rounding moves a weight by
        # up to ~lr; 3 steps at 3e-3 keep every difference far below a real step's change.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if name == "siglip_chunked":
        # SigLIP's learnable scale and bias moved, the same on both sides.
        initial = arrays(first, name, "initial")
        indices = [i for i, weight in enumerate(probe.weights) if "sigmoid_logits" in weight.path]
        assert len(indices) == 2
        for i in indices:
            assert abs(float(got_weights[i]) - float(initial[i])) > 1e-4
