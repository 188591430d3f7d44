"""Memory each side's image forward allocates, op by op, and the page faults it takes.

    python benchmarks/forward_allocations.py --size full --out benchmarks/results/forward-allocations-DATE.jsonl

An eager torch forward takes most activation-sized buffers from fresh pages, which the kernel
zero-fills on first touch, so what a forward allocates is part of what it costs. For kclip's image
tower (under its training levers, in training mode, with and without `inplace_activations`) and the
reference's (in place as torchvision writes it, and out of place), one profiled call with
`profile_memory`: MiB allocated per op, summed over the call, and the minor page faults and seconds of
one unprofiled call. Two warm calls first. Prints one JSON line per variant. torch only.

The MiB are the result. The faults and seconds depend on what ran before in this process: the variants
share glibc's heap, and a forward that finds the heap already grown by another faults less.
"""
import argparse
import collections
import contextlib
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cpu_fields, emit, minor_faults  # noqa: E402
from step_phases import autocast_forward  # noqa: E402
from paired_reference import kclip_step  # noqa: E402
from reference_torch import SIZES, reference_step  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402


def allocations(forward, top):
    """(MiB allocated by the call, {op: MiB} of its `top` largest, minor faults of an unprofiled call, seconds)."""
    import torch

    for _ in range(2):
        forward()
    faults, started = minor_faults(), time.perf_counter()
    forward()
    seconds, faults = time.perf_counter() - started, minor_faults() - faults
    with torch.profiler.profile(profile_memory=True) as profile:
        forward()
    by_op = collections.Counter()
    for event in profile.key_averages():
        if event.self_cpu_memory_usage > 0:
            by_op[event.key] += event.self_cpu_memory_usage / 2**20
    return (round(sum(by_op.values())), {op: round(mib) for op, mib in by_op.most_common(top)}, faults,
            round(seconds, 3))


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--out")
    args = parser.parse_args()

    _, model, _, _ = kclip_step(args.size, args.batch_size, "fp32")
    image_size = SIZES[args.size]["image_size"]
    images = torch.randn(args.batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    kclip_images = images.contiguous() if model.backbone.image_data_format == "channels_first" else (
        images.permute(0, 2, 3, 1).contiguous())
    variants = {}
    for inplace in (True, False):
        variants[("kclip", inplace)] = lambda: model.backbone.image_encoder(kclip_images, training=True)
        reference_model = reference_step(args.size, args.batch_size, "fp32", inplace=inplace)[1]
        variants[("reference", inplace)] = (lambda module=reference_model.image_encoder: autocast_forward(
            module, images, "cpu", None))
    for (side, inplace), forward in variants.items():
        levers = (training_levers(inplace_activations=inplace, model=model) if side == "kclip"
                  else contextlib.nullcontext())
        with levers:
            total, by_op, faults, seconds = allocations(forward, args.top)
        emit({"benchmark": "forward_allocations", "side": side, "inplace": inplace, "size": args.size,
              "batch_size": args.batch_size, "precision": "fp32", "allocated_mib": total, "allocated_mib_by_op": by_op,
              "minor_faults": faults, "seconds": seconds, **cpu_fields(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    main()
