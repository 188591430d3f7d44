"""Search an image index by text, or by example with an image path.

    python scripts/search.py "a dog on the beach" --model M.keras --index DIR --top-k 9 [--grid out.png]
    python scripts/search.py holiday/beach.jpg --model M.keras --index DIR

Prints one line per result: rank, score (cosine similarity) and path. --grid also draws the results
with their scores into a picture. Errors (empty query, an index built by another model, a missing
index) exit with status 2 and a one-line message.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import kclip  # noqa: E402
from kclip.evaluation.grid import render_grid  # noqa: E402
from kclip.index.index import BACKENDS, Index  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Search a kclip image index by text or by example image.",
                                     allow_abbrev=False)
    parser.add_argument("query", help="text to search for, or the path of an image (a name ending in .jpg, .png, ...)")
    parser.add_argument("--model", required=True, help="the .keras model file that built the index")
    parser.add_argument("--index", required=True, help="the index folder (scripts/index.py)")
    parser.add_argument("--top-k", type=int, default=9)
    parser.add_argument("--grid", help="also write the results as a picture to this file (.png)")
    parser.add_argument("--tile-size", type=int, default=128, help="pixels per result tile in --grid")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    return parser.parse_args(argv)


def main(argv=None, load_model=kclip.load_model):
    args = parse_args(argv)
    try:
        if not args.query.strip():
            raise ValueError("the query is empty; give some text to search for, or an image path.")
        index = Index.load(args.index, backend=args.backend)
        model = load_model(args.model)
        results = kclip.search(args.query, model=model, index=index, top_k=args.top_k)
        for result in results:
            print(f"{result.rank:3d}  {result.score:.4f}  {result.path}")
        if args.grid:
            items = [(str(result.path), result.score) for result in results]
            print(f"grid: {render_grid([(args.query, items)], args.grid, tile_size=args.tile_size)}")
    except (ValueError, OSError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
