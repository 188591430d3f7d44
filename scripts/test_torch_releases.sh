#!/usr/bin/env bash
# Runs the torch-only lever tests on each torch release the levers' guards admit, one venv per
# release in a cache folder (reused across runs), on top of the project's own .venv:
#   bash scripts/test_torch_releases.sh                 # every release below
#   bash scripts/test_torch_releases.sh 2.15.0          # one release
#   KCLIP_TORCH_RELEASES_DIR=/big/disk bash scripts/test_torch_releases.sh
#
# Each release venv holds torch (and, for PyPI's CUDA builds, the NVIDIA libraries torch links
# against, which a CPU run loads but never uses) and nothing else: a .pth file appends .venv's
# site-packages behind it, so keras, keras-hub and the test tools are .venv's while torch is the
# release's. The CPU build of 2.13 is .venv's own. PyPI's 2.11, 2.14 and 2.15 wheels are CUDA
# builds that run on a CPU; a first run downloads about 3 GB per release (a few minutes each),
# later runs reuse the venvs. torch 2.11 is also what the lent GPU machine has
# (benchmarks/gpu.sh runs the same tests there, on CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
RELEASES=("$@")
if [ ${#RELEASES[@]} -eq 0 ]; then
    RELEASES=(2.11.0 2.13.0 2.14.1 2.15.0)
fi
CACHE="${KCLIP_TORCH_RELEASES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kclip/torch-releases}"
MAIN_SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
MAIN_PYTHON="$(.venv/bin/python -c 'import sys; print(sys.executable)')"
# The lever tests: every torch_only file, plus the guards' own tests.
TESTS=(tests/test_backend_levers.py tests/test_training_levers.py tests/test_fused_batch_norm.py
       tests/test_graph_memory.py tests/test_heap.py tests/test_inplace_ops.py tests/test_traced_text.py
       tests/test_patch_guards.py tests/test_versions.py)

release_python() {
    local version="$1" venv="$CACHE/$1"
    if [ "$version" = "$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')" ]; then
        echo "$MAIN_PYTHON"
        return
    fi
    if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$version')" \
            2>/dev/null; then
        rm -rf "$venv"
        mkdir -p "$CACHE"
        "$MAIN_PYTHON" -m venv --without-pip "$venv"
        # This machine's pip constraints cap torch (pip config list); the release asked for wins here.
        PIP_CONSTRAINT=/dev/null .venv/bin/pip install --quiet --disable-pip-version-check \
            --prefix "$venv" --ignore-installed "torch==$version" >&2
        local site
        site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        echo "import site; site.addsitedir('$MAIN_SITE')" > "$site/zz_kclip_project_venv.pth"
    fi
    echo "$venv/bin/python"
}

status=0
for version in "${RELEASES[@]}"; do
    echo "=== torch $version: lever tests ==="
    python="$(release_python "$version")"
    found="$("$python" -c 'import torch; print(torch.__version__)')"
    echo "torch $found from $("$python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
    # TensorFlow made unimportable (tests/no_tensorflow_site), as on a GPU user's machine: beside a
    # CUDA build of torch, TensorFlow 2.21 in the same process crashed a conv's backward here.
    if ! KERAS_BACKEND=torch PYTHONPATH="$PWD/tests/no_tensorflow_site${PYTHONPATH:+:$PYTHONPATH}" \
            "$python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"; then
        echo "=== torch $version: lever tests FAILED ==="
        status=1
    fi
done
exit $status
