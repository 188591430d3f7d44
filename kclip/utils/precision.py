"""Choosing the dtype policy for the hardware a run is on."""

import keras


def resolve_precision(precision="auto"):
    """auto: float16 mixed precision on a GPU, bfloat16 on a CPU.

    On a CPU float16 is 6-20x slower than float32 while bfloat16 is faster.
    """
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
