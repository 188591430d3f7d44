#!/usr/bin/env bash
# The GPU check: one script, run on the lent GPU machine as it is (its own python3 3.12 with
# torch 2.11 + CUDA, no TensorFlow, no network) with the wheels of benchmarks/gpu_wheels.sh
# carried in (.whl/). It writes JSON lines to $RESULTS (default $OUT/gpu-check.jsonl on the device
# tool, else benchmarks/results/gpu-check.jsonl) and is meant to finish in under 8 minutes:
#   1. kclip's fit step against the plain-torch reference (benchmarks/reference_torch.py) at the
#      flickr8k config (ResNet50 + DistilBERT base, 224², batch 128) in fp16 with loss scaling and in
#      bf16, kclip with its levers on and with all of them off: pairs/s and peak GPU memory
#      (benchmarks/compare_training.py). This is what settles `precision: auto` on GPUs.
#   2. The TF-free loader's images/s, decoding included (benchmarks/data_pipeline.py).
#   3. configs/flickr8k.yaml end to end on a generated Flickr-sized folder (2,000 images, 500x375,
#      1 epoch): training with validation, export, index (images/s), search (benchmarks/gpu_end_to_end.py).
#   4. trainer.distribution: data_parallel on the one GPU under torchrun against no distribution;
#      "not available" when this kclip or torch refuses it.
#   5. The torch-only lever tests on this torch release, on CUDA.
#
#   bash benchmarks/gpu.sh              # on the GPU machine (device tool: carry .whl)
#   bash benchmarks/gpu.sh --dry-run    # here or in CI: tiny sizes, CPU, TensorFlow made unimportable
# A failing step writes a "gpu_check_step" line with its exit code and the check goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
for argument in "$@"; do
    case "$argument" in
        --dry-run) DRY_RUN=1 ;;
        *) echo "usage: bash benchmarks/gpu.sh [--dry-run]" >&2; exit 2 ;;
    esac
done
export KERAS_BACKEND=torch PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
BUDGET_S=420  # no step starts after this many seconds, none runs 30 s past it: under 8 minutes with the install
SLOWER=1      # the dry run's CPU is slower than the GPU machine even at tiny sizes: its limits are stretched
if [ "$DRY_RUN" = 1 ]; then
    PY="${PYTHON:-.venv/bin/python}"
    export CUDA_VISIBLE_DEVICES=""
    # As on the GPU machine: no TensorFlow (tests/no_tensorflow_site hides it).
    export PYTHONPATH="$PWD/tests/no_tensorflow_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    RESULTS="${RESULTS:-$WORK/gpu-check-dry-run.jsonl}"
    # fp16 only: its loss scaling is the longer path, and a 2-core CPU takes minutes per precision.
    SIZE=tiny BATCH=8 WARMUP=1 STEPS=2 IMAGES=40 PIPELINE=(--smoke) DP_STEPS=2 WORKERS=1 PRECISIONS=(fp16)
    SLOWER=8 BUDGET_S=100000
