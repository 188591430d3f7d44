"""Convert a clip-lightning checkpoint into a kclip model.

    kclip convert run.ckpt --tokenizer distilbert-base-uncased/ --output model.keras

--tokenizer is the Hugging Face folder of the checkpoint's text encoder (vocab.txt and
tokenizer_config.json; config.json too unless it is distilbert-base-uncased).
"""

import argparse
import sys


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the Lightning .ckpt file")
    parser.add_argument("--tokenizer", required=True, help="Hugging Face folder of the text encoder")
    parser.add_argument("--output", required=True, help="where to write the .keras model")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-length", type=int, default=200, help="tokens per caption (data.max_length)")
    args = parser.parse_args(argv)

    from kclip import convert_lightning_checkpoint

    try:
        convert_lightning_checkpoint(args.checkpoint, args.tokenizer, output=args.output,
                                     image_size=args.image_size, sequence_length=args.max_length)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(f"Wrote {args.output}")
    return 0
