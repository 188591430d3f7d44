#!/usr/bin/env bash
# Builds the wheel folder that the GPU check (benchmarks/gpu.sh) installs on the lent GPU machine:
# what kclip imports that the machine's image lacks (it has Python 3.12, torch 2.11 + CUDA, JAX,
# numpy, pillow, pyyaml, tqdm, rich, h5py, ..., and no network), for CPython 3.12 on manylinux
# x86-64, without dependencies, so nothing the machine has is replaced.
#   bash benchmarks/gpu_wheels.sh            # -> .whl/ (git-ignored through .git/info/exclude)
#   bash benchmarks/gpu_wheels.sh --check    # builds into a temporary folder, checks the size, removes it
# The versions are the project venv's, so the GPU machine runs what CI tested. keras-hub comes
# without its TensorFlow requirements (tensorflow-text), which kclip does not need.
# The folder must stay under the device tool's 64 MiB per call (with the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MB=48  # leaves room for the working tree within the 64 MiB a call carries
DEST=.whl
if [ "${1:-}" = "--check" ]; then
    DEST="$(mktemp -d)"
    trap 'rm -rf "$DEST"' EXIT
fi
# Imported by `import kclip`, its CLI, the search page and keras/keras-hub themselves, and not in
# the GPU machine's image (its package list: /work/.library/device/KINDS.md in this workplace).
PACKAGES=(keras keras-hub namex optree jsonargparse typeshed-client docstring-parser
          fastapi opentelemetry-api starlette pydantic pydantic-core annotated-types typing-inspection python-multipart uvicorn
          faiss-cpu)
pinned=()
for package in "${PACKAGES[@]}"; do
    version="$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package" \
               2>/dev/null || true)"
    if [ -z "$version" ]; then
        echo "gpu_wheels: $package is not installed in .venv; run bash scripts/setup.sh first" >&2
        exit 1
    fi
    pinned+=("$package==$version")
done
mkdir -p "$DEST"
if [ "$DEST" = .whl ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
    mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude
fi
rm -f "$DEST"/*.whl
for requirement in "${pinned[@]}"; do
    # pip matches each manylinux tag exactly: name the ones PyPI's builds use.
    .venv/bin/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
        -d "$DEST" "$requirement"
done
size_mb=$(( $(du -sk "$DEST" | cut -f1) / 1024 ))
echo "gpu_wheels: $(ls "$DEST" | wc -l) wheels, ${size_mb} MiB in $DEST"
ls "$DEST"
if [ "$size_mb" -ge "$LIMIT_MB" ]; then
    echo "gpu_wheels: ${size_mb} MiB is over the ${LIMIT_MB} MiB budget" >&2
    exit 1
fi
