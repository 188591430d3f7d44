#!/usr/bin/env bash
# GPU training throughput: kclip's fit step at the flickr8k configuration (ResNet50 +
# DistilBERT base, 224², text length 32, batch 128, mixed_float16, synthetic tensors) and the
# plain-torch reference on the same card, interleaved A B A B. Prints pairs/s for both.
# Meant to finish within 10 minutes, set-up included:  bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    # Whatever CUDA build of torch the registry offers; kclip itself needs nothing newer.
    .venv/bin/pip install --quiet torch
    .venv/bin/pip install --quiet --no-deps -e .
    .venv/bin/pip install --quiet keras keras-hub tensorflow-cpu jsonargparse pyyaml tqdm pillow tensorflow-datasets wandb
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for round in 1 2; do
    .venv/bin/python benchmarks/train_throughput.py --size full --batch-size 128 --precision mixed_float16 --warmup 3 --steps 10
    .venv/bin/python benchmarks/reference_torch.py --size full --batch-size 128 --precision fp16 --channels-last --warmup 3 --steps 10
done
