"""Build or update a searchable index of a folder of images.

    python scripts/index.py IMAGE_DIR --model M.keras --index OUT_DIR \
        [--batch-size 32] [--dtype float16|float32] [--rebuild] [--backend auto|exact|ann]

Rerunning embeds only new or changed images and drops deleted ones (see kclip.build_index).
Errors exit with status 2 and a one-line message.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import kclip  # noqa: E402
from kclip.index.index import ANN_THRESHOLD, BACKENDS, DTYPES  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Build or update a kclip image index.", allow_abbrev=False)
    parser.add_argument("image_dir", help="folder of images, searched recursively")
    parser.add_argument("--model", required=True, help="the .keras model file (kclip.export_model)")
    parser.add_argument("--index", required=True, help="folder the index is written to")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="storage type of the embeddings")
    parser.add_argument("--rebuild", action="store_true", help="ignore an existing index and re-embed everything")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help=f"search backend: auto = ANN index from {ANN_THRESHOLD} images on")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--lock-timeout", type=float, default=600.0,
                        help="seconds to wait while another build writes the same index (default 600)")
    return parser.parse_args(argv)


def main(argv=None, load_model=kclip.load_model):
    args = parse_args(argv)
    try:
        model = load_model(args.model)
        index = kclip.build_index(model, args.image_dir, args.index, batch_size=args.batch_size, dtype=args.dtype,
                                  rebuild=args.rebuild, backend=args.backend, progress=not args.no_progress,
                                  lock_timeout=args.lock_timeout)
    except (ValueError, OSError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(index.report.summary())
    print(f"index: {args.index} ({len(index)} images, width {index.dim}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
