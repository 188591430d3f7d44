"""Writing a trained model to a `.keras` file for search and evaluation."""

from pathlib import Path

from kclip.utils.files import write_file_atomic


def export_model(model, path):
    """Saves a `.keras` file without optimizer state, atomically.

    `include_optimizer=False` is ignored for `.keras`, so the model is rebuilt from
    its config and weights first (`DualEncoder.rebuilt`). The file is written through kclip.utils.files
    (temporary name, fsync, rename), so a crash never leaves a truncated model behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clone = model.rebuilt()
    return write_file_atomic(path, clone.save)
