"""AdamW with one learning rate per variable group (image tower, text tower, heads).

A Keras optimizer has a single learning rate, and Adam's update does not change if
a group's gradients are scaled, so per-tower rates need real per-group steps. This
optimizer keeps one state and one schedule, and steps each group with the shared
rate times the group's multiplier. Schedules and ReduceLROnPlateau act on the shared
rate, so every group follows them in proportion.

It subclasses whatever `keras.optimizers.AdamW` resolves to on the running backend, and
works statefully (`apply`, torch and TensorFlow) and statelessly (`stateless_apply`,
JAX): groups are looked up by variable, multipliers are Python numbers, and the shared
rate stays a tensor, so the step traces under `jit`. On torch, each group's update can run
as torch's fused kernel (kclip/backends/torch/fused_adam.py).
"""

import keras
from keras import ops

_BackendAdamW = type(keras.optimizers.AdamW(learning_rate=1e-3))


@keras.saving.register_keras_serializable(package="kclip")
class MultiRateAdamW(_BackendAdamW):
    """AdamW whose step size is `learning_rate * multiplier[group of variable]`.

    Variables outside every group use multiplier 1. Groups are set with
    `set_variable_multipliers` before the first step (the task does this when it
    compiles), and are not saved: they are derived from the model's structure.
    `fused=False` keeps Keras' own update on torch (for comparison); other backends
    always use Keras' update.
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
        fused = None
        if self.fused and not self.amsgrad:
            from kclip.backends.torch import fused_adam

            fused = fused_adam.kernel()
        if fused is not None:
            step, learning_rate = fused_adam.read_step_and_rate(self, learning_rate)
        for multiplier, (group_grads, group_variables) in self._grouped(
            grads, trainable_variables
        ):
            group_rate = learning_rate if multiplier == 1.0 else learning_rate * multiplier
            if fused is not None:
                fused_adam.update(fused, self, group_grads, group_variables, group_rate, step)
            else:
                super()._backend_update_step(group_grads, group_variables, group_rate)

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or self.weight_decay == 0:
            return
        learning_rate = self._get_current_learning_rate()
        for multiplier, (group_variables,) in self._grouped(variables):
            decay = 1.0 - self.weight_decay * learning_rate * multiplier
            for variable in group_variables:
                if self._use_weight_decay(variable):
                    variable.assign(variable * ops.cast(decay, variable.dtype))
