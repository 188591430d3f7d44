"""The real-picture demo's recipe with a pretrained text tower against a from-scratch one.

    python benchmarks/emoji_text_towers.py --variant pretrained --out benchmarks/results/emoji-2026-11-29.jsonl
    python benchmarks/emoji_text_towers.py --variant scratch --out ...

Both train configs/emoji.yaml's image tower, heads, data and schedule; `scratch` swaps the
frozen all-MiniLM-L6-v2 text tower for a 2-layer, 128-wide DistilBERT learned from the
training captions at the heads' rate. Prints (and appends) one JSON line: held-out test
recall, training wall time, CPU model and flags, load average before and after.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "torch")

import kclip  # noqa: E402
from harness import machine  # noqa: E402

SCRATCH_TEXT = [
    "--model.text_encoder", "DistilBertBackbone",
    "--model.text_encoder_config",
    '{"num_layers": 2, "num_heads": 2, "hidden_dim": 128, "intermediate_dim": 256, '
    '"dropout": 0.1, "max_sequence_length": 32}',
    "--model.text_encoder_trainable", "true",
    "--model.text_embedding_dims", "128",
    "--model.text_encoder_lr", "0.001",
]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next(line for line in handle if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(flag for flag in flags if flag.startswith(("avx", "amx", "fma")))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=["pretrained", "scratch"], required=True)
    parser.add_argument("--config", default="configs/emoji.yaml")
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    argv = ["--config", args.config, "--output_dir", f"runs/emoji-{args.variant}", *args.overrides]
    if args.variant == "scratch":
        argv += SCRATCH_TEXT
    config = kclip.parse_config(argv)
    load_before = os.getloadavg()
    started = time.time()
    model, history, test_metrics = kclip.train(config, verbose=2)
    seconds = time.time() - started
    line = {
        "benchmark": "emoji_text_towers",
        "variant": args.variant,
        "text_encoder": config.model.text_encoder,
        "text_encoder_trainable": config.model.text_encoder_trainable,
        "epochs": config.trainer.max_epochs,
        "image_size": config.model.image_size,
        "precision": config.trainer.precision,
        "train_and_eval_seconds": round(seconds, 1),
        "parameters": model.count_params(),
        "test": {key: round(float(value), 4) for key, value in (test_metrics or {}).items()},
        "cpu": machine(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "note": "shared 2-core machine: other jobs ran at the same time",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(line))
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
