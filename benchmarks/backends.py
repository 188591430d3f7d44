"""Training step time per Keras backend, interleaved, with and without jit_compile.

    python benchmarks/backends.py --rounds 2 --out benchmarks/results/backends-2026-11-29.jsonl
    python benchmarks/backends.py --smoke     # one tiny torch run of train_throughput.py: a check only

Runs benchmarks/train_throughput.py once per (round, recipe, backend, jit_compile) in a fresh
process (KERAS_BACKEND is fixed at import), cycling through every combination in each round so
that a change in machine load hits all of them alike. Two recipes: the demo (configs/demo.yaml,
batch 64, its precision: bfloat16 on a CPU) and the small size of benchmarks/harness.py
(ResNet18-sized + 2-layer BERT at 128², batch 32, float32). Each JSON line is the child's, plus
the round, the CPU's relevant flags and the load average before and after: this 2-core machine
is shared, so read the numbers with the load beside them.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RECIPES = {
    "demo": ["--config", "configs/demo.yaml", "--batch-size", "64"],
    "small": ["--size", "small", "--batch-size", "32", "--precision", "float32"],
}
# torch's jit_compile is torch.compile, measured in jit-compile-2026-11-27.jsonl; it stays off.
RUNS = [("torch", "off"), ("jax", "on"), ("jax", "off"), ("tensorflow", "on"), ("tensorflow", "off")]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")


def cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return [flag for flag in FLAGS if flag in present]


def run_one(recipe, backend, jit, warmup, steps, timeout):
    command = [sys.executable, str(HERE / "train_throughput.py"), *RECIPES[recipe],
               "--jit-compile", jit, "--warmup", str(warmup), "--steps", str(steps)]
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(HERE.parent)}
    load_before = os.getloadavg()
    started = time.time()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=environment,
                                timeout=timeout, cwd=HERE.parent)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        record = json.loads(lines[-1]) if lines else {"error": result.stderr[-600:]}
    except subprocess.TimeoutExpired:
        record = {"error": f"timed out after {timeout} s"}
    record.update(recipe=recipe, backend=backend, jit_compile=jit, process_s=round(time.time() - started, 1),
                  load_before=[round(x, 2) for x in load_before],
                  load_after=[round(x, 2) for x in os.getloadavg()], cpu_flags=cpu_flags(),
                  cores=os.cpu_count())
    return record


def summarize(path):
    """A markdown table of a results file: per recipe, backend and jit, every round's median step."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        key = (record["recipe"], record["backend"], record["jit_compile"])
        step = record.get("median_step_s")
        loads = f"{record['load_before'][0]:.0f}–{record['load_after'][0]:.0f}"
        rows.setdefault(key, []).append(f"{step:.2f} s (load {loads})" if step else "failed")
    print("| recipe | backend | jit_compile | median step per round (1-min load average before–after) |")
    print("|---|---|---|---|")
    for (recipe, backend, jit), cells in rows.items():
        print(f"| {recipe} | {backend} | {jit} | {'; '.join(cells)} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarize", metavar="JSONL", help="print a markdown table of a results file and exit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run")
    parser.add_argument("--out", help="append the JSON lines to this file too")
    parser.add_argument("--smoke", action="store_true",
                        help="one torch run of the tiny towers, one step: a check, not a measurement")
    args = parser.parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return
    runs = RUNS
    if args.smoke:
        RECIPES["smoke"] = ["--size", "tiny", "--batch-size", "4", "--precision", "float32"]
        args.rounds, args.recipes, args.warmup, args.steps, runs = 1, ["smoke"], 1, 1, RUNS[:1]
    for round_index in range(args.rounds):
        for recipe in args.recipes:
            for backend, jit in runs:
                # Op-by-op JAX (jit off) is slow: fewer steps keep the run bounded.
                steps = args.steps if jit == "on" or backend != "jax" else max(2, args.steps // 2)
                record = {"round": round_index, "smoke": args.smoke, **run_one(recipe, backend, jit, args.warmup, steps, args.timeout)}
                line = json.dumps(record)
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as file:
                        file.write(line + "\n")


if __name__ == "__main__":
    main()
