"""AdamW with one learning rate per variable group (image tower, text tower, heads).

A Keras optimizer has a single learning rate, and Adam's update does not change if
a group's gradients are scaled, so per-tower rates need real per-group steps. This
optimizer keeps one state and one schedule, and steps each group with the shared
rate times the group's multiplier. Schedules and ReduceLROnPlateau act on the shared
rate, so every group follows them in proportion.

It subclasses whatever `keras.optimizers.AdamW` resolves to on the running backend,
which on torch is the fused `torch._foreach` implementation.
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
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._variable_multipliers = {}

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
        for multiplier, (group_grads, group_variables) in self._grouped(
            grads, trainable_variables
        ):
            group_rate = learning_rate if multiplier == 1.0 else learning_rate * multiplier
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
