"""Each training lever switched off in turn, against kclip's defaults, interleaved in one run.

    python benchmarks/ablate_levers.py --size full --precision mixed_bfloat16 --rounds 2

Every measurement is a fresh train_throughput.py process. Rounds run the variants
in the same order (defaults, then each lever off), so slow drift on a noisy machine
hits them alike. Prints the JSON lines, then median step, its ratio to the
defaults, and peak RSS per variant; `--out FILE` appends the lines to FILE.
"""

import argparse
import json
import statistics
import sys

from compare_training import HERE, run

VARIANTS = {
    "defaults": [],
    "fused Adam off": ["--fused-adam", "off"],
    "fast conv kernels off": ["--fast-conv-kernels", "off"],
    "fused attention off": ["--fused-attention", "off"],
    "pool padding fold off": ["--fold-pool-padding", "off"],
    "release intermediates off": ["--release-intermediates", "off"],
    "fused batch norm off": ["--fused-batch-norm", "off"],
    "keep freed memory on": ["--keep-freed-memory", "on"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small")
    parser.add_argument("--config", help="take the towers from a config instead of --size (e.g. configs/demo.yaml)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()

    lines = {name: [] for name in args.variants}
    towers = ["--config", args.config] if args.config else ["--size", args.size]
    command = [sys.executable, str(HERE / "train_throughput.py"), *towers, "--batch-size", str(args.batch_size),
               "--precision", args.precision, "--steps", str(args.steps)]
    for _ in range(args.rounds):
        for name in args.variants:
            lines[name].append(run(command + VARIANTS[name]))
    if args.out:
        with open(args.out, "a") as file:
            file.writelines(json.dumps(line) + "\n" for variant in lines.values() for line in variant)

    base = statistics.median(line["median_step_s"] for line in lines[args.variants[0]])
    print(f"\n{args.config or args.size}, batch {args.batch_size}, {args.precision}: {args.rounds} rounds")
    print("| variant | step (s) | step / first variant | peak RSS (MB) |")
    print("|---|---|---|---|")
    for name, measured in lines.items():
        step = statistics.median(line["median_step_s"] for line in measured)
        memory = max(line["peak_rss_mb"] for line in measured)
        print(f"| {name} | {step:.3f} | {step / base:.2f} | {memory:.0f} |")


if __name__ == "__main__":
    main()
