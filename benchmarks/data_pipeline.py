"""Images/s through the full training input pipeline, from prepared TFDS shards and from loose JPEGs.

Usage: python benchmarks/data_pipeline.py [--images 500] [--threads 1,2] [--repeats 3] [--work DIR]
       python benchmarks/data_pipeline.py --sources pydataset --workers 0,1,15 [--batch-size 128]
       python benchmarks/data_pipeline.py --smoke     # seconds: the TF-free loader on 16 tiny images

`--sources pydataset` times the TF-free loader (kclip/data/pydataset.py, `data.loader: pydataset`)
with each `--workers` count: decoding, resizing, caption choice, tokenizing and normalizing all
happen in its workers, so its lines are "tokenized" ones; it needs no TensorFlow.

It writes `--images` Flickr-sized photos-like JPEGs (500x375, quality 90, gradients plus noise,
so they are about as large as real Flickr files), five captions each, in the custom layout; prepares
them with `prepare_tfds` (timed); then, for each source x tf.data thread-pool size x with/without
tokenization, times whole epochs of 224x224 batches of 32: decode, resize, caption choice, batch,
prefetch and, "tokenized", the model's own preprocessor (`DualEncoderPreprocessor`: ImageNet
normalization + DistilBERT WordPiece tokenizer + packer to 32 tokens) mapped the way `Task.fit` maps
it. Batches are pulled to numpy, as Keras' torch trainer does. Prints one JSON line per setting with
the median images/s over `--repeats` epochs (after one warm-up epoch).
"""

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

WORDS = ("a dog cat man woman child runs jumps sits on the in grass water beach red blue green ball "
         "street city park snow two people with playing looking at near small large white black").split()


