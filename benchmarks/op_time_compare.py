"""Where a training step's time goes, kclip against the plain-PyTorch reference, op by op.

    python benchmarks/op_time_compare.py --size small --steps 4 --out benchmarks/results/op-time-DATE.jsonl

Runs each side's step under torch.profiler in its own subprocess (kclip: `fit`'s own steps under
its training levers; the reference: benchmarks/reference_torch.py's step), sums each op's self
CPU time per step, and prints one JSON line with both totals and the ops whose time differs most.
If the two totals agree while the steps' wall times do not, the gap lies between the ops (the
interpreter, threads waiting), not in them. float32 only; the profiler adds its own cost per op,
so read the totals against each other, not against an unprofiled step.

    python benchmarks/op_time_compare.py --size small --in-process --by-shape --steps 3 --top 24

profiles both sides in one process instead (`paired_reference.py`'s pairing, ABBA, one step each
time) and, with --by-shape, keys each op by its input shapes: the same convolution with the same
arguments can then be compared between the two steps.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def profile_side(side, size, batch_size, steps):
    """{op name: [self ms per step, calls per step]} for one side, profiled after 2 warm-up steps."""
    import torch

    if side == "reference":
        from reference_torch import reference_step

        step = reference_step(size, batch_size)[0]
        for _ in range(2):
            step()
        with torch.profiler.profile() as profile:
            for _ in range(steps):
                step()
    else:
        from train_throughput import add_model_arguments, model_and_batch, time_fit_steps

        from kclip.backends.torch.levers import training_levers

        parser = argparse.ArgumentParser()
        add_model_arguments(parser)
        model, inputs, image_ids, _, _ = model_and_batch(
            parser.parse_args(["--size", size, "--batch-size", str(batch_size), "--precision", "float32"]))
        with training_levers(model=model):
            time_fit_steps(model, inputs, image_ids, 2, 1, lambda: None)
            with torch.profiler.profile() as profile:
                time_fit_steps(model, inputs, image_ids, 0, steps, lambda: None)
    return {event.key: [event.self_cpu_time_total / 1e3 / steps, event.count / steps]
            for event in profile.key_averages()}


def profile_in_process(size, batch_size, rounds, by_shape):
    """{side: {op: [self ms per step, calls per step]}}: both sides in this process, one step at a time, ABBA.

    Both steps then see the same heap, threads and machine drift, so an op that costs more on one side
    with the same arguments (`by_shape` keys ops by their input shapes) costs more because of what
    runs around it, not because of its inputs.
    """
    import collections

    import torch

    from paired_reference import paired_models

    from kclip.backends.torch.levers import training_levers

    kclip, reference, _, _, model = paired_models(size, batch_size)
    steps = {"kclip": kclip, "reference": reference}
    tables = {side: collections.defaultdict(lambda: [0.0, 0.0]) for side in steps}
    with training_levers(model=model):
        for step in (kclip, kclip, reference, reference):
            step()
        for side in ["kclip", "reference", "reference", "kclip"] * rounds:
            with torch.profiler.profile(record_shapes=by_shape) as profile:
                steps[side]()
            for event in profile.key_averages(group_by_input_shape=by_shape):
                key = f"{event.key} {event.input_shapes}" if by_shape else event.key
                tables[side][key][0] += event.self_cpu_time_total / 1e3 / (2 * rounds)
                tables[side][key][1] += event.count / (2 * rounds)
    return tables


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--top", type=int, default=8, help="how many of the most different ops to list")
    parser.add_argument("--in-process", action="store_true",
                        help="profile both sides in one process, ABBA, --steps rounds of four single steps")
    parser.add_argument("--by-shape", action="store_true", help="with --in-process: key ops by their input shapes")
    parser.add_argument("--side", choices=["kclip", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help="append the JSON line to this file")
    args = parser.parse_args()

    if args.side:  # the subprocess: one side, its table as JSON on the last line
        os.environ.setdefault("KERAS_BACKEND", "torch")
        print(json.dumps(profile_side(args.side, args.size, args.batch_size, args.steps)))
        return

    sys.path.insert(0, HERE)
    from harness import cpu_fields, emit

    if args.in_process:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        tables = profile_in_process(args.size, args.batch_size, args.steps, args.by_shape)
    else:
        tables = {}
        for side in ("kclip", "reference"):
            command = [sys.executable, __file__, "--side", side, "--size", args.size,
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            tables[side] = json.loads(output.strip().splitlines()[-1])
    names = set(tables["kclip"]) | set(tables["reference"])

    def milliseconds(side, name):
        return tables[side].get(name, [0.0, 0.0])[0]

    differing = sorted(names, key=lambda name: -abs(milliseconds("kclip", name) - milliseconds("reference", name)))
    line = {
        "benchmark": "op_time_compare",
        "size": args.size,
        "batch_size": args.batch_size,
        "precision": "fp32",
        "steps_profiled": 2 * args.steps if args.in_process else args.steps,
        "in_process": args.in_process,
        "kclip_op_ms_per_step": round(sum(value[0] for value in tables["kclip"].values()), 1),
        "reference_op_ms_per_step": round(sum(value[0] for value in tables["reference"].values()), 1),
        "most_different_ops": [
            {"op": name, "kclip_ms": round(milliseconds("kclip", name), 1),
             "reference_ms": round(milliseconds("reference", name), 1),
             "kclip_calls": tables["kclip"].get(name, [0, 0])[1],
             "reference_calls": tables["reference"].get(name, [0, 0])[1]}
            for name in differing[:args.top]
        ],
        **cpu_fields(),
    }
    emit(line, args.out)


if __name__ == "__main__":
    main()
