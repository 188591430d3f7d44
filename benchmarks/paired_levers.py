"""One training lever on against off, in one process, in alternating blocks of steps (ABBA).

    python benchmarks/paired_levers.py --config configs/demo.yaml --batch-size 128 --precision float32 \
        --lever fold_pool_padding --blocks 16 --steps-per-block 5 --out benchmarks/results/levers-paired-DATE.jsonl

Separate processes on this shared 2-core machine drift by 5-10% from run to run, more than a
lever's effect (benchmarks/results/levers-demo-2026-11-30.jsonl shows a lever "losing" in all
three interleaved rounds that won in three rounds before). Levers that switch at run time are
compared here within one process instead: the same model and batch, blocks of steps with the
lever on and off in the order on, off, off, on, ..., the first step of each block not timed.
Training continues through the blocks, so both arms see the same weights over time. Prints
one JSON line: the median step with the lever on and off, and their ratio.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cpu_fields, emit  # noqa: E402
from train_throughput import LEVER_FLAGS, add_model_arguments, model_and_batch  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402

LEVERS = [keyword for keyword, *_ in LEVER_FLAGS.values()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--lever", required=True, choices=LEVERS)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--steps-per-block", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    model, inputs, image_ids, policy, sequence_length = model_and_batch(args)

    import torch

    batch = ({key: torch.as_tensor(value) for key, value in inputs.items()}, torch.as_tensor(image_ids))
    times = {True: [], False: []}
    model.train_step(batch)  # builds the optimizer's variables
    for block in range(args.blocks):
        lever_on = block % 4 in (0, 3)
        with training_levers(**{args.lever: lever_on}, model=model):
            for step in range(args.steps_per_block + 1):
                started = time.perf_counter()
                model.train_step(batch)
                if step:
                    times[lever_on].append(time.perf_counter() - started)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    emit({"benchmark": "paired_lever", "lever": args.lever, "size": args.config or args.size,
          "batch_size": args.batch_size, "image_size": int(inputs["images"].shape[1]),
          "sequence_length": sequence_length, "precision": policy, "steps_each": len(times[True]),
          "on_median_step_s": round(on, 4), "off_median_step_s": round(off, 4), "on_over_off": round(on / off, 3),
          **cpu_fields(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    main()
