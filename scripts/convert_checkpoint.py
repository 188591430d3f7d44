"""Convert a clip-lightning checkpoint into a kclip model: python scripts/convert_checkpoint.py run.ckpt --tokenizer DIR --output model.keras

Same as `kclip convert ...`; the flags are defined in kclip/commands/convert.py (python scripts/convert_checkpoint.py --help lists them).
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.commands.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
