"""Train a kclip dual encoder.

    python scripts/train.py --config configs/demo.yaml [--data.train_batch_size 64 ...]
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.config import parse_config  # noqa: E402
from kclip.training.run import train  # noqa: E402


def main(argv=None):
    try:
        config = parse_config(argv)
    except ValueError as error:
        sys.exit(f"error: {error}")
    train(config)


if __name__ == "__main__":
    main()
