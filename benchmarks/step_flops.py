"""How close each training step comes to this CPU's arithmetic peak: kclip and the reference, one process.

    python benchmarks/step_flops.py --size full --blocks 4 --steps-per-block 2 \
        --out benchmarks/results/step-flops-DATE.jsonl

A ratio goal such as "kclip / reference <= 0.9" asks kclip to do the reference's arithmetic in 90% of
its time. Where the reference already runs near the CPU's peak rate, no faithful implementation can:
this script says how near. It counts each side's floating-point operations in one training step
(torch.utils.flop_counter: matmuls and convolutions, forward and backward, the work that dominates
both), times both steps in alternating blocks as paired_reference.py does, and measures the best
rates this CPU reaches on its own: a 2048² float32 matmul, and the forward and backward of a 3×3,
128-channel convolution in channels-last order, batch 32 at 28², the shape class that takes most of
ResNet50's time. Prints one JSON line: FLOPs per step, each side's achieved GFLOP/s, the peaks, and
the rate kclip would need to reach 0.9 of the reference's step. float32 only.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cpu_fields, emit  # noqa: E402
from matmul_roofline import gflops as matmul_gflops  # noqa: E402
from paired_reference import alternate, paired_models  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402


def step_flops(step):
    """Floating-point operations of one call of `step` (matmuls and convolutions, both directions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def conv_gflops(reps=10, batch=32, channels=128, size=28):
    """GFLOP/s of a 3×3 convolution's forward and backward (input and weight gradients), channels-last."""
    import torch
    import torch.nn.functional as F

    images = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    images.requires_grad_(True)
    weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
    weight.requires_grad_(True)

    def once():
        F.conv2d(images, weight, padding=1).sum().backward()

    once()
    started = time.perf_counter()
    for _ in range(reps):
        once()
    seconds = (time.perf_counter() - started) / reps
    # Forward, input gradient and weight gradient: each 2·N·H·W·C_out·C_in·9 operations.
    return round(3 * 2 * batch * size * size * channels * channels * 9 / seconds / 1e9, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps-per-block", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch

    kclip, reference, policy, sequence_length, model = paired_models(args.size, args.batch_size, "fp32")
    with training_levers(model=model):
        kclip()  # the first step builds the optimizer's variables; count a steady one
        flops = {"kclip": step_flops(kclip), "reference": step_flops(reference)}
        times = alternate({"kclip": kclip, "reference": reference}, args.blocks, args.steps_per_block)
    peaks = {"matmul_2048_gflops": matmul_gflops(torch.float32, 2048, 10),
             "conv3x3_128ch_gflops": conv_gflops()}
    peak = max(peaks.values())
    medians = {name: statistics.median(times[name]) for name in times}
    achieved = {name: flops[name] / medians[name] / 1e9 for name in medians}
    needed = flops["kclip"] / (0.9 * medians["reference"]) / 1e9
    emit({"benchmark": "step_flops", "size": args.size, "batch_size": args.batch_size, "precision": "fp32",
          "kclip_policy": policy, "sequence_length": sequence_length, "steps_each": len(times["kclip"]),
          "kclip_gflop_per_step": round(flops["kclip"] / 1e9, 1),
          "reference_gflop_per_step": round(flops["reference"] / 1e9, 1),
          "kclip_median_step_s": round(medians["kclip"], 4),
          "reference_median_step_s": round(medians["reference"], 4),
          "kclip_over_reference": round(medians["kclip"] / medians["reference"], 3),
          "kclip_gflops": round(achieved["kclip"], 1), "reference_gflops": round(achieved["reference"], 1),
          **peaks, "reference_fraction_of_peak": round(achieved["reference"] / peak, 3),
          "gflops_needed_for_0_9": round(needed, 1), "needed_fraction_of_peak": round(needed / peak, 3),
          "threads": torch.get_num_threads(), "torch": torch.__version__,
          **cpu_fields(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    main()
