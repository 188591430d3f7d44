"""Serve a local web page to search an image index by text or by example.

    python scripts/serve.py --model runs/demo/model.keras --index runs/demo/index [--port 8000]

Then open http://127.0.0.1:8000/. The page and its JSON API are described in kclip/serve/app.py and in
the README ("Search page"). The server listens on 127.0.0.1 only unless --host says otherwise, which
is warned about: there is no login, and every indexed photo can be viewed.
"""

import argparse
import logging
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import kclip  # noqa: E402
from kclip.index.index import BACKENDS  # noqa: E402
from kclip.serve.server import DEFAULT_HOST, DEFAULT_PORT  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Serve a web page to search a kclip image index.",
                                     allow_abbrev=False)
    parser.add_argument("--model", required=True, help="the .keras model file that built the index")
    parser.add_argument("--index", required=True, help="the index folder (scripts/index.py)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; others are warned about)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest picture accepted as a query")
    parser.add_argument("--compute-threads", type=int, default=1,
                        help="threads per model op and per search (default 1: concurrent queries share the cores; "
                             "0 keeps the libraries' own defaults)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be from 1 to 65535; got {args.port}.")
    if args.compute_threads < 0:
        parser.error(f"--compute-threads must be 0 or more; got {args.compute_threads}.")
    if not args.max_upload_mb > 0:
        parser.error(f"--max-upload-mb must be positive; got {args.max_upload_mb}.")
    return args


def main(argv=None, load_model=kclip.load_model, serve=kclip.serve_page):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        model = load_model(args.model)
        serve(model, args.index, host=args.host, port=args.port, backend=args.backend, log_level=args.log_level,
              compute_threads=args.compute_threads or None, max_upload_bytes=int(args.max_upload_mb * 2**20))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
