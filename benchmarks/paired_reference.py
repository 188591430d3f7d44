"""kclip against the plain-PyTorch reference in one process, in alternating blocks of steps (ABBA).

    python benchmarks/paired_reference.py --size small --precision fp32 --blocks 12 --steps-per-block 3 \
        --out benchmarks/results/paired-reference-DATE.jsonl

compare_training.py runs each side in its own process, and on this shared 2-core machine one
process runs 5-10% faster or slower than the next, so a ratio needs many rounds to settle. Here
both models live in one process and take turns: blocks of steps ordered kclip, reference,
reference, kclip, ..., the first step of each block not timed. Drift then hits both sides alike.
Both run their step directly on fixed tensors: kclip's `train_step` under its training levers
(`fit`'s hand-over from tf.data is left out, as the reference has no data loader), the
reference's forward, backward and Adam step. Peak memory cannot be told apart in one process;
compare_training.py measures it. The two also share one heap: each reuses memory the other has
already faulted in, which a process of its own pays for, so this ratio answers a narrower question
than compare_training.py's (on 2026-11-30 it read 1.10-1.12 fp32 and 1.17-1.21 bf16 at the small
size, where compare_training.py read 1.11 and 1.03). Prints one JSON line with both medians and
their ratio.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cpu_fields, emit  # noqa: E402
from reference_torch import reference_step  # noqa: E402
from train_throughput import model_and_batch  # noqa: E402
from compare_training import KCLIP_PRECISION  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=sorted(KCLIP_PRECISION))
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--steps-per-block", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch

    kclip_args = argparse.Namespace(size=args.size, config=None, batch_size=args.batch_size,
                                    precision=KCLIP_PRECISION[args.precision], sequence_length=None,
                                    data_format="auto", jit_compile="off")
    model, inputs, image_ids, policy, sequence_length = model_and_batch(kclip_args)
    batch = ({key: torch.as_tensor(value) for key, value in inputs.items()}, torch.as_tensor(image_ids))
    reference, _, _, _ = reference_step(args.size, args.batch_size, args.precision)
    with training_levers():
        steps = {"kclip": lambda: model.train_step(batch), "reference": reference}
        times = {name: [] for name in steps}
        for block in range(args.blocks):
            name = "kclip" if block % 4 in (0, 3) else "reference"
            for step in range(args.steps_per_block + 1):
                started = time.perf_counter()
                steps[name]()
                if step:
                    times[name].append(time.perf_counter() - started)
    kclip_step, reference_step_s = (statistics.median(times[name]) for name in ("kclip", "reference"))
    emit({"benchmark": "paired_reference", "size": args.size, "batch_size": args.batch_size,
          "precision": args.precision, "kclip_policy": policy, "sequence_length": sequence_length,
          "steps_each": len(times["kclip"]), "kclip_median_step_s": round(kclip_step, 4),
          "reference_median_step_s": round(reference_step_s, 4),
          "kclip_over_reference": round(kclip_step / reference_step_s, 3),
          **cpu_fields(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    main()
