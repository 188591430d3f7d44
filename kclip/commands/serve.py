"""Serve a local web page to search an image index by text or by example.

    kclip serve --model runs/demo/model.keras --index runs/demo/index [--port 8000]

Then open http://127.0.0.1:8000/. The page and its JSON API are described in kclip/serve/app.py.
The server listens on 127.0.0.1 only unless --host says otherwise, which is warned about: there
is no login, and every indexed photo can be viewed.
"""

import argparse
import logging
import sys


def parse_args(argv=None, prog=None):
    from kclip.index.index import BACKENDS
    from kclip.serve.server import DEFAULT_HOST, DEFAULT_PORT

    parser = argparse.ArgumentParser(prog=prog, description="Serve a web page to search a kclip image index.",
                                     allow_abbrev=False)
    parser.add_argument("--model", required=True, help="the .keras model file that built the index")
    parser.add_argument("--index", required=True, help="the index folder (kclip index)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; others are warned about)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--max-upload-mb", type=float, default=20.0,
                        help="largest picture accepted as a query, in MB (above 0, at most 1024)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name or address the page may be opened with besides 127.0.0.1/localhost and "
                             "--host (e.g. this machine's LAN name); repeat for several. Requests naming any other "
                             "host are refused, which keeps other web sites out (see docs/security.md)")
    parser.add_argument("--compute-threads", type=int, default=1,
                        help="threads per model op and per search (default 1: concurrent queries share the cores; "
                             "0 keeps the libraries' own defaults)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be from 1 to 65535; got {args.port}.")
    if args.compute_threads < 0:
        parser.error(f"--compute-threads must be 0 or more; got {args.compute_threads}.")
    from kclip.serve.security import normalise_allowed_host
    from kclip.serve.server import upload_limit_bytes

    try:
        args.max_upload_bytes = upload_limit_bytes(args.max_upload_mb)
        args.allowed_host = [normalise_allowed_host(name) for name in args.allowed_host]
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None, load_model=None, serve=None, prog=None):
    """`load_model`, `serve`: what reads the model and runs the server (defaults kclip.load_model and
    kclip.serve_page; tests pass stand-ins)."""
    import kclip

    args = parse_args(argv, prog=prog)
    load_model = load_model or kclip.load_model
    serve = serve or kclip.serve_page
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        model = load_model(args.model)
        serve(model, args.index, host=args.host, port=args.port, backend=args.backend, log_level=args.log_level,
              compute_threads=args.compute_threads or None, max_upload_bytes=args.max_upload_bytes,
              allowed_hosts=args.allowed_host)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
