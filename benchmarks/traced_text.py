"""Keras' text tower against its traced graph (kclip.backends.torch.traced_text), as the server calls it.

    PYTHONPATH=$PWD python benchmarks/traced_text.py --model runs/demo/model.keras --out benchmarks/results/traced-text-DATE.jsonl

Median milliseconds per call of the text encoder alone (tokenizing excluded) at batch 1 and 8, one
torch thread as the server runs it, and the largest difference between the two outputs.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import kclip  # noqa: E402
from harness import cpu_fields, emit, time_steps  # noqa: E402
from kclip.backends.torch.traced_text import TracedTextEncoder  # noqa: E402


def median_ms(function, repeats):
    return round(statistics.median(time_steps(function, 1, repeats)) * 1000, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = kclip.load_model(args.model)
    traced = TracedTextEncoder(model)
    for batch in (1, 8):
        packed = model.preprocessor({"captions": ["a big red circle to the left of a blue square"] * batch})
        ids, mask = packed["token_ids"], packed["padding_mask"]
        graph = traced._trace_for(ids, mask)
        with torch.inference_mode():
            keras_ms = median_ms(lambda: traced._keras_call(ids, mask), args.repeats)
            traced_ms = median_ms(lambda: graph(ids, mask), args.repeats)
            difference = float((graph(ids, mask) - traced._keras_call(ids, mask)).abs().max())
        line = {"benchmark": "traced_text", "model": args.model, "batch": batch, "tokens": int(ids.shape[1]),
                "keras_ms": keras_ms, "traced_ms": traced_ms, "speedup": round(keras_ms / traced_ms, 2),
                "max_abs_difference": difference, "torch_threads": 1, "torch": torch.__version__,
                **cpu_fields(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        emit(line, args.out)


if __name__ == "__main__":
    main()
