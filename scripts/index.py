"""Build or update a searchable index of a folder of images: python scripts/index.py IMAGE_DIR --model M.keras --index OUT_DIR

Same as `kclip index ...`; the flags are defined in kclip/commands/index.py (python scripts/index.py --help lists them).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.commands.index import main, parse_args  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
