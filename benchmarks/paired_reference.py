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

from harness import cpu_fields, emit, minor_faults  # noqa: E402
from reference_torch import reference_step  # noqa: E402
from train_throughput import model_and_batch  # noqa: E402
from compare_training import KCLIP_PRECISION  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402


def kclip_step(size, batch_size, precision="fp32"):
    """(step(), model, policy, sequence length): kclip's `train_step` on one fixed batch, as torch tensors.

    The step must run inside `training_levers(model=model)`, as `fit` runs it.
    """
    import torch

    kclip_args = argparse.Namespace(size=size, config=None, batch_size=batch_size,
                                    precision=KCLIP_PRECISION[precision], sequence_length=None,
                                    data_format="auto", jit_compile="off")
    model, inputs, image_ids, policy, sequence_length = model_and_batch(kclip_args)
    batch = ({key: torch.as_tensor(value) for key, value in inputs.items()}, torch.as_tensor(image_ids))
    return (lambda: model.train_step(batch)), model, policy, sequence_length


def paired_models(size, batch_size, precision="fp32", reference_inplace=True):
    """(kclip step, reference step, kclip's policy, sequence length, kclip's model): both steps on fixed
    tensors, in this process; the model goes to `training_levers(model=...)`, as `kclip.train` hands it."""
    kclip, model, policy, sequence_length = kclip_step(size, batch_size, precision)
    reference = reference_step(size, batch_size, precision, inplace=reference_inplace)[0]
    return kclip, reference, policy, sequence_length, model


def alternate(steps, blocks, steps_per_block, faults=None):
    """{name: step seconds}: the two steps of `steps` in blocks ordered A B B A ..., each block's first step untimed.

    With a dict as `faults`, it gets {name: minor page faults of each timed step}.
    """
    first, second = steps
    times = {name: [] for name in steps}
    counted = {name: [] for name in steps}
    for block in range(blocks):
        name = first if block % 4 in (0, 3) else second
        for step in range(steps_per_block + 1):
            faults_before, started = minor_faults(), time.perf_counter()
            steps[name]()
            if step:
                times[name].append(time.perf_counter() - started)
                counted[name].append(minor_faults() - faults_before)
    if faults is not None:
        faults.update(counted)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=sorted(KCLIP_PRECISION))
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--steps-per-block", type=int, default=3)
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=False,
                        help="glibc keeps freed memory in the process (kclip's heap lever), for both sides: "
                             "malloc's settings are process-wide")
    parser.add_argument("--reference-inplace", action=argparse.BooleanOptionalAction, default=True,
                        help="the reference's ReLUs and residual sums in place, as torchvision writes them (default on)")
    parser.add_argument("--out")
    args = parser.parse_args()

    kclip, reference, policy, sequence_length, model = paired_models(args.size, args.batch_size, args.precision,
                                                                     args.reference_inplace)
    faults = {}
    with training_levers(keep_freed_memory=args.keep_freed_memory, model=model):
        times = alternate({"kclip": kclip, "reference": reference}, args.blocks, args.steps_per_block, faults)
    kclip_step, reference_step_s = (statistics.median(times[name]) for name in ("kclip", "reference"))
    emit({"benchmark": "paired_reference", "size": args.size, "batch_size": args.batch_size,
          "precision": args.precision, "kclip_policy": policy, "sequence_length": sequence_length,
          "steps_each": len(times["kclip"]), "kclip_median_step_s": round(kclip_step, 4),
          "reference_median_step_s": round(reference_step_s, 4),
          "kclip_over_reference": round(kclip_step / reference_step_s, 3),
          "keep_freed_memory": args.keep_freed_memory, "reference_inplace": args.reference_inplace,
          "kclip_minor_faults_per_step": statistics.median(faults["kclip"]),
          "reference_minor_faults_per_step": statistics.median(faults["reference"]),
          **cpu_fields(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    main()
