"""The demo: train, index the held-out images, report recall, search: python scripts/demo.py [--config configs/emoji.yaml] [overrides]

Same as `kclip demo ...`; the flags are defined in kclip/commands/demo.py (python scripts/demo.py --help lists them).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.commands.demo import main, split_config_option, unseen_words  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
