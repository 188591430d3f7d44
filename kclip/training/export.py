"""Writing a trained model to a `.keras` file for search and evaluation."""

from pathlib import Path

from kclip.utils.files import write_file_atomic


def export_model(model, path):
    """Saves a `.keras` file without optimizer state, atomically.

    `include_optimizer=False` is ignored for `.keras`, so the model is rebuilt from
    its config and weights first. The file is written through kclip.utils.files
    (temporary name, fsync, rename), so a crash never leaves a truncated model behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone.__class__.from_config(model.backbone.get_config())
    backbone.set_weights(model.backbone.get_weights())
    # The preprocessor is shared, not rebuilt: its vocabulary lives in assets, not config.
    clone = model.__class__(
        backbone,
        model.preprocessor,
        contrastive_loss=model.contrastive_loss,
        temperature=model.temperature,
        compile=False,
    )
    return write_file_atomic(path, clone.save)
