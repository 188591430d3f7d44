"""kclip: natural-language image search with a CLIP-style dual encoder on Keras 3.

    import kclip
    model = kclip.load_model("runs/demo/model.keras")
    index = kclip.build_index(model, "my_photos/", "my_photos.index")
    for result in kclip.search("a dog on the beach", model=model, index=index):
        print(result.score, result.path)
"""

import os
import warnings

# kclip ships on the torch backend; the choice must be made before keras is imported.
os.environ.setdefault("KERAS_BACKEND", "torch")
# TensorFlow only feeds data here; its C++ start-up log (CUDA probing, oneDNN notes) is noise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from kclip.utils.quiet import quiet_native_start_up  # noqa: E402

quiet_native_start_up()

import keras  # noqa: E402

from kclip.config import Config, DataConfig, ModelConfig, TrainerConfig, parse_config  # noqa: E402
from kclip.evaluation.evaluate import evaluate  # noqa: E402
from kclip.evaluation.metrics import retrieval_metrics  # noqa: E402
from kclip.index.index import Index, SearchResult, build_index  # noqa: E402
from kclip.index.search import classify, search  # noqa: E402
from kclip.models.backbone import DualEncoderBackbone  # noqa: E402
from kclip.models.convert import convert_lightning_checkpoint  # noqa: E402
from kclip.models.layers import ContrastiveLogits, L2Normalize, ProjectionHead  # noqa: E402
from kclip.models.optimizers import MultiRateAdamW  # noqa: E402
from kclip.models.preprocessor import DualEncoderPreprocessor  # noqa: E402
from kclip.models.task import DualEncoder  # noqa: E402
from kclip.models.towers import build_dual_encoder  # noqa: E402
from kclip.models.zero_shot import zero_shot_model  # noqa: E402
from kclip.serve import create_app, serve_page  # noqa: E402
from kclip.training.export import export_model  # noqa: E402
from kclip.training.run import train  # noqa: E402
from kclip.utils.precision import inference_policy  # noqa: E402

__version__ = "0.1.0"


def load_model(path, precision="auto"):
    """Loads a `.keras` file written by kclip, to encode in the fastest precision for this hardware.

    A file keeps the dtype policy it was trained under. With `precision="auto"`, a model
    trained in half precision runs in float32 where that half precision is emulated (bfloat16
    on a CPU without avx512_bf16/amx_bf16, float16 on any CPU) and keeps it where it is
    native. Embeddings are float32 either way. `precision="saved"` keeps the file's policy;
    a policy name ("float32", "mixed_bfloat16", ...) forces one.

    A missing file is a FileNotFoundError; a file that is not a kclip model is a ValueError.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path}: give the .keras file that training or kclip convert wrote.")
    try:
        with warnings.catch_warnings():
            # DualEncoder.compile is its own (per-tower rates), so Keras skips it on load and says so.
            warnings.filterwarnings("ignore", message=r"`compile\(\)` was not called as part of model loading")
            model = keras.saving.load_model(path)
    except (ValueError, OSError, KeyError, TypeError) as error:  # not a zip, no config.json, unknown classes
        raise ValueError(f"{path} is not a kclip model ({error}); give the .keras file that training, "
                         "kclip.export_model or kclip convert wrote.") from error
    if not isinstance(model, DualEncoder):
        raise ValueError(f"{path} holds a Keras {type(model).__name__}, not a kclip DualEncoder; give the .keras "
                         "file that training, kclip.export_model or kclip convert wrote, or open this one with "
                         "keras.saving.load_model.")
    if precision == "saved":
        return model
    if precision == "auto":
        precision = inference_policy(model.compute_policy)[0]
    return model.with_precision(precision)


__all__ = [
    "Config",
    "convert_lightning_checkpoint",
    "ContrastiveLogits",
    "DataConfig",
    "DualEncoder",
    "DualEncoderBackbone",
    "DualEncoderPreprocessor",
    "Index",
    "L2Normalize",
    "ModelConfig",
    "MultiRateAdamW",
    "ProjectionHead",
    "SearchResult",
    "TrainerConfig",
    "build_dual_encoder",
    "build_index",
    "classify",
    "evaluate",
    "export_model",
    "load_model",
    "parse_config",
    "retrieval_metrics",
    "search",
    "train",
    "zero_shot_model",
]
