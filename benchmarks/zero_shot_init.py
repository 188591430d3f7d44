"""The zero-shot (ConSE) map as a starting point for training, against a random image head, on the emoji set.

    python benchmarks/zero_shot_init.py [--image-size 128] [--epochs 20]

Three models on configs/emoji.yaml's split, scored on its held-out pictures (t2i R@1/R@5):
the zero-shot model untrained; the same model with its image head (`ClassMixHead`: classifier,
class-name embeddings) fine-tuned on cached tower features; and the same architecture with that
head randomly initialized, trained the same way. The text side is the sentence model as it is.
Appends JSON lines to benchmarks/results/zero-shot-init.jsonl (CPU shared: times are rough).
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kclip  # noqa: E402
from kclip.data.sources import load_records  # noqa: E402
from kclip.evaluation.evaluate import metrics_from_embeddings  # noqa: E402
from kclip.training import feature_cache  # noqa: E402
from kclip.training.callbacks import WarmupCosineSchedule  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "zero-shot-init.jsonl")


def scores(model, test):
    image_features, text_features = feature_cache.split_features(model, test, progress=False)
    backbone = model.backbone
    images = np.asarray(keras.ops.convert_to_numpy(backbone.image_normalize(backbone.image_head(image_features))))
    texts = np.asarray(keras.ops.convert_to_numpy(backbone.text_normalize(backbone.text_head(text_features))))
    text_to_image = np.asarray([index for index, image in enumerate(test) for _ in image.captions])
    metrics = metrics_from_embeddings(test, (images, texts, text_to_image))
    return {key: round(metrics[key], 4) for key in ("t2i_r@1", "t2i_r@5", "i2t_r@1")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    config = kclip.parse_config(["--config", "configs/emoji.yaml", "--output_dir", "runs/zero-shot-init"])
    records = load_records(config.data, config.output_dir, seed=config.trainer.seed, check_images=False)
    train, test = records.for_split("train"), records.for_split("test")
    flags = sorted(set(subprocess.run(["grep", "-o", "-w", r"avx512_bf16\|amx_bf16\|avx2", "/proc/cpuinfo"],
                                      capture_output=True, text=True).stdout.split()))
    lines = []
    for start in ("zero_shot_untrained", "zero_shot_init", "random_init"):
        keras.utils.set_random_seed(config.trainer.seed)
        model = kclip.zero_shot_model(image_size=args.image_size, sequence_length=config.data.max_length)
        if start == "random_init":
            head = model.backbone.image_head
            kernel, bias, names = head.get_weights()
            rng = np.random.default_rng(config.trainer.seed)
            random_names = rng.normal(size=names.shape).astype("float32")
            random_names /= np.linalg.norm(random_names, axis=1, keepdims=True)
            limit = np.sqrt(6 / sum(kernel.shape))
            head.set_weights([rng.uniform(-limit, limit, kernel.shape).astype("float32"), np.zeros_like(bias),
                              random_names])
        started = time.time()
        if start != "zero_shot_untrained":
            model.compile(learning_rate=args.learning_rate, weight_decay=config.model.weight_decay)
            image_features, text_features = feature_cache.split_features(model, train, progress=False)
            batches = feature_cache.FeatureBatches(image_features, [image.captions for image in train],
                                                   config.data.train_batch_size, text_features=text_features,
                                                   seed=config.trainer.seed)
            model.fit(batches, epochs=args.epochs, verbose=0, shuffle=False,
                      callbacks=[WarmupCosineSchedule(args.learning_rate, 1.0, args.epochs)])
        line = {"benchmark": "zero_shot_init", "start": start, **scores(model, test),
                "epochs": 0 if start == "zero_shot_untrained" else args.epochs, "image_size": args.image_size,
                "train_seconds": round(time.time() - started, 1), "loadavg": open("/proc/loadavg").read().split()[:3],
                "cpu_flags": flags, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print(json.dumps(line), flush=True)
        lines.append(line)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
