"""Recipes for the real-picture demo on the pretrained image tower, each trained and scored.

    python benchmarks/emoji_pretrained_recipes.py --recipe lite0-224-frozen [--recipe ...]
    python benchmarks/emoji_pretrained_recipes.py --list

Each recipe is configs/emoji.yaml plus overrides. A run records held-out t2i R@1/R@5, how many
of the six synonym queries find a target picture in their top 5, the wall time of training (from
the first feature to the exported file; the final evaluation apart), `uptime`'s load and the CPU
flags, as one JSON line in benchmarks/results/emoji-pretrained-recipes.jsonl. The CPU is shared
with other work while these run, so times are rough.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kclip  # noqa: E402
from kclip.data.sources import load_records  # noqa: E402
from kclip.evaluation.evaluate import metrics_from_embeddings  # noqa: E402
from kclip.training import callbacks as callbacks_lib  # noqa: E402
from kclip.training import feature_cache  # noqa: E402
from kclip.training.run import build_model_for_data  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "emoji-pretrained-recipes.jsonl")
# Each synonym query, and the words of which one must be in the CLDR name of a held-out top-5 picture.
SYNONYM_TARGETS = {"kitten": {"cat"}, "feline": {"cat"}, "rodent": {"mouse", "rat", "hamster"},
                   "jet aircraft": {"airplane"}, "furious": {"pouting", "angry", "enraged"},
                   "cellphone": {"selfie", "phone"}}
FROZEN = ["--model.image_encoder", "efficientnet_lite0_imagenet", "--model.image_encoder_trainable", "false",
          "--model.image_encoder_config", "null"]
RECIPES = {
    "lite0-224-frozen": FROZEN + ["--model.image_size", "224", "--trainer.max_epochs", "60"],
    "lite0-160-frozen": FROZEN + ["--model.image_size", "160", "--trainer.max_epochs", "60"],
    "lite0-128-frozen": FROZEN + ["--model.image_size", "128", "--trainer.max_epochs", "60"],
    "lite0-128-frozen-all-captions": FROZEN + ["--model.image_size", "128", "--trainer.max_epochs", "40",
                                               "--data.captions", "all"],
    "lite0-128-frozen-proj384-nodrop": FROZEN + ["--model.image_size", "128", "--trainer.max_epochs", "60",
                                                 "--model.projection_dims", "384", "--model.dropout", "0.0"],
    "lite0-224-frozen-all-captions": FROZEN + ["--model.image_size", "224", "--trainer.max_epochs", "40",
                                               "--data.captions", "all"],
    "lite0-224-frozen-proj384-nodrop": FROZEN + ["--model.image_size", "224", "--trainer.max_epochs", "60",
                                                 "--model.projection_dims", "384", "--model.dropout", "0.0"],
    "lite0-224-frozen-all-captions-lowlr": FROZEN + ["--model.image_size", "224", "--trainer.max_epochs", "40",
                                                     "--data.captions", "all", "--model.head_lr", "0.0005"],
}


def cpu_flags():
    found = subprocess.run(["grep", "-o", "-w", r"avx512_bf16\|amx_bf16\|avx2", "/proc/cpuinfo"],
                           capture_output=True, text=True).stdout.split()
    return sorted(set(found))


def _head_embeddings(model, image_features, text_features):
    backbone = model.backbone
    images = backbone.image_normalize(backbone.image_head(image_features, training=False))
    texts = backbone.text_normalize(backbone.text_head(text_features, training=False))
    return np.asarray(keras.ops.convert_to_numpy(images)), np.asarray(keras.ops.convert_to_numpy(texts))


def run(name, overrides):
    """Trains the heads on cached features as `kclip.train` does, and scores the held-out split
    from its cached features (the same numbers `evaluate` gives, without the towers' second pass)."""
    config = kclip.parse_config(["--config", "configs/emoji.yaml", "--output_dir", f"runs/emoji-recipes/{name}",
                                 "--trainer.logger", "none", *overrides])
    load = open("/proc/loadavg").read().split()[:3]
    keras.utils.set_random_seed(config.trainer.seed)
    records = load_records(config.data, config.output_dir, seed=config.trainer.seed, check_images=False)
    model = build_model_for_data(config, records.for_split("train"))
    started = time.time()
    cached = feature_cache.cached_datasets(model, records, config.model, config.data, seed=config.trainer.seed)
    if cached is None:
        raise SystemExit(f"{name}: the feature cache does not apply to this recipe.")
    features_seconds = time.time() - started
    train_data, validation_data = cached
    # configs/emoji.yaml's schedule, as kclip.train sets it.
    callbacks = [callbacks_lib.WarmupCosineSchedule(config.model.head_lr, config.trainer.warmup_epochs,
                                                    config.trainer.max_epochs)]
    fit_started = time.time()
    model.fit(train_data, epochs=config.trainer.max_epochs, verbose=0, shuffle=False, callbacks=callbacks)
    fit_seconds = time.time() - fit_started
    test = records.for_split("test")
    image_features, text_features = feature_cache.split_features(model, test, progress=False)
    image_embeddings, text_embeddings = _head_embeddings(model, image_features, text_features)
    text_to_image = np.asarray([index for index, image in enumerate(test) for _ in image.captions])
    metrics = metrics_from_embeddings(test, (image_embeddings, text_embeddings, text_to_image))
    names = [image.captions[0] for image in test]
    hits = {}
    for query in config.demo_queries:
        top = [names[i] for i in np.argsort(-(image_embeddings @ model.encode_text([query])[0]))[:5]]
        words = SYNONYM_TARGETS.get(query, set())
        hits[query] = {"hit": any(words & set(re.findall(r"\w+", n.lower())) for n in top), "top5": top}
    line = {
        "benchmark": "emoji_pretrained_recipes", "recipe": name, "overrides": overrides,
        "t2i_r@1": round(metrics["t2i_r@1"], 4), "t2i_r@5": round(metrics["t2i_r@5"], 4),
        "i2t_r@1": round(metrics["i2t_r@1"], 4),
        "synonyms_in_top5": sum(hit["hit"] for hit in hits.values()), "synonyms": hits,
        "feature_seconds": round(features_seconds, 1), "fit_seconds": round(fit_seconds, 1),
        "epochs": config.trainer.max_epochs, "image_size": config.model.image_size,
        "loadavg_before": load, "loadavg_after": open("/proc/loadavg").read().split()[:3],
        "cpu_flags": cpu_flags(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "CPU shared with other jobs while measured: times are rough upper bounds",
    }
    print(json.dumps(line), flush=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", default=[], choices=sorted(RECIPES))
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list or not args.recipe:
        print("\n".join(f"{name}: {' '.join(overrides)}" for name, overrides in RECIPES.items()))
        return 0
    for name in args.recipe:
        run(name, RECIPES[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
