"""kclip vs the plain-torch reference, interleaved A B A B in one run, as ratios.

    python benchmarks/compare_training.py --sizes small full --precisions fp32 bf16 --rounds 2

Each measurement is a fresh process (train_throughput.py or reference_torch.py), so one
run's memory does not leak into the next. Prints every JSON line, then a table of
median step times and kclip/reference ratios; `--out FILE` appends the lines to FILE.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KCLIP_PRECISION = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def run(command):
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = json.loads([text for text in output.splitlines() if text.startswith("{")][-1])
    print(json.dumps(line), flush=True)
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "full"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--kclip-args", default="", help="extra arguments for train_throughput.py")
    parser.add_argument("--reference-args", default="", help="extra arguments for reference_torch.py (write --reference-args=--keep-freed-memory)")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()

    lines = []
    for size in args.sizes:
        for precision in args.precisions:
            common = ["--size", size, "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
            kclip = [sys.executable, str(HERE / "train_throughput.py"), *common,
                     "--precision", KCLIP_PRECISION[precision], *args.kclip_args.split()]
            reference = [sys.executable, str(HERE / "reference_torch.py"), *common, "--precision", precision,
                         *args.reference_args.split()]
            for _ in range(args.rounds):
                lines.append(run(kclip))
                lines.append(run(reference))
    if args.out:
        with open(args.out, "a") as file:
            file.writelines(json.dumps(line) + "\n" for line in lines)

    print("\n| size | precision | kclip step (s) | reference step (s) | kclip / reference | peak RSS kclip / reference |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        for precision in args.precisions:
            def pick(name):
                return [line for line in lines if line["benchmark"] == name and line["size"] == size
                        and KCLIP_PRECISION.get(line["precision"], line["precision"]) == KCLIP_PRECISION[precision]]
            ours, theirs = pick("kclip_fit_step"), pick("torch_reference_step")
            ours_s = statistics.median(line["median_step_s"] for line in ours)
            theirs_s = statistics.median(line["median_step_s"] for line in theirs)
            memory = max(line["peak_rss_mb"] for line in ours) / max(line["peak_rss_mb"] for line in theirs)
            print(f"| {size} | {precision} | {ours_s:.3f} | {theirs_s:.3f} | {ours_s / theirs_s:.2f} | {memory:.2f} |")


if __name__ == "__main__":
    main()
