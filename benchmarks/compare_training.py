"""kclip vs the plain-torch reference, interleaved A B A B in one run, as ratios.

    python benchmarks/compare_training.py --sizes small full --precisions fp32 bf16 --rounds 2
    python benchmarks/compare_training.py --sizes full --precisions fp16 bf16 --batch-size 128 --levers on off

`--levers on off` measures kclip twice per round: with its levers at kclip.train's defaults and
with every lever and the fused Adam off (what a release outside the levers' tested ranges gets).
On a GPU each line also carries the peak GPU memory torch allocated (peak_gpu_mb).

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
sys.path.insert(0, str(HERE))
from train_throughput import LEVER_FLAGS  # noqa: E402

ALL_LEVERS_OFF = [argument for flag in LEVER_FLAGS for argument in (f"--{flag}", "off")] + ["--fused-adam", "off"]
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
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--levers", nargs="+", default=["on"], choices=["on", "off"],
                        help="kclip with its default levers (on) and/or with every lever off (off)")
    parser.add_argument("--kclip-args", default="", help="extra arguments for train_throughput.py")
    parser.add_argument("--reference-args", default="", help="extra arguments for reference_torch.py (write --reference-args=--keep-freed-memory)")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()

    lines = []
    for size in args.sizes:
        for precision in args.precisions:
            common = ["--size", size, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                      "--warmup", str(args.warmup)]
            kclip = [sys.executable, str(HERE / "train_throughput.py"), *common,
                     "--precision", KCLIP_PRECISION[precision], *args.kclip_args.split()]
            reference = [sys.executable, str(HERE / "reference_torch.py"), *common, "--precision", precision,
                         *args.reference_args.split()]
            for _ in range(args.rounds):
                for levers in args.levers:
                    line = run(kclip + (ALL_LEVERS_OFF if levers == "off" else []))
                    lines.append({**line, "levers": levers})
                lines.append(run(reference))
    if args.out:
        with open(args.out, "a") as file:
            file.writelines(json.dumps(line) + "\n" for line in lines)

    print("\n| size | precision | kclip levers | kclip step (s) | reference step (s) | kclip / reference "
          "| peak memory kclip / reference |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for precision in args.precisions:
            def pick(name, levers=None):
                return [line for line in lines if line["benchmark"] == name and line["size"] == size
                        and KCLIP_PRECISION.get(line["precision"], line["precision"]) == KCLIP_PRECISION[precision]
                        and (levers is None or line.get("levers") == levers)]
            theirs = pick("torch_reference_step")
            theirs_s = statistics.median(line["median_step_s"] for line in theirs)
            # GPU memory where measured on a GPU, else the process's peak RSS.
            memory_key = "peak_gpu_mb" if theirs[0].get("peak_gpu_mb") else "peak_rss_mb"
            for levers in args.levers:
                ours = pick("kclip_fit_step", levers)
                ours_s = statistics.median(line["median_step_s"] for line in ours)
                memory = max(line[memory_key] for line in ours) / max(line[memory_key] for line in theirs)
                print(f"| {size} | {precision} | {levers} | {ours_s:.3f} | {theirs_s:.3f} | {ours_s / theirs_s:.2f} "
                      f"| {memory:.2f} ({memory_key}) |")


if __name__ == "__main__":
    main()
