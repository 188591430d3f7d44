"""Run in a subprocess with KERAS_BACKEND set: the per-backend half of tests/test_backends.py.

    python tests/backend_worker.py save MODEL.keras
    python tests/backend_worker.py embed OUT_DIR MODEL.keras [MODEL.keras ...]
    python tests/backend_worker.py train MODEL.keras OUT.json [--steps 50]
    python tests/backend_worker.py check OUT_DIR MODEL.keras [MODEL.keras ...]   # embed all, train on the first

Every backend reads the same model file and builds the same inputs from fixed seeds, so
any difference in what they write comes from the backend.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kclip  # noqa: E402,F401  (registers the kclip classes for load_model)
from helpers import CAPTIONS, tiny_model  # noqa: E402

WORDS = ["a", "red", "blue", "green", "yellow", "circle", "square", "triangle", "star", "big", "small"]


def fixed_images(count, size=32, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype("uint8")


def save(path):
    keras.utils.set_random_seed(0)
    tiny_model(captions=[" ".join(WORDS)]).save(path)


def embed(out_dir, paths):
    """Writes OUT_DIR/<model file stem>-on-<backend>.json for each model file."""
    for path in paths:
        _embed_one(path, os.path.join(out_dir, f"{os.path.basename(path)[:-6]}-on-{keras.config.backend()}.json"))


def _embed_one(path, out):
    model = keras.saving.load_model(path)
    result = {
        "backend": keras.config.backend(),
        "fingerprint": model.fingerprint(),
        "text": model.encode_text(CAPTIONS).tolist(),
        "image": model.encode_image(list(fixed_images(6))).tolist(),
    }
    with open(out, "w") as file:
        json.dump(result, file)


def training_batches(model, steps, batch_size=8):
    """`steps` batches; ids repeat inside a batch so that shared-image positives are exercised."""
    rng = np.random.default_rng(2)
    images = fixed_images(steps * batch_size, seed=3)
    captions = [" ".join(rng.choice(WORDS, size=rng.integers(2, 7))) for _ in range(len(images))]
    image_ids = np.concatenate([rng.integers(0, batch_size - 2, batch_size) + i * batch_size
                                for i in range(steps)])
    inputs = model.preprocessor({"images": images, "captions": np.array(captions)})
    return {key: keras.ops.convert_to_numpy(value) for key, value in inputs.items()}, image_ids


class StepLosses(keras.callbacks.Callback):
    """Each step's loss, recovered from the running mean that `fit` reports."""

    def on_train_begin(self, logs=None):
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(logs["loss"]))

    def losses(self):
        means = np.asarray(self.means, dtype="float64")
        totals = means * np.arange(1, len(means) + 1)
        return np.diff(totals, prepend=0.0).tolist()


def train(path, out, steps, jit_compile):
    model = keras.saving.load_model(path)
    inputs, image_ids = training_batches(model, steps)
    model.preprocessor = None  # batches are already preprocessed
    model.compile(learning_rate=1e-3, image_learning_rate=3e-4, text_learning_rate=1e-4,
                  weight_decay=1e-2, jit_compile=jit_compile)
    recorder = StepLosses()
    model.fit(inputs, image_ids, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    with open(out, "w") as file:
        json.dump({"backend": keras.config.backend(), "losses": recorder.losses(),
                   "weights": [float(np.abs(w.numpy()).sum()) for w in model.trainable_weights]}, file)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["save", "embed", "train", "check"])
    parser.add_argument("model")
    parser.add_argument("out", nargs="*")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--jit-compile", default="auto")
    args = parser.parse_args()
    if args.command == "save":
        save(args.model)
    elif args.command in ("embed", "check"):
        embed(args.model, args.out)
        if args.command == "check":  # one process start instead of two
            out = os.path.join(args.model, f"train-{keras.config.backend()}.json")
            train(args.out[0], out, args.steps, "auto")
    else:
        jit = {"true": True, "false": False}.get(args.jit_compile, args.jit_compile)
        train(args.model, args.out[0], args.steps, jit)


if __name__ == "__main__":
    main()
