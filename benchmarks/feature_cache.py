"""Time per 1,000 images of configs/flickr8k_cpu.yaml: the one-off feature pass, then each epoch on the cache.

    python benchmarks/feature_cache.py [--images 300] [--smoke]

Writes Flickr-sized JPEGs (500x375, made from scikit-image's photos, 5 captions each) to a temporary
Kaggle-layout folder, then measures, in float32 with the config's towers (EfficientNet-Lite0 at
224 px, all-MiniLM-L6-v2): image features (decode, resize, tower), text features (5 captions per
image), and one heads-only epoch over every caption. Prints JSON lines and appends them to
benchmarks/results/feature-cache.jsonl with `uptime`'s load and the CPU flags. `--smoke`: 16
images at 64 px, to check the script runs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import kclip  # noqa: E402
from kclip.data.sources import load_records  # noqa: E402
from kclip.training import feature_cache  # noqa: E402
from kclip.training.run import build_model_for_data  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "feature-cache.jsonl"


def cpu_flags():
    found = subprocess.run(["grep", "-o", "-w", r"avx512_bf16\|amx_bf16\|avx2", "/proc/cpuinfo"],
                           capture_output=True, text=True).stdout.split()
    return sorted(set(found))


def write_folder(root, count):
    import skimage.data as photos

    sources = [photos.chelsea(), photos.coffee(), photos.rocket(), photos.astronaut(), photos.stereo_motorcycle()[0]]
    images = root / "Images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        source = sources[index % len(sources)]
        top, left = rng.integers(0, source.shape[0] // 4), rng.integers(0, source.shape[1] // 4)
        crop = Image.fromarray(source[top:, left:]).convert("RGB").resize((500, 375), Image.BICUBIC)
        name = f"{index:05d}.jpg"
        crop.save(images / name, quality=90)
        rows += [(name, f"photo number {index} caption {k} with a few more words") for k in range(5)]
    with open(root / "captions.txt", "w") as handle:
        handle.write("image,caption\n" + "".join(f"{name},{caption}\n" for name, caption in rows))
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    count, size = (16, 64) if args.smoke else (args.images, 224)
    with tempfile.TemporaryDirectory() as temporary:
        os.environ["KCLIP_CACHE_DIR"] = str(Path(temporary) / "cache")
        data_dir = write_folder(Path(temporary) / "flickr", count)
        config = kclip.parse_config([
            "--config", str(REPO / "configs" / "flickr8k_cpu.yaml"), "--data.dir", str(data_dir),
            "--output_dir", str(Path(temporary) / "run"), "--model.image_size", str(size),
            "--data.split_fractions", "[1.0, 0.0, 0.0]", "--data.train_batch_size", str(min(128, count))])
        keras.config.set_dtype_policy("float32")
        records = load_records(config.data, config.output_dir, seed=0, check_images=False)
        images = records.for_split("train")
        model = build_model_for_data(config, images)
        load = open("/proc/loadavg").read().split()[:3]
        started = time.time()
        image_features = feature_cache.compute_image_features(model, [str(i.image_path) for i in images])
        image_seconds = time.time() - started
        texts = [caption for image in images for caption in image.captions]
        started = time.time()
        text_features = feature_cache.compute_text_features(model, texts)
        text_seconds = time.time() - started
        batches = feature_cache.FeatureBatches(image_features, [i.captions for i in images],
                                               config.data.train_batch_size, text_features=text_features,
                                               caption_mode="all")
        model.fit(batches, epochs=1, verbose=0, shuffle=False)  # warm-up: first-call costs
        started = time.time()
        model.fit(batches, epochs=1, verbose=0, shuffle=False)
        epoch_seconds = time.time() - started
    per_thousand = 1000 / len(images)
    line = {
        "benchmark": "feature_cache", "config": "configs/flickr8k_cpu.yaml", "smoke": args.smoke,
        "images": len(images), "captions": len(texts), "image_size": size, "precision": "float32",
        "image_features_s_per_1000_images": round(image_seconds * per_thousand, 1),
        "image_features_img_per_s": round(len(images) / image_seconds, 2),
        "text_features_s_per_1000_images": round(text_seconds * per_thousand, 1),
        "cached_epoch_s_per_1000_images": round(epoch_seconds * per_thousand, 2),
        "loadavg_before": load, "loadavg_after": open("/proc/loadavg").read().split()[:3],
        "cpu_flags": cpu_flags(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "CPU shared with other jobs while measured: an upper bound for a quiet 2-core machine",
    }
    print(json.dumps(line), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
