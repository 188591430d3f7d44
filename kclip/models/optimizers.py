"""AdamW with one learning rate per variable group (image tower, text tower, heads).

A Keras optimizer has a single learning rate, and Adam's update does not change if
a group's gradients are scaled, so per-tower rates need real per-group steps. This
optimizer keeps one state and one schedule, and steps each group with the shared
rate times the group's multiplier. Schedules and ReduceLROnPlateau act on the shared
rate, so every group follows them in proportion.

It subclasses whatever `keras.optimizers.AdamW` resolves to on the running backend.
On torch, each group's Adam update runs as torch's fused kernel (one pass over
parameter, gradient and both moments) instead of Keras' ten `torch._foreach`
passes: on a 2-core CPU that took the full model's update from 475 ms to 26 ms
(benchmarks/RESULTS-training.md). The math is Keras' Adam, epsilon placement included.
"""

import keras
from keras import ops

_BackendAdamW = type(keras.optimizers.AdamW(learning_rate=1e-3))


def _fused_adam_kernel():
    """torch's fused Adam kernel on the torch backend, else None (other backends use Keras' step)."""
    if keras.config.backend() != "torch":
        return None
    import torch

    if torch.compiler.is_compiling():
        return None  # torch.compile (jit_compile=True) cannot trace the fused kernel
    return getattr(torch, "_fused_adam_", None)


@keras.saving.register_keras_serializable(package="kclip")
class MultiRateAdamW(_BackendAdamW):
    """AdamW whose step size is `learning_rate * multiplier[group of variable]`.

    Variables outside every group use multiplier 1. Groups are set with
    `set_variable_multipliers` before the first step (the task does this when it
    compiles), and are not saved: they are derived from the model's structure.
    `fused=False` keeps Keras' own update on torch (for comparison).
    """

    def __init__(self, *args, fused=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = fused
        self._variable_multipliers = {}

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}

    def set_variable_multipliers(self, groups):
        """`groups`: an iterable of (multiplier, list of variables)."""
        self._variable_multipliers = {}
        for multiplier, variables in groups:
            for variable in variables:
                self._variable_multipliers[self._var_key(variable)] = float(multiplier)

    def _grouped(self, *parallel_lists):
        """Splits parallel lists of (grads, variables) by multiplier."""
        groups = {}
        variables = parallel_lists[-1]
        for index, variable in enumerate(variables):
            multiplier = self._variable_multipliers.get(self._var_key(variable), 1.0)
            groups.setdefault(multiplier, []).append(index)
        for multiplier, indices in groups.items():
            yield multiplier, [[values[i] for i in indices] for values in parallel_lists]

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        fused = _fused_adam_kernel() if self.fused and not self.amsgrad else None
        if fused is not None:
            # Read back once per step: the kernel takes host numbers.
            step = float(ops.convert_to_numpy(self.iterations)) + 1.0
            learning_rate = float(ops.convert_to_numpy(learning_rate))
        for multiplier, (group_grads, group_variables) in self._grouped(
            grads, trainable_variables
        ):
            group_rate = learning_rate if multiplier == 1.0 else learning_rate * multiplier
            if fused is not None:
                self._fused_update_step(fused, group_grads, group_variables, group_rate, step)
            else:
                super()._backend_update_step(group_grads, group_variables, group_rate)

    def _fused_update_step(self, fused_adam, grads, variables, learning_rate, step):
        import torch

        # torch adds epsilon after dividing sqrt(v) by sqrt(1 - beta_2^t); Keras adds it
        # before. Scaling epsilon by that factor makes the two updates the same.
        epsilon = self.epsilon / (1.0 - self.beta_2**step) ** 0.5
        params = [variable.value for variable in variables]
        steps = [torch.tensor(step, dtype=torch.float32, device=params[0].device)] * len(params)
        fused_adam(
            params,
            # The kernel walks raw memory, so gradients must be laid out as their parameters are.
            [grad.to(param.dtype).contiguous() for grad, param in zip(grads, params)],
            [self._momentums[self._get_variable_index(v)].value for v in variables],
            [self._velocities[self._get_variable_index(v)].value for v in variables],
            [],
            steps,
            lr=learning_rate,
            beta1=float(self.beta_1),
            beta2=float(self.beta_2),
            weight_decay=0.0,  # decoupled decay is applied before, in _apply_weight_decay
            eps=epsilon,
            amsgrad=False,
            maximize=False,
        )

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or self.weight_decay == 0:
            return
        learning_rate = self._get_current_learning_rate()
        for multiplier, (group_variables,) in self._grouped(variables):
            decay = 1.0 - self.weight_decay * learning_rate * multiplier
            for variable in group_variables:
                if self._use_weight_decay(variable):
                    variable.assign(variable * ops.cast(decay, variable.dtype))
