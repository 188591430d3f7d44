"""A local web page (and JSON API) to search an image index by text or by example.

    import kclip
    kclip.serve_page("runs/demo/model.keras", "runs/demo/index")            # http://127.0.0.1:8000/
    app = kclip.create_app(model, "runs/demo/index")                   # any ASGI server
"""
from kclip.serve.app import create_app
from kclip.serve.server import BackgroundServer, serve_page

__all__ = ["BackgroundServer", "create_app", "serve_page"]
