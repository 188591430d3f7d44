"""torch's fused Adam kernel as MultiRateAdamW's update on the torch backend (a speed lever).

Keras' torch Adam runs ten `torch._foreach` passes over the parameters per step; torch's
`_fused_adam_` makes one pass over parameter, gradient and both moments. On a 2-core CPU
that took the full model's update from 475 ms to 26 ms (benchmarks/RESULTS-training.md).
The math is Keras' Adam, epsilon placement included.

The kernel is a private torch op, and it is handed Keras' private moment variables, so it
runs only on the torch and Keras versions it was tested with (`kclip.utils.versions`);
elsewhere MultiRateAdamW takes Keras' own update.
"""

import keras
from keras import ops

from kclip.utils.versions import patch_supported

# The versions the kernel call and the moment lookup were read against and tested on.
TORCH_RANGE = ("2.13", "2.14")
KERAS_RANGE = ("3.15", "3.16")


def kernel():
    """torch's fused Adam kernel when it can run here, else None (Keras' update is used)."""
    if keras.config.backend() != "torch":
        return None
    import torch

    if torch.compiler.is_compiling():
        return None  # torch.compile (jit_compile=True) cannot trace the fused kernel
    if not (
        patch_supported("fused Adam", "torch", *TORCH_RANGE)
        and patch_supported("fused Adam", "keras", *KERAS_RANGE)
    ):
        return None
    return getattr(torch, "_fused_adam_", None)


def read_step_and_rate(optimizer, learning_rate):
    """The kernel takes host numbers: read the step and rate back once per step."""
    step = float(ops.convert_to_numpy(optimizer.iterations)) + 1.0
    return step, float(ops.convert_to_numpy(learning_rate))


def update(fused_adam, optimizer, grads, variables, learning_rate, step):
    """One Adam step of `variables` at `learning_rate`, in place, as Keras' Adam computes it."""
    import torch

    # torch adds epsilon after dividing sqrt(v) by sqrt(1 - beta_2^t); Keras adds it
    # before. Scaling epsilon by that factor makes the two updates the same.
    epsilon = optimizer.epsilon / (1.0 - optimizer.beta_2**step) ** 0.5
    params = [variable.value for variable in variables]
    steps = [torch.tensor(step, dtype=torch.float32, device=params[0].device)] * len(params)
    indices = [optimizer._get_variable_index(v) for v in variables]
    fused_adam(
        params,
        # The kernel walks raw memory, so gradients must be laid out as their parameters are.
        [grad.to(param.dtype).contiguous() for grad, param in zip(grads, params)],
        [optimizer._momentums[i].value for i in indices],
        [optimizer._velocities[i].value for i in indices],
        [],
        steps,
        lr=learning_rate,
        beta1=float(optimizer.beta_1),
        beta2=float(optimizer.beta_2),
        weight_decay=0.0,  # decoupled decay is applied before, in _apply_weight_decay
        eps=epsilon,
        amsgrad=False,
        maximize=False,
    )
