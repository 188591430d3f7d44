"""Search an image index by text, or by example with an image path.

    kclip search "a dog on the beach" --model M.keras --index DIR --top-k 9 [--grid out.png]
    kclip search holiday/beach.jpg --model M.keras --index DIR

Prints one line per result: rank, score (cosine similarity) and path. --grid also draws the results
with their scores into a picture. Errors (empty query, an index built by another model, a missing
index) exit with status 2 and a one-line message.
"""

import argparse
import sys


def parse_args(argv=None, prog=None):
    from kclip.index.index import BACKENDS

    parser = argparse.ArgumentParser(prog=prog, description="Search a kclip image index by text or by example image.",
                                     allow_abbrev=False)
    parser.add_argument("query", help="text to search for, or the path of an image (a name ending in .jpg, .png, ...)")
    parser.add_argument("--model", required=True, help="the .keras model file that built the index")
    parser.add_argument("--index", required=True, help="the index folder (kclip index)")
    parser.add_argument("--top-k", type=int, default=9)
    parser.add_argument("--grid", help="also write the results as a picture to this file (.png)")
    parser.add_argument("--tile-size", type=int, default=128, help="pixels per result tile in --grid")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be 1 or more; got {args.top_k}.")
    if args.grid:
        from kclip.index.search import check_grid_size

        try:
            check_grid_size(args.tile_size, args.top_k)
        except ValueError as error:
            parser.error(f"--tile-size: {error}")
    return args


def main(argv=None, load_model=None, prog=None):
    """`load_model`: what reads the model file (default kclip.load_model; tests pass a stand-in)."""
    import kclip
    from kclip.evaluation.grid import render_grid
    from kclip.index.index import Index

    args = parse_args(argv, prog=prog)
    load_model = load_model or kclip.load_model
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
