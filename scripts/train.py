"""Train a kclip dual encoder.

    python scripts/train.py --config configs/demo.yaml [--data.train_batch_size 64 ...]

clip-lightning's command line works as it is, with only the script's name changed:
`python scripts/train.py fit --model.image_encoder_alias resnet50 --trainer.precision 16 ...`
(`fit` is optional; its flags map onto kclip's, see kclip/config.py).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.config import parse_config  # noqa: E402
from kclip.training.run import train  # noqa: E402

OTHER_LIGHTNING_SUBCOMMANDS = {"validate": "scripts/evaluate.py", "test": "scripts/evaluate.py",
                               "predict": "scripts/search.py"}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fit"]:
        argv = argv[1:]
    elif argv and argv[0] in OTHER_LIGHTNING_SUBCOMMANDS:
        sys.exit(f"error: train.py only trains (Lightning's `fit`); for `{argv[0]}` use "
                 f"{OTHER_LIGHTNING_SUBCOMMANDS[argv[0]]}.")
    try:
        config = parse_config(argv)
    except ValueError as error:
        sys.exit(f"error: {error}")
    train(config)


if __name__ == "__main__":
    main()
