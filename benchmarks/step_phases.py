"""Where kclip's training step loses to the reference: forward, backward and update, timed apart, one process.

    python benchmarks/step_phases.py --size small --rounds 3 --out benchmarks/results/step-phases-DATE.jsonl

Both models live in one process and take turns, ABBA, as in paired_reference.py. Each step is timed in
three parts: the forward pass with the loss, `backward()`, and the optimizer's update. Each side runs its own
step unchanged (kclip: `DualEncoder.train_step` under its training levers; the reference:
benchmarks/reference_torch.py's step), with `backward` and the update wrapped to mark the times. Then the image tower's forward alone runs under torch's profiler on each
side, twice: its wall time against the sum of its ops' own time says how much of it is Python between the
ops (Keras' layer calls) rather than kernels. Each step also counts its minor page faults, and
--keep-freed-memory runs both sides with glibc keeping freed memory. --precision bf16 runs kclip under
mixed_bfloat16 and the reference under bf16 autocast (its step's own, and around its image forward).
Prints one JSON line with every median and the image forward's most different ops. torch only.
"""
import argparse
import collections
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import cpu_fields, emit, minor_faults  # noqa: E402
from paired_reference import kclip_step  # noqa: E402
from reference_torch import SIZES, reference_step  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402


def phased(step, optimizer, update_method):
    """`step` as a function returning its parts' seconds: the real step, with `Tensor.backward` and the
    optimizer's `update_method` wrapped to mark when each starts and ends (forward = until backward)."""
    import torch

    marks = {}

    def marked(name, function):
        def wrapper(*args, **kwargs):
            marks[f"{name}_start"] = time.perf_counter()
            result = function(*args, **kwargs)
            marks[f"{name}_end"] = time.perf_counter()
            return result
        return wrapper

    setattr(optimizer, update_method, marked("update", getattr(optimizer, update_method)))

    def run():
        backward = torch.Tensor.backward
        torch.Tensor.backward = marked("backward", backward)
        faults, started = minor_faults(), time.perf_counter()
        try:
            step()
        finally:
            torch.Tensor.backward = backward
        done = time.perf_counter()
        return {"forward": marks["backward_start"] - started,
                "backward": marks["backward_end"] - marks["backward_start"],
                "update": marks["update_end"] - marks["update_start"],
                "step": done - started, "minor_faults": minor_faults() - faults}

    return run


def sides(size, batch_size, precision="fp32"):
    """{side: (phased step, image tower forward, model for `training_levers`)}: kclip's `train_step` (its optimizer's `apply` is the
    update) and the reference's step (`optimizer.step`), with one image batch for both towers."""
    import torch

    kclip, model, _, _ = kclip_step(size, batch_size, precision)
    reference, reference_model, optimizer, device, _ = reference_step(size, batch_size, precision)
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    image_size = SIZES[size]["image_size"]
    images = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    # kclip's tower on torch is channels-first and gets its batch contiguous, as its backbone hands it over.
    kclip_images = images.contiguous() if model.backbone.image_data_format == "channels_first" else (
        images.permute(0, 2, 3, 1).contiguous())
    return {
        "kclip": (phased(kclip, model.optimizer, "apply"),
                  lambda: model.backbone.image_encoder(kclip_images, training=True), model),
        "reference": (phased(reference, optimizer, "step"), lambda: autocast_forward(
            reference_model.image_encoder, images, device, autocast_dtype), None),
    }


def autocast_forward(module, inputs, device, dtype):
    import torch

    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        return module(inputs)


def profiled(forward):
    """(wall seconds, seconds of op self time, {op: ms}) of one call of `forward`."""
    import torch

    with torch.profiler.profile() as profile:
        started = time.perf_counter()
        output = forward()
        wall = time.perf_counter() - started
    del output
    ops = {event.key: event.self_cpu_time_total / 1e3 for event in profile.key_averages()}
    return wall, sum(ops.values()) / 1e3, ops


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3, help="ABBA rounds; each block is 3 steps, the first untimed")
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=False,
                        help="glibc keeps freed memory in the process (kclip's heap lever), for both sides")
    parser.add_argument("--out")
    args = parser.parse_args()

    steps = sides(args.size, args.batch_size, args.precision)
    phases = {name: collections.defaultdict(list) for name in steps}
    forwards = {name: [] for name in steps}
    with training_levers(keep_freed_memory=args.keep_freed_memory, model=steps["kclip"][2]):
        for name in ("kclip", "kclip", "reference", "reference"):
            steps[name][0]()
        for name in ["kclip", "reference", "reference", "kclip"] * args.rounds:
            for index in range(3):
                times = steps[name][0]()
                for phase, seconds in times.items():
                    if index:
                        phases[name][phase].append(seconds)
        for name in ["kclip", "reference"] * 2:
            forwards[name].append(profiled(steps[name][1]))

    line = {"benchmark": "step_phases", "size": args.size, "batch_size": args.batch_size, "precision": args.precision,
            "steps_each": len(phases["kclip"]["step"]), "keep_freed_memory": args.keep_freed_memory}
    for name in steps:
        for phase, values in phases[name].items():
            unit = "" if phase == "minor_faults" else "_s"
            line[f"{name}_{phase}{unit}"] = round(statistics.median(values), 4)
        line[f"{name}_image_forward_wall_s"] = [round(wall, 4) for wall, _, _ in forwards[name]]
        line[f"{name}_image_forward_op_s"] = [round(ops, 4) for _, ops, _ in forwards[name]]
    kclip_ops, reference_ops = forwards["kclip"][-1][2], forwards["reference"][-1][2]
    names = sorted(set(kclip_ops) | set(reference_ops),
                   key=lambda op: -abs(kclip_ops.get(op, 0.0) - reference_ops.get(op, 0.0)))
    line["image_forward_most_different_ops"] = [
        {"op": op, "kclip_ms": round(kclip_ops.get(op, 0.0), 1), "reference_ms": round(reference_ops.get(op, 0.0), 1)}
        for op in names[:args.top]]
    emit({**line, **cpu_fields(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    main()
