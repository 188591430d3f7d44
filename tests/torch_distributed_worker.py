"""One of the gloo processes of tests/test_torch_distributed.py (RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set as torchrun sets them).

    python tests/torch_distributed_worker.py OUT_DIR

Trains each case of `CASES` for `STEPS` steps of `GLOBAL_BATCH` rows with `fit`, under
trainer.distribution=data_parallel, and writes OUT_DIR/rank<R>.npz: the initial weights, each
step's loss as `fit` logged it, the last step's gradients and the final weights.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from backend_worker import StepLosses, training_batches  # noqa: E402
from helpers import tiny_model  # noqa: E402
from kclip.backends.torch import distributed  # noqa: E402
from kclip.models.optimizers import MultiRateAdamW  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3
# clip through a loss-scale optimizer (float32, so the scale stays 2**15 and nothing overflows);
# siglip with gradient caching, 2 chunks of 2 rows on each rank. Both with three learning rates.
CASES = {
    "clip": {"loss": "clip", "chunk": None, "loss_scale": True},
    "siglip_chunked": {"loss": "siglip", "chunk": 2, "loss_scale": False},
}


def build(case):
    """The case's tiny model, compiled with its own rate for each tower; seeded, so every process
    builds the same one (the first step broadcasts rank 0's weights anyway)."""
    keras.utils.set_random_seed(0)
    model = tiny_model(dropout=0.0, loss=case["loss"])
    optimizer = MultiRateAdamW(learning_rate=2e-3)
    if case["loss_scale"]:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, learning_rate=2e-3, image_learning_rate=1e-3, text_learning_rate=3e-3,
                  contrastive_chunk_size=case["chunk"])
    return model


def batches(model):
    """`STEPS` global batches whose image ids repeat, also across the two ranks' halves."""
    inputs, image_ids = training_batches(model, steps=STEPS, batch_size=GLOBAL_BATCH)
    return inputs, image_ids


def main():
    out_dir = sys.argv[1]
    distributed.configure(GLOBAL_BATCH)
    arrays = {}
    for name, case in CASES.items():
        model = build(case)
        inputs, image_ids = batches(model)
        model.preprocessor = None
        arrays.update({f"{name}/initial/{i}": w for i, w in enumerate(model.get_weights())})
        steps = StepLosses()
        model.fit(inputs, image_ids, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[steps])
        arrays[f"{name}/losses"] = np.asarray(steps.losses())
        for i, variable in enumerate(model.trainable_weights):
            gradient = variable.value.grad
            arrays[f"{name}/gradients/{i}"] = (np.zeros(variable.shape, "float32") if gradient is None
                                               else gradient.detach().cpu().numpy())
        arrays.update({f"{name}/weights/{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(os.path.join(out_dir, f"rank{distributed.rank()}.npz"), **arrays)
    distributed.shutdown()


if __name__ == "__main__":
    main()
