"""Train a kclip dual encoder: python scripts/train.py --config configs/demo.yaml [--data.train_batch_size 64 ...]

Same as `kclip train ...`; the flags are defined in kclip/commands/train.py (python scripts/train.py --help lists them).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.commands.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
