"""Matmul throughput per dtype on this CPU: whether bf16 is native here or emulated.

    python benchmarks/matmul_roofline.py [--size 1024] [--reps 20]
    python benchmarks/matmul_roofline.py --smoke      # seconds: checks that it runs, measures nothing

Prints one JSON line with GFLOP/s for float32, bfloat16 and float16 (at 256², torch), the CPU model and
flags and the load average. Native bf16 runs about 2x float32; emulated bf16 runs 100x slower.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import json  # noqa: E402

import torch  # noqa: E402

from harness import cpu_fields  # noqa: E402


def gflops(dtype, size, reps, budget_s=20.0):
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    started, done = time.perf_counter(), 0
    # An emulated dtype can be 100x slower: stop at the time budget rather than at `reps`.
    while done < reps and time.perf_counter() - started < budget_s:
        a @ b
        done += 1
    return round(2 * size**3 * done / (time.perf_counter() - started) / 1e9, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="64² products, 2 repetitions: a check, not a measurement")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.reps = 64, 2
    small = 32 if args.smoke else 256
    line = {"benchmark": "matmul_gflops", "smoke": args.smoke, "size": args.size, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "onednn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            **{name: gflops(dtype, args.size, args.reps) for name, dtype in
               (("float32", torch.float32), ("bfloat16", torch.bfloat16))},
            # float16 is emulated on every CPU here; a 1024² product takes 20 s, so a smaller one.
            f"float16_at_{small}": gflops(torch.float16, small, args.reps, budget_s=5.0),
            "date": time.strftime("%Y-%m-%d"), **cpu_fields()}
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
