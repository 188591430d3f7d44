"""Peak memory and time per pair of gradient caching (trainer.contrastive_chunk_size) against a plain batch.

    python benchmarks/contrastive_memory.py                  # small size: 128 plain; 1,024 in chunks of 128 and 64
    python benchmarks/contrastive_memory.py --smoke          # tiny size, seconds: the script runs

Each setting runs in its own process, so that its peak resident memory is its own: the line's
`peak_rss_mb` is that process's peak, `step_peak_mb` the peak minus the memory held once the model
was built (framework, weights, the fixed batch), which is what the step itself adds. On a GPU the
line also has torch's `peak_gpu_mb`. Time per pair is the median step over the batch size. The
fixed batch is synthetic, already-preprocessed tensors (benchmarks/train_throughput.py), float32
unless --precision says otherwise. Lines go to stdout and to benchmarks/results/contrastive-memory-<date>.jsonl.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SETTINGS = {"full": [(128, None), (1024, 128), (1024, 64)], "smoke": [(16, None), (64, 16), (64, 8)]}


def measure(args):
    """One setting in this process: prints one JSON line."""
    import keras

    from harness import peak_rss_mb, report
    from kclip.backends.torch.levers import training_levers
    from train_throughput import model_and_batch, time_fit_steps

    model, inputs, image_ids, policy, sequence_length = model_and_batch(args)
    model.compile(learning_rate=1e-3, image_learning_rate=1e-4, text_learning_rate=1e-5,
                  contrastive_chunk_size=args.chunk_size)
    synchronize = lambda: None  # noqa: E731
    if keras.config.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            synchronize = torch.cuda.synchronize
            torch.cuda.reset_peak_memory_stats()
    held_mb = peak_rss_mb()
    with training_levers(model=model):
        times = time_fit_steps(model, inputs, image_ids, args.warmup, args.steps, synchronize)
    line = report("contrastive_memory", times, args.batch_size, size=args.size, image_size=inputs["images"].shape[1],
                  sequence_length=sequence_length, precision=policy, chunk_size=args.chunk_size,
                  s_per_pair=round(sorted(times)[len(times) // 2] / args.batch_size, 6),
                  held_before_fit_mb=round(held_mb, 1), backend=keras.config.backend())
    line["step_peak_mb"] = round(line["peak_rss_mb"] - held_mb, 1)
    print("RESULT " + json.dumps(line), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny towers and batches: checks that the script runs")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.one:
        from train_throughput import add_model_arguments

        inner = argparse.ArgumentParser()
        add_model_arguments(inner, precision=args.precision)
        inner.add_argument("--chunk-size", type=int, default=None)
        inner.add_argument("--warmup", type=int)
        inner.add_argument("--steps", type=int)
        measure(inner.parse_args(sys.argv[sys.argv.index("--one") + 1:]))
        return
    size = args.size or ("tiny" if args.smoke else "small")
    out = args.out or os.path.join(HERE, "results", f"contrastive-memory{'-smoke' if args.smoke else ''}-"
                                   f"{time.strftime('%Y-%m-%d')}.jsonl")
    plain = None
    for batch, chunk in SETTINGS["smoke" if args.smoke else "full"]:
        command = [sys.executable, os.path.abspath(__file__), "--one", "--size", size, "--batch-size", str(batch),
                   "--precision", args.precision, "--warmup", str(args.warmup), "--steps", str(args.steps)]
        if chunk:
            command += ["--chunk-size", str(chunk)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        line = json.loads(result.stdout.split("RESULT ", 1)[1].splitlines()[0])
        plain = plain or line  # the first setting is the plain batch
        line["memory_vs_plain"] = round(line["step_peak_mb"] / max(plain["step_peak_mb"], 1e-9), 3)
        line["time_per_pair_vs_plain"] = round(line["s_per_pair"] / plain["s_per_pair"], 3)
        print(json.dumps(line), flush=True)
        # Each line as soon as it is measured: a long run stopped half-way keeps what it measured.
        if not args.smoke or args.out:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "a") as file:
                file.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