else
    PY="${PYTHON:-python3}"
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kclip-site \
            .whl/*.whl || exit 1
        export PYTHONPATH="/tmp/kclip-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    WORK=/tmp/kclip_gpu_check
    mkdir -p "$WORK"
    RESULTS="${RESULTS:-${OUT:-benchmarks/results}/gpu-check.jsonl}"
    SIZE=full BATCH=128 WARMUP=3 STEPS=10 IMAGES=2000 DP_STEPS=20 WORKERS="" PRECISIONS=(fp16 bf16)
    PIPELINE=(--sources pydataset --images 1024 --batch-size 128 --workers 15 --repeats 2)
fi
mkdir -p "$(dirname "$RESULTS")"
STARTED=$SECONDS

record() {  # one JSON line about the check itself
    "$PY" -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@" | tee -a "$RESULTS"
}

step() {  # step NAME TIMEOUT_S COMMAND...: runs it unless the budget is spent; records a failure
    local name="$1" limit="$2"
    shift 2
    if [ $((SECONDS - STARTED)) -ge "$BUDGET_S" ]; then
        record benchmark gpu_check_step step "$name" status skipped why "time budget spent"
        return 0
    fi
    echo "=== gpu check: $name ($((SECONDS - STARTED)) s in) ==="
    limit=$((limit * SLOWER))
    local left=$((BUDGET_S + 30 - (SECONDS - STARTED)))  # no step may run past the budget either
    [ "$limit" -gt "$left" ] && limit=$left
    # Through bash -c, so that the step may be one of the functions below (exported).
    timeout "$limit" bash -c '"$@"' step "$@"
    local rc=$?
    if [ $rc -ne 0 ]; then
        record benchmark gpu_check_step step "$name" status failed rc "$rc"
    fi
    return 0
}

environment() {
    "$PY" - "$RESULTS" <<'EOF'
import importlib.util, json, os, platform, sys
import torch
import kclip  # must import without TensorFlow
line = {"benchmark": "gpu_check_environment", "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "tensorflow_installed": importlib.util.find_spec("tensorflow") is not None,
        "keras": __import__("keras").__version__, "cpu_count": os.cpu_count(), "dry_run": os.environ.get("CUDA_VISIBLE_DEVICES") == ""}
if torch.cuda.is_available():
    line.update(gpu=torch.cuda.get_device_name(0), compute_capability=list(torch.cuda.get_device_capability(0)),
                gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
from kclip.utils.precision import explain_precision
line["precision_auto"] = list(explain_precision("auto"))
print(json.dumps(line))
open(sys.argv[1], "a").write(json.dumps(line) + "\n")
EOF
}

data_parallel() {
    local common=(benchmarks/gpu_end_to_end.py --size "$SIZE" --images "$IMAGES" --train-only --steps "$DP_STEPS"
                  --work "$WORK" --out "$WORK/dp.jsonl" ${WORKERS:+--workers "$WORKERS"} --batch-size "$BATCH")
    rm -f "$WORK/dp.jsonl"
    "$PY" "${common[@]}" --distribution none || return 1
    if ! "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 "${common[@]}" --distribution data_parallel \
            > "$WORK/dp.log" 2>&1; then
        tail -20 "$WORK/dp.log"
        record benchmark gpu_check_data_parallel status "not available" \
            why "$(grep -E 'Error|error' "$WORK/dp.log" | tail -1 | cut -c1-300)"
        return 0
    fi
    "$PY" - "$WORK/dp.jsonl" "$RESULTS" <<'EOF'
import json, sys
lines = [json.loads(text) for text in open(sys.argv[1])]
plain = next(line for line in lines if line["distribution"] == "none")
parallel = next(line for line in lines if line["distribution"] == "data_parallel")
difference = max(abs(a - b) for a, b in zip(plain["loss"], parallel["loss"]))
line = {"benchmark": "gpu_check_data_parallel", "status": "same" if difference <= 1e-3 else "differs",
        "loss_none": plain["loss"], "loss_data_parallel": parallel["loss"], "max_loss_difference": difference,
        "train_pairs_per_s_none": plain.get("train_pairs_per_s"),
        "train_pairs_per_s_data_parallel": parallel.get("train_pairs_per_s"), "world_size": parallel["world_size"]}
print(json.dumps(line))
open(sys.argv[2], "a").write(json.dumps(line) + "\n")
EOF
}

lever_tests() {
    local summary
    summary="$("$PY" -m pytest -q -p no:cacheprovider tests/test_backend_levers.py tests/test_training_levers.py \
        tests/test_fused_batch_norm.py tests/test_graph_memory.py tests/test_inplace_ops.py tests/test_traced_text.py \
        tests/test_patch_guards.py 2>&1 | tee "$WORK/levers.log" | tail -1)"
    record benchmark gpu_check_lever_tests torch "$("$PY" -c 'import torch; print(torch.__version__)')" summary "$summary"
}

export PY RESULTS WORK SIZE BATCH IMAGES DP_STEPS WORKERS
export -f record environment data_parallel lever_tests
step environment 120 environment
step fit_vs_reference 300 "$PY" benchmarks/compare_training.py --sizes "$SIZE" --precisions "${PRECISIONS[@]}" \
    --batch-size "$BATCH" --rounds 1 --warmup "$WARMUP" --steps "$STEPS" --levers on off --out "$RESULTS"
step input_pipeline 120 "$PY" benchmarks/data_pipeline.py "${PIPELINE[@]}" --work "$WORK/pipeline" --out "$RESULTS"
step end_to_end 240 "$PY" benchmarks/gpu_end_to_end.py --size "$SIZE" --images "$IMAGES" --work "$WORK" \
    --out "$RESULTS" ${WORKERS:+--workers "$WORKERS"} --batch-size "$BATCH"
step data_parallel 180 data_parallel
if [ "$DRY_RUN" = 0 ]; then  # CI runs these tests on every release itself (scripts/test_torch_releases.sh)
    step lever_tests 150 lever_tests
fi
record benchmark gpu_check_done seconds "$((SECONDS - STARTED))" results "$RESULTS"
