"""Run with KERAS_BACKEND=jax and XLA_FLAGS=--xla_force_host_platform_device_count=2.

Trains one step on one global batch twice from the same weights, on one device and with
`trainer.distribution=data_parallel` over two, and prints what tests/test_distribution.py
compares, as one JSON line.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from backend_worker import training_batches  # noqa: E402
from helpers import tiny_model  # noqa: E402
from kclip.models import losses  # noqa: E402
from kclip.backends.jax import distribution  # noqa: E402

GLOBAL_BATCH = 8


def loss_logits_and_gradients(model, inputs, image_ids):
    """The CLIP loss, its logits and its gradients, as the JAX train step computes them."""
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_fn(trainable):
        outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=True)
        return losses.clip_loss(outputs["logits"], image_ids), outputs["logits"]

    (loss, logits), gradients = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(trainable)
    return loss, logits, gradients


def run(initial_weights, inputs, image_ids, data_parallel):
    keras.utils.set_random_seed(0)
    model = tiny_model(dropout=0.0)
    model.preprocessor = None
    if initial_weights is not None:
        model.set_weights(initial_weights)
    initial = [np.array(w) for w in model.get_weights()]
    if data_parallel:
        # What fit does with each batch under DataParallel: split it over the devices.
        layout = keras.distribution.distribution().get_data_layout((GLOBAL_BATCH,))
        sharding = layout.backend_layout
        inputs = {k: jax.device_put(v, sharding) for k, v in inputs.items()}
        image_ids = jax.device_put(image_ids, sharding)
    loss, logits, gradients = loss_logits_and_gradients(model, inputs, image_ids)
    result = {
        "loss": float(loss),
        "logits_shape": list(logits.shape),
        "logits": np.asarray(logits).tolist(),
        "input_devices": len(getattr(inputs["images"], "sharding", None).device_set)
        if data_parallel else 1,
        "input_shard_rows": sorted({s.data.shape[0] for s in inputs["images"].addressable_shards})
        if data_parallel else [GLOBAL_BATCH],
        "weight_devices": len(model.trainable_variables[0].value.sharding.device_set),
        "gradients": [np.asarray(g) for g in gradients],
    }
    history = model.fit({k: np.asarray(v) for k, v in inputs.items()}, np.asarray(image_ids),
                        batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    result["fit_loss"] = float(history.history["loss"][0])
    # Evaluation takes batches that do not split over the devices (5 rows on 2 devices).
    odd = {k: np.asarray(v)[:5] for k, v in inputs.items()}
    result["odd_batch_eval_loss"] = float(model.evaluate(odd, np.asarray(image_ids)[:5], batch_size=5,
                                                         verbose=0, return_dict=True)["loss"])
    result["weights_after_step"] = [np.asarray(w) for w in model.get_weights()]
    return initial, result


def main():
    out = sys.argv[1]
    keras.utils.set_random_seed(0)
    probe = tiny_model(dropout=0.0)
    inputs, image_ids = training_batches(probe, steps=1, batch_size=GLOBAL_BATCH)
    initial, single = run(None, inputs, image_ids, data_parallel=False)
    distribution.configure("data_parallel", train_batch_size=GLOBAL_BATCH)
    _, parallel = run(initial, inputs, image_ids, data_parallel=True)
    # Each device alone: the loss a per-device computation would give (half the negatives).
    half = GLOBAL_BATCH // 2
    keras.distribution.set_distribution(None)
    keras.utils.set_random_seed(0)
    local = tiny_model(dropout=0.0)
    local.preprocessor = None
    local.set_weights(initial)
    per_device = [float(loss_logits_and_gradients(
        local, {k: v[i:i + half] for k, v in inputs.items()}, image_ids[i:i + half])[0])
        for i in (0, half)]
    arrays = {}
    for name, result in (("single", single), ("parallel", parallel)):
        for key in ("gradients", "weights_after_step"):
            for i, value in enumerate(result.pop(key)):
                arrays[f"{name}/{key}/{i}"] = value
    np.savez(out, **arrays)
    print("RESULT " + json.dumps({"devices": len(jax.devices()), "single": single,
                                  "parallel": parallel, "per_device_losses": per_device}))


if __name__ == "__main__":
    main()
