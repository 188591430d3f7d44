"""Search an image index by text or by example: python scripts/search.py "a dog on the beach" --model M.keras --index DIR

Same as `kclip search ...`; the flags are defined in kclip/commands/search.py (python scripts/search.py --help lists them).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.commands.search import main, parse_args  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
