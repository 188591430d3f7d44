"""Serve a local web page to search an image index: python scripts/serve.py --model runs/demo/model.keras --index runs/demo/index

Same as `kclip serve ...`; the flags are defined in kclip/commands/serve.py (python scripts/serve.py --help lists them).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.commands.serve import main, parse_args  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
