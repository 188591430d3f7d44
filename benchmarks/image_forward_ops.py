"""The image tower's forward on both sides, op by op: dtype and memory layout of each op's tensors, and op time by shape.

    python benchmarks/image_forward_ops.py --size small --precision bf16 --out benchmarks/results/image-forward-ops-DATE.jsonl

step_phases.py says the forward pass is where kclip loses; this says whether it runs different ops
(a layout or dtype the reference avoids) or the same ops slower. For each side: every 4-D tensor op
the forward dispatches, keyed by (op, input dtype:layout, output dtype:layout) with its count, where
layout is cl (channels-last contiguous), c (contiguous) or clc (both, e.g. a 1x1 kernel); then one
profiled call's self time of the ops named in --ops, keyed by input shapes. Two warm calls first.
Prints one JSON line. torch only.
"""
import argparse
import collections
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cpu_fields, emit  # noqa: E402
from step_phases import sides  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402


def layout(tensor):
    import torch

    channels_last = tensor.is_contiguous(memory_format=torch.channels_last)
    contiguous = tensor.is_contiguous()
    name = ("cl" if channels_last else "") + ("c" if contiguous else "") or f"strided{tuple(tensor.stride())}"
    return f"{str(tensor.dtype).removeprefix('torch.')}:{name}"


def dispatched_ops(forward):
    """Counter of (op, input layouts, output layout) over the 4-D tensor ops of one call of `forward`."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = collections.Counter()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            output = func(*args, **(kwargs or {}))
            inputs = tuple(layout(arg) for arg in args if isinstance(arg, torch.Tensor) and arg.ndim == 4)
            first = output[0] if isinstance(output, (tuple, list)) else output
            if inputs and isinstance(first, torch.Tensor):
                counts[(str(func.overloadpacket), inputs, layout(first))] += 1
            return output

    with Recorder():
        forward()
    return counts


def op_times_by_shape(forward, ops, top):
    """[{op, shapes, count, self_ms}] of one profiled call of `forward`, the `top` slowest among `ops`."""
    import torch

    with torch.profiler.profile(record_shapes=True) as profile:
        forward()
    rows = [event for event in profile.key_averages(group_by_input_shape=True) if event.key in ops]
    rows.sort(key=lambda event: -event.self_cpu_time_total)
    return [{"op": event.key, "shapes": str(event.input_shapes), "count": event.count,
             "self_ms": round(event.self_cpu_time_total / 1e3, 2)} for event in rows[:top]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--ops", nargs="+", default=["aten::copy_", "aten::clamp_min", "aten::add",
                                                    "aten::max_pool2d_with_indices", "aten::native_batch_norm"])
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out")
    args = parser.parse_args()

    steps = sides(args.size, args.batch_size, args.precision)
    forwards = {name: parts[1] for name, parts in steps.items()}
    line = {"benchmark": "image_forward_ops", "size": args.size, "batch_size": args.batch_size,
            "precision": args.precision}
    with training_levers(model=steps["kclip"][2]):
        for name, forward in forwards.items():
            forward(), forward()
            line[f"{name}_ops"] = [{"op": op, "inputs": list(inputs), "output": output, "count": count}
                                   for (op, inputs, output), count in sorted(dispatched_ops(forward).items())]
            line[f"{name}_op_times"] = op_times_by_shape(forward, set(args.ops), args.top)
    emit({**line, **cpu_fields(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    main()
