"""Build or update a searchable index of a folder of images.

    kclip index IMAGE_DIR --model M.keras --index OUT_DIR \\
        [--batch-size 32] [--dtype float16|float32] [--rebuild] [--backend auto|exact|ann]

Rerunning embeds only new or changed images and drops deleted ones (see kclip.build_index).
Errors exit with status 2 and a one-line message.
"""

import argparse
import sys


def parse_args(argv=None, prog=None):
    from kclip.index.index import ANN_THRESHOLD, BACKENDS, DTYPES

    parser = argparse.ArgumentParser(prog=prog, description="Build or update a kclip image index.",
                                     allow_abbrev=False)
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


def main(argv=None, load_model=None, prog=None):
    """`load_model`: what reads the model file (default kclip.load_model; tests pass a stand-in)."""
    import kclip

    args = parse_args(argv, prog=prog)
    load_model = load_model or kclip.load_model
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
