"""Retrieval recall of a trained model on one split: python scripts/evaluate.py --model M.keras --config C.yaml

Same as `kclip evaluate ...`; the flags are defined in kclip/commands/evaluate.py (python scripts/evaluate.py --help lists them).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from kclip.commands.evaluate import SPLITS, main, parse_arguments  # noqa: E402, F401

if __name__ == "__main__":
    main()  # returns the metrics, not an exit status
