"""Where kclip's training step loses to the reference: forward, backward and update, timed apart, one process.

    python benchmarks/step_phases.py --size small --rounds 3 --out benchmarks/results/step-phases-DATE.jsonl

Both models live in one process and take turns, ABBA, as in paired_reference.py. Each step is timed in
three parts: the forward pass with the loss, `backward()`, and the optimizer's update (kclip: the body of
`DualEncoder.train_step` on torch, under its training levers; the reference: benchmarks/reference_torch.py's
model with torch's fused Adam). Then the image tower's forward alone runs under torch's profiler on each
side, twice: its wall time against the sum of its ops' own time says how much of it is Python between the
ops (Keras' layer calls) rather than kernels. Each step also counts its minor page faults, and
--keep-freed-memory runs both sides with glibc keeping freed memory. Prints one JSON line with every median and the image forward's
most different ops. float32, torch only.
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
from reference_torch import SIZES, reference_step  # noqa: E402
from train_throughput import model_and_batch  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402


def kclip_side(size, batch_size):
    """(phased step, image forward) for kclip: the torch branch of DualEncoder.train_step, timed in parts."""
    import torch

    args = argparse.Namespace(size=size, config=None, batch_size=batch_size, precision="float32",
                              sequence_length=None, data_format="auto", jit_compile="off")
    model, inputs, image_ids, _, _ = model_and_batch(args)
    inputs = {key: torch.as_tensor(value) for key, value in inputs.items()}
    image_ids = torch.as_tensor(image_ids)

    def step():
        faults, started = minor_faults(), time.perf_counter()
        model.zero_grad()
        outputs = model(inputs, training=True)
        loss, text_to_image, image_to_text = model._loss_and_metrics(outputs, image_ids)
        forward_done = time.perf_counter()
        model.optimizer.scale_loss(loss).backward()
        backward_done = time.perf_counter()
        variables = [v for v in model.trainable_weights if v.value.grad is not None]
        with torch.no_grad():
            model.optimizer.apply([v.value.grad for v in variables], variables)
        model._update_metrics(loss, text_to_image, image_to_text)
        done = time.perf_counter()
        return {"forward": forward_done - started, "backward": backward_done - forward_done,
                "update": done - backward_done, "step": done - started, "minor_faults": minor_faults() - faults}

    images = inputs["images"]
    if model.backbone.image_data_format == "channels_first":
        images = images.permute(0, 3, 1, 2).contiguous()
    return step, lambda: model.backbone.image_encoder(images, training=True)


def reference_side(size, batch_size):
    """(phased step, image forward) for the reference: its step from reference_torch.py, timed in parts."""
    import torch

    _, model, _, _ = reference_step(size, batch_size)
    groups = [
        {"params": list(model.image_encoder.parameters()), "lr": 1e-4},
        {"params": list(model.text_encoder.parameters()), "lr": 1e-5},
        {"params": [*model.image_head.parameters(), *model.text_head.parameters(), model.log_logit_scale], "lr": 1e-3},
    ]
    optimizer = torch.optim.Adam(groups, fused=True)
    config = SIZES[size]
    images = torch.randn(batch_size, 3, config["image_size"], config["image_size"])
    images = images.contiguous(memory_format=torch.channels_last)
    token_ids = torch.randint(5, config["bert"]["vocabulary_size"], (batch_size, config["sequence_length"]))
    padding_mask = torch.ones(batch_size, config["sequence_length"], dtype=torch.bool)

    def step():
        faults, started = minor_faults(), time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(images, token_ids, padding_mask)
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        optimizer.step()
        done = time.perf_counter()
        return {"forward": forward_done - started, "backward": backward_done - forward_done,
                "update": done - backward_done, "step": done - started, "minor_faults": minor_faults() - faults}

    return step, lambda: model.image_encoder(images)


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
    parser.add_argument("--rounds", type=int, default=3, help="ABBA rounds; each block is 3 steps, the first untimed")
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=False,
                        help="glibc keeps freed memory in the process (kclip's heap lever), for both sides")
    parser.add_argument("--out")
    args = parser.parse_args()

    sides = {"kclip": kclip_side(args.size, args.batch_size), "reference": reference_side(args.size, args.batch_size)}
    phases = {name: collections.defaultdict(list) for name in sides}
    forwards = {name: [] for name in sides}
    with training_levers(keep_freed_memory=args.keep_freed_memory):
        for name in ("kclip", "kclip", "reference", "reference"):
            sides[name][0]()
        for name in ["kclip", "reference", "reference", "kclip"] * args.rounds:
            for index in range(3):
                times = sides[name][0]()
                for phase, seconds in times.items():
                    if index:
                        phases[name][phase].append(seconds)
        for name in ["kclip", "reference"] * 2:
            forwards[name].append(profiled(sides[name][1]))

    line = {"benchmark": "step_phases", "size": args.size, "batch_size": args.batch_size, "precision": "fp32",
            "steps_each": len(phases["kclip"]["step"]), "keep_freed_memory": args.keep_freed_memory}
    for name in sides:
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
