#!/usr/bin/env bash
# GPU training throughput: kclip's fit step at the flickr8k configuration (ResNet50 +
# DistilBERT base, 224², text length 32, batch 128, synthetic tensors) and the plain-torch
# reference on the same card, interleaved A B A B, in float16 (loss scaling) and in bfloat16.
# `precision: auto` picks bf16 on compute capability >= 8.0 from NVIDIA's specifications
# (same tensor-core rate as fp16, no loss scaling); this script is what measures that choice.
# Prints pairs/s for each.
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
.venv/bin/python -c "import torch; print('compute capability', torch.cuda.get_device_capability(0))"
for round in 1 2; do
    for precision in fp16 bf16; do
        policy=$([ "$precision" = fp16 ] && echo mixed_float16 || echo mixed_bfloat16)
        .venv/bin/python benchmarks/train_throughput.py --size full --batch-size 128 --precision "$policy" --warmup 3 --steps 10
        .venv/bin/python benchmarks/reference_torch.py --size full --batch-size 128 --precision "$precision" --warmup 3 --steps 10
    done
done
