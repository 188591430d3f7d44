#!/usr/bin/env bash
# The real-timm case of tests/test_towers_formats.py, which the main suite skips: timm and the
# torchvision release made for the venv's torch go into a folder of their own (.venv/timm-site),
# so the venv itself stays as setup.sh made it. Where they import, the case runs and a skip
# fails; where they don't (PyPI's torchvision is built against a CUDA torch, and a CPU torch
# lacks its libraries), this says why and leaves the case on tests/skip_allowlist.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=.venv/timm-site
# torchvision 0.N+15 is the release made for torch 2.N.
VISION=$(.venv/bin/python -c "import torch; minor = int(torch.__version__.split('.')[1]); print(f'0.{minor + 15}.*')")
if [ ! -d "$SITE/timm" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --target "$SITE" timm "torchvision==$VISION"
fi
if why=$(PYTHONPATH="$SITE" .venv/bin/python -c "import timm" 2>&1); then
    echo "=== the real-timm case (timm in $SITE) ==="
    PYTHONPATH="$SITE" KCLIP_REQUIRE_TIMM=1 exec .venv/bin/python -m pytest -rs \
        "tests/test_towers_formats.py::test_timm_resnet50_folder_gives_timm_pooled_features[timm]" "$@"
fi
# PyPI's torch 2.14.1 (a CUDA build that runs on the CPU) has a torchvision that imports: use the
# release venv scripts/test_torch_releases.sh made, where it exists.
RELEASE_PYTHON="${KCLIP_TORCH_RELEASES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kclip/torch-releases}/2.14.1/bin/python"
if [ -x "$RELEASE_PYTHON" ]; then
    SITE214=.venv/timm-site-2.14.1
    if [ ! -d "$SITE214/timm" ]; then
        .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --target "$SITE214" timm "torchvision==0.29.1"
    fi
    echo "=== the real-timm case on torch 2.14.1 (timm in $SITE214) ==="
    PYTHONPATH="$SITE214:$PWD/tests/no_tensorflow_site" KERAS_BACKEND=torch KCLIP_REQUIRE_TIMM=1 exec "$RELEASE_PYTHON" \
        -m pytest -rs -p no:cacheprovider \
        "tests/test_towers_formats.py::test_timm_resnet50_folder_gives_timm_pooled_features[timm]" "$@"
fi
echo "timm does not import beside this torch ($(.venv/bin/python -c 'import torch; print(torch.__version__)'), torchvision $VISION):"
echo "$why" | tail -n 1
echo "The real-timm case stays skipped here (tests/skip_allowlist.txt); its [reference] case ran in the suite."
