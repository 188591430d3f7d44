"""glibc malloc settings against kclip's train step: step time, page faults and resident memory.

    python benchmarks/heap_settings.py --config configs/demo.yaml --batch-size 128 --precision float32 \
        --steps 400 --setting kclip --out benchmarks/results/heap-settings-DATE.jsonl

One process per setting (malloc's settings cannot be undone within a process). `kclip` is what
`trainer.keep_freed_memory` sets (kclip/backends/torch/heap.py: no mmap, no trimming);
`mmap-threshold-N` keeps mmap for blocks above N MiB, with trimming off; `glibc-defaults`
changes nothing (run it with `LD_PRELOAD=.../libjemalloc.so.2` to measure another allocator; the
line records LD_PRELOAD). Every other training lever is on. The step runs directly on one fixed batch
(no `fit`), so the resident-memory trace over many steps shows whether the heap settles.
Prints one JSON line: median step, median minor faults per step, resident MB every
`--trace-every` steps, and peak RSS.
"""
import argparse
import ctypes
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cpu_fields, emit, minor_faults, peak_rss_mb  # noqa: E402
from train_throughput import add_model_arguments, model_and_batch  # noqa: E402
from kclip.backends.torch import heap  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402

M_MMAP_THRESHOLD = -3


def apply(setting):
    if setting == "glibc-defaults":
        return
    if setting == "kclip":
        if not heap.keep_freed_memory():
            raise SystemExit("kclip's malloc settings did not take effect (is the C library glibc?)")
        return
    libc = ctypes.CDLL(None)
    megabytes = int(setting.rsplit("-", 1)[1])
    if libc.mallopt(heap.M_TRIM_THRESHOLD, -1) != 1 or libc.mallopt(M_MMAP_THRESHOLD, megabytes << 20) != 1:
        raise SystemExit(f"mallopt refused {setting}")


def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, precision="float32")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--trace-every", type=int, default=25)
    parser.add_argument("--setting", default="kclip",
                        choices=["glibc-defaults", "kclip", "mmap-threshold-32", "mmap-threshold-128"])
    parser.add_argument("--out")
    args = parser.parse_args()
    apply(args.setting)
    model, inputs, image_ids, policy, sequence_length = model_and_batch(args)

    import torch

    batch = ({key: torch.as_tensor(value) for key, value in inputs.items()}, torch.as_tensor(image_ids))
    times, faults, trace = [], [], []
    with training_levers(keep_freed_memory=False, model=model):  # the setting under test is applied above
        for _ in range(3):
            model.train_step(batch)
        for step in range(args.steps):
            faults_before, started = minor_faults(), time.perf_counter()
            model.train_step(batch)
            times.append(time.perf_counter() - started)
            faults.append(minor_faults() - faults_before)
            if step % args.trace_every == 0 or step == args.steps - 1:
                trace.append(resident_mb())
        peak = peak_rss_mb()
    emit({"benchmark": "heap_settings", "setting": args.setting, "ld_preload": os.environ.get("LD_PRELOAD"),
          "size": args.config or args.size,
          "batch_size": args.batch_size, "precision": policy, "steps": args.steps,
          "median_step_s": round(statistics.median(times), 4), "minor_faults_per_step": statistics.median(faults),
          "resident_mb_trace": trace, "trace_every": args.trace_every, "peak_rss_mb": round(peak, 1),
          **cpu_fields(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    main()
