#!/usr/bin/env bash
# The README's test command: set up, then run the offline test suite.
#   KCLIP_TEST_BACKEND=jax bash scripts/test.sh          # the suite on JAX (torch-only tests skip)
#   KCLIP_TEST_BACKEND=tensorflow bash scripts/test.sh -m "backend_neutral and not cross_backend"  # CI's subset
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_packages.sh
bash scripts/setup.sh
if [ -n "${KCLIP_TEST_BACKEND:-}" ]; then
    export KERAS_BACKEND="$KCLIP_TEST_BACKEND"
fi
exec .venv/bin/python -m pytest tests "$@"
