"""Choosing the dtype policy for the hardware a run is on."""

import contextlib
import warnings

import keras


# Lightning's float16 names; they mean mixed_float16 on a GPU only.
LIGHTNING_FLOAT16 = ("16", "16-mixed")


def resolve_precision(precision="auto"):
    """auto: float16 mixed precision on a GPU, bfloat16 on a CPU.

    Lightning's "16" and "16-mixed" give mixed_float16 on a GPU and, with a warning,
    mixed_bfloat16 on a CPU.

    On a CPU float16 is 6-20x slower than float32 while bfloat16 is faster.
    """
    if precision in LIGHTNING_FLOAT16:
        # As Lightning does: float16 mixed precision is for GPUs; on a CPU it falls back to bfloat16.
        if _gpu_available():
            return "mixed_float16"
        warnings.warn(f"trainer.precision={precision!r} (float16) runs only on a GPU, and none is visible: "
                      "using mixed_bfloat16 on the CPU, as Lightning does.", stacklevel=2)
        return "mixed_bfloat16"
    if precision != "auto":
        return precision
    return "mixed_float16" if _gpu_available() else "mixed_bfloat16"


def _gpu_available():
    if keras.config.backend() == "torch":
        import torch

        return torch.cuda.is_available()
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def accelerator_scope(accelerator="auto"):
    """A context that runs a training on the device Lightning's `accelerator` names.

    cpu: on the CPU even when a GPU is visible. gpu/cuda: a GPU, falling back to the CPU
    with a warning when none is visible (so a Lightning command line still runs there).
    """
    if accelerator == "cpu":
        return keras.device("cpu")
    if accelerator in ("gpu", "cuda") and not _gpu_available():
        warnings.warn(f"trainer.accelerator={accelerator!r}, but no GPU is visible: training on the CPU.",
                      stacklevel=2)
    elif accelerator not in ("auto", "gpu", "cuda"):
        raise ValueError(f"trainer.accelerator must be auto, cpu, gpu or cuda, got {accelerator!r}.")
    return contextlib.nullcontext()