def cpu_model():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_photos(folder, count, seed=0):
    """`count` 500x375 JPEGs (quality 90) of smooth gradients plus noise, and captions.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".complete-{count}"
    if marker.exists():
        return folder
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    rows = []
    for index in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        frequency = rng.uniform(0.005, 0.03, 3)
        base = np.stack([127 + 100 * np.sin(frequency[c] * (x + y * (c + 1)) + phase[c]) for c in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        name = f"{index:05d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        for _ in range(5):
            rows.append((name, " ".join(rng.choice(WORDS, size=rng.integers(6, 16)))))
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    marker.touch()
    return folder


def build_preprocessor(captions, image_size=224, sequence_length=32):
    import keras_hub

    from kclip.models.preprocessor import DualEncoderPreprocessor
    from kclip.models.towers import build_image_converter, build_word_vocabulary

    tokenizer = keras_hub.tokenizers.DistilBertTokenizer(
        vocabulary=build_word_vocabulary(captions, max_size=2000), lowercase=True, strip_accents=True)
    converter = build_image_converter(None, from_config=True, image_size=image_size)
    return DualEncoderPreprocessor(tokenizer, converter, sequence_length=sequence_length)


def time_epochs(dataset, repeats):
    """Median images/s over `repeats` full epochs, after one warm-up epoch."""
    def epoch():
        count, started = 0, time.perf_counter()
        for x, ids in dataset:
            for value in x.values():
                value.numpy()
            count += int(ids.shape[0])
        return count / (time.perf_counter() - started)

    epoch()
    rates = [epoch() for _ in range(repeats)]
    return statistics.median(rates), min(rates), max(rates)


def emit(line, out):
    print(json.dumps(line), flush=True)
    if out:
        with open(out, "a") as file:
            file.write(json.dumps(line) + "\n")


def time_pydataset(args):
    """The TF-free loader's images/s (decoding and the preprocessor included), per worker count."""
    import keras

    from kclip.data import pydataset
    from kclip.data.layouts import read_captioned_images

    folder = write_photos(Path(args.work) / f"photos_{args.images}", args.images)
    images = read_captioned_images(folder, split_fractions=(1.0, 0.0, 0.0)).for_split("train")
    preprocessor = build_preprocessor([caption for image in images for caption in image.captions], args.image_size)
    common = {"machine": cpu_model(), "cores": os.cpu_count(), "backend": keras.config.backend(),
              "images": len(images), "mean_jpeg_kb": round(statistics.mean(i.image_path.stat().st_size
                                                                           for i in images) / 1024, 1)}
    for workers in [int(value) for value in args.workers.split(",")]:
        loader = pydataset.loader(images, preprocessor, args.batch_size, workers=workers)

        def epoch():
            count, started = 0, time.perf_counter()
            for x, ids in loader:
                for value in x.values():
                    np.asarray(value)
                count += int(ids.shape[0])
            return count / (time.perf_counter() - started)

        epoch()  # warm-up: starts the workers
        rates = [epoch() for _ in range(args.repeats)]
        emit({"benchmark": "input_pipeline", **common, "source": "pydataset", "workers": workers,
              "tokenized": True, "image_size": args.image_size, "batch_size": args.batch_size,
              "median_images_per_s": round(statistics.median(rates), 1), "min": round(min(rates), 1),
              "max": round(max(rates), 1), "smoke": args.smoke}, args.out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--threads", default="1,2", help="tf.data private thread-pool sizes to try")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sources", default="tfds,loose")
    parser.add_argument("--work", default="/tmp/kclip_data_benchmark")
    parser.add_argument("--workers", default="0,2", help="pydataset worker counts to try")
    parser.add_argument("--smoke", action="store_true", help="16 tiny images, one epoch: checks, does not measure")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch_size, args.image_size, args.repeats = 16, 4, 32, 1
        args.sources, args.workers = "pydataset", "0,2"
    sources = args.sources.split(",")
    unknown = set(sources) - {"tfds", "loose", "pydataset"}
    if unknown:
        raise ValueError(f"--sources takes tfds, loose and pydataset; got {sorted(unknown)}.")
    if "pydataset" in sources:
        time_pydataset(args)
    if not set(sources) - {"pydataset"}:
        return 0

    import tensorflow as tf

    from kclip.data.layouts import read_captioned_images
    from kclip.data.pipeline import prepared_dataset, training_dataset
    from kclip.data.tfds_builders import prepare_tfds

    folder = write_photos(Path(args.work) / f"photos_{args.images}", args.images)
    records = read_captioned_images(folder, split_fractions=(1.0, 0.0, 0.0))
    images = records.for_split("train")
    mean_bytes = statistics.mean(image.image_path.stat().st_size for image in images)
    started = time.perf_counter()
    prepared = prepare_tfds(records, data_dir=Path(args.work) / "tfds")
    seconds = time.perf_counter() - started
    common = {"machine": cpu_model(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
              "images": len(images), "mean_jpeg_kb": round(mean_bytes / 1024, 1)}
    print(json.dumps({"benchmark": "prepare_tfds", **common, "reused": prepared.reused, "seconds": round(seconds, 2),
                      "images_per_s": None if prepared.reused else round(len(images) / seconds, 1)}), flush=True)

    preprocessor = build_preprocessor([caption for image in images for caption in image.captions], args.image_size)
    resizing = preprocessor.image_converter.resizing
    for source in [source for source in sources if source != "pydataset"]:
        for threads in [int(value) for value in args.threads.split(",")]:
            for tokenized in (False, True):
                if source == "tfds":
                    dataset = prepared_dataset(prepared, "train", resizing, args.batch_size)
                else:
                    dataset = training_dataset(images, resizing, args.image_size, args.batch_size)
                if tokenized:  # as KerasHub's Task.fit maps the preprocessor
                    dataset = dataset.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
                        tf.data.AUTOTUNE)
                options = tf.data.Options()
                options.threading.private_threadpool_size = threads
                dataset = dataset.with_options(options)
                median, low, high = time_epochs(dataset, args.repeats)
                print(json.dumps({"benchmark": "input_pipeline", **common, "source": source, "threads": threads,
                                  "tokenized": tokenized, "image_size": args.image_size,
                                  "batch_size": args.batch_size, "median_images_per_s": round(median, 1),
                                  "min": round(low, 1), "max": round(high, 1)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
