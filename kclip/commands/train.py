"""Train a kclip dual encoder.

    kclip train --config configs/demo.yaml [--data.train_batch_size 64 ...]

clip-lightning's command line works as it is, with only the command's name changed:
`kclip train fit --model.image_encoder_alias resnet50 --trainer.precision 16 ...`
(`fit` is optional; its flags map onto kclip's, see kclip/config.py).
"""

import sys

OTHER_LIGHTNING_SUBCOMMANDS = {"validate": "kclip evaluate", "test": "kclip evaluate", "predict": "kclip search"}


def main(argv=None, prog=None):
    from kclip.config import build_parser, parse_config
    from kclip.training.run import train

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fit"]:
        argv = argv[1:]
    elif argv and argv[0] in OTHER_LIGHTNING_SUBCOMMANDS:
        sys.exit(f"error: train only trains (Lightning's `fit`); for `{argv[0]}` use "
                 f"{OTHER_LIGHTNING_SUBCOMMANDS[argv[0]]} (or scripts/{OTHER_LIGHTNING_SUBCOMMANDS[argv[0]][6:]}.py).")
    parser = build_parser()
    if prog:
        parser.prog = prog
    try:
        config = parse_config(argv, parser=parser)
    except ValueError as error:
        sys.exit(f"error: {error}")
    train(config)
