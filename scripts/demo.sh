#!/usr/bin/env bash
# The README's main job: set up, train the embedded demo, index its held-out
# images, print test recall and run sample searches. Extra arguments are config
# overrides, e.g. `bash scripts/demo.sh --trainer.max_epochs 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
