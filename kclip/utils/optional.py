"""TensorFlow as an optional dependency: kclip imports, trains, indexes and serves without it.

A GPU machine often has its own torch and no TensorFlow, and TensorFlow (about 600 MB) is more
than such a machine may be able to take in. What truly needs it (the tf.data loader, prepared
TFDS shards, W&B's Keras callbacks) imports it through `require_tensorflow`, which stops with
what to install instead of a bare ModuleNotFoundError.
"""

import importlib
import importlib.util

INSTALL_HINT = "pip install tensorflow-cpu (or tensorflow)"


def tensorflow_available():
    """True when `import tensorflow` would find the package (nothing is imported)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def require_tensorflow(feature, package="tensorflow", hint=INSTALL_HINT):
    """`package` imported, or an ImportError that names `feature` and what to install."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"{feature} needs {package}, which is not installed here ({error}). "
            f"Install it ({hint}), or use what works without TensorFlow: "
            f"data.loader: pydataset (the default when TensorFlow is absent) and trainer.logger: none."
        ) from error
