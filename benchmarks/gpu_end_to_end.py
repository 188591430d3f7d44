"""configs/flickr8k.yaml end to end on a generated Flickr-sized folder: train (with validation),
export, index (images/s) and search, timed. Part of the GPU check (benchmarks/gpu.sh).

    python benchmarks/gpu_end_to_end.py --images 2000 --out results.jsonl
    python benchmarks/gpu_end_to_end.py --size tiny --images 40 --out results.jsonl      # the CPU dry run
    torchrun --nproc_per_node 1 benchmarks/gpu_end_to_end.py --train-only --steps 20 --distribution data_parallel

The folder is Kaggle's Flickr8k layout (`Images/` + `captions.txt`, five captions per image) of
500x375 JPEGs (gradients plus noise, about the size of real Flickr files). The towers are
configs/flickr8k.yaml's shapes built from scratch (ResNet50 + DistilBERT base; presets would need a
download), and the loader is the TF-free one (`data.loader: pydataset`), as on a GPU machine
without TensorFlow. `--train-only` trains `--steps` steps and prints the loss: gpu.sh runs it with
and without `trainer.distribution: data_parallel` to check that one process under torchrun trains
as no distribution does.
"""

import argparse
import csv
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from harness import SIZES, cpu_fields, emit, gpu_fields  # noqa: E402

WORDS = ("a dog cat man woman child runs jumps sits on the in grass water beach red blue green ball "
         "street city park snow two people with playing looking at near small large white black").split()
QUERY = "a dog runs on the grass"


def _write_photo(args):
    folder, index, seed = args
    rng = np.random.default_rng([seed, index])
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    phase, frequency = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.005, 0.03, 3)
    base = np.stack([127 + 100 * np.sin(frequency[c] * (x + y * (c + 1)) + phase[c]) for c in range(3)], -1)
    pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    name = f"{index:05d}.jpg"
    Image.fromarray(pixels).save(Path(folder) / "Images" / name, quality=90)
    return [(name, " ".join(rng.choice(WORDS, size=rng.integers(6, 16)))) for _ in range(5)]


def write_flickr_folder(folder, count, seed=0):
    """`count` 500x375 JPEGs in Kaggle's Flickr8k layout; reused when already complete."""
    folder = Path(folder)
    marker = folder / f".complete-{count}"
    if marker.exists():
        return folder
    (folder / "Images").mkdir(parents=True, exist_ok=True)
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        rows = [row for rows in pool.map(_write_photo, [(folder, i, seed) for i in range(count)]) for row in rows]
    with open(folder / "captions.txt", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    marker.touch()
    return folder


class StepClock:
    """Training steps of `fit` and their wall time, the first (warm-up) step left out, data
    loading included: the pairs/s the input pipeline and the step give together."""

    def __new__(cls):
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.ends, self.synchronize = [], lambda: None
                if keras.config.backend() == "torch":
                    import torch

                    if torch.cuda.is_available():
                        self.synchronize = torch.cuda.synchronize

            def on_train_batch_end(self, batch, logs=None):
                self.synchronize()
                self.ends.append(time.perf_counter())

            def fields(self, batch_size):
                if len(self.ends) < 2:
                    return {"train_steps": len(self.ends)}
                seconds = self.ends[-1] - self.ends[0]
                return {"train_steps": len(self.ends),
                        "train_pairs_per_s": round(batch_size * (len(self.ends) - 1) / seconds, 1)}

        return Clock()


def config_for(args, folder, output_dir):
    from kclip.config import parse_config

    size = SIZES[args.size]
    bert = {key: value for key, value in size["bert"].items() if key != "vocabulary_size"}
    overrides = [
        "--config", str(HERE.parent / "configs" / "flickr8k.yaml"),
        "--data.dir", str(folder), "--data.loader", "pydataset", "--data.tfds", "false",
        "--model.image_encoder", "ResNetBackbone", "--model.image_encoder_config", json.dumps(size["resnet"]),
        "--model.text_encoder", "DistilBertBackbone", "--model.text_encoder_config", json.dumps(bert),
        "--model.image_size", str(size["image_size"]),
        "--trainer.max_epochs", "1", "--trainer.logger", "none", "--trainer.precision", args.precision,
        "--output_dir", str(output_dir),
    ]
    if args.batch_size:
        overrides += ["--data.train_batch_size", str(args.batch_size), "--data.val_batch_size", str(args.batch_size)]
    if args.size == "tiny":
        overrides += ["--data.max_length", "16"]
    if args.workers is not None:
        overrides += ["--data.loader_workers", str(args.workers)]
    if args.train_only:
        overrides += ["--trainer.steps_per_epoch", str(args.steps), "--trainer.distribution", args.distribution,
                      "--data.split_fractions", "[0.9, 0.1, 0.0]"]
    return parse_config(overrides)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--batch-size", type=int, help="default: the config's 128")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, help="data.loader_workers (default: every core but one, at most 16)")
    parser.add_argument("--work", default="/tmp/kclip_gpu_check")
    parser.add_argument("--train-only", action="store_true", help="train --steps steps and report the loss")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--distribution", default="none", choices=["none", "data_parallel"])
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()

    import kclip

    rank = int(os.environ.get("RANK", 0))
    folder = write_flickr_folder(Path(args.work) / f"flickr_{args.images}", args.images)
    run_name = f"train_{args.distribution}" if args.train_only else "end_to_end"
    config = config_for(args, folder, Path(args.work) / run_name)
    common = {"size": args.size, "images": args.images, "batch_size": config.data.train_batch_size,
              **cpu_fields()}
    steps = StepClock()
    started = time.perf_counter()
    model, history, _ = kclip.train(config, callbacks=[steps], verbose=0)
    train_s = time.perf_counter() - started
    common.update(steps.fields(config.data.train_batch_size))
    if args.train_only:
        if rank == 0:
            emit({"benchmark": "gpu_check_train", "distribution": args.distribution, "steps": args.steps,
                  "loss": [float(value) for value in history.history["loss"]], "train_s": round(train_s, 2),
                  "world_size": int(os.environ.get("WORLD_SIZE", 1)), **common, **gpu_fields()}, args.out)
        return 0
    emit({"benchmark": "gpu_check_fit_end_to_end", "train_s": round(train_s, 2),
          "loss": [float(value) for value in history.history["loss"]],
          "val_loss": [float(value) for value in history.history.get("val_loss", [])],
          "precision": model.compute_policy, "model_file_mb": round(
              (Path(config.output_dir) / "model.keras").stat().st_size / 2**20, 1), **common, **gpu_fields()}, args.out)

    model = kclip.load_model(Path(config.output_dir) / "model.keras")
    started = time.perf_counter()
    index = kclip.build_index(model, folder / "Images", Path(args.work) / "index", batch_size=128, progress=False,
                              rebuild=True)
    index_s = time.perf_counter() - started
    emit({"benchmark": "gpu_check_index", "indexed": len(index), "index_s": round(index_s, 2),
          "images_per_s": round(len(index) / index_s, 1), **common, **gpu_fields()}, args.out)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        results = kclip.search(QUERY, model=model, index=index, top_k=5)
        timings.append(time.perf_counter() - started)
    emit({"benchmark": "gpu_check_search", "query": QUERY, "results": len(results),
          "median_ms": round(1000 * float(np.median(timings)), 2), **common}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
