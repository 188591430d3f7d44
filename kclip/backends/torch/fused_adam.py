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
TORCH_RANGE = ("2.11", "2.16")
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
    momentums = [optimizer._momentums[i].value for i in indices]
    velocities = [optimizer._velocities[i].value for i in indices]
    grads = [grad.to(param.dtype) for grad, param in zip(grads, params)]
    for param, momentum, velocity in zip(params, momentums, velocities):
        _follow_layout(momentum, param)
        _follow_layout(velocity, param)
    grads = [_laid_out_as(grad, param) for grad, param in zip(grads, params)]
    # The kernel walks raw memory, so each tensor is handed over as a contiguous view of its
    # memory, in the same order for a parameter, its gradient and both moments.
    orders = [_memory_order(param) for param in params]
    fused_adam(
        *[[tensor if order is None else tensor.permute(order) for tensor, order in zip(tensors, orders)]
          for tensors in (params, grads, momentums, velocities)],
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


def _memory_order(tensor):
    """None for a contiguous tensor; else its dimensions from the outermost in memory to the
    innermost, which permute a dense tensor (a conv kernel kept in torch's order) into a
    contiguous view."""
    if tensor.is_contiguous():
        return None
    return sorted(range(tensor.ndim), key=lambda dim: (-tensor.stride(dim), dim))


def _follow_layout(moment, param):
    """Gives an Adam moment its parameter's memory order, once, keeping its values."""
    if moment.stride() != param.stride():
        import torch

        with torch.no_grad():
            moment.data = torch.empty_like(param, dtype=moment.dtype).copy_(moment)


def _laid_out_as(grad, param):
    """`grad` with `param`'s strides: a view when it has them, else one copy."""
    if grad.stride() == param.stride():
        return grad
    import torch

    return torch.empty_like(param, dtype=grad.dtype).copy_(grad)
