"""Training across devices with keras.distribution (JAX; torch goes to kclip/backends/torch/distributed.py).

`trainer.distribution: data_parallel` replicates the weights on every local device and
splits each global batch across them (`keras.distribution.DataParallel`). Under JAX the
train step is compiled for the global arrays: the embeddings of all shards meet in the
(global batch x global batch) similarity matrix, so every caption is scored against every
image of the global batch, as in CLIP (the compiler inserts the all-gather). A per-device
loss would see only its own shard's negatives.

Multi-host: call `keras.distribution.initialize()` on every host before training (on a TPU
VM or a Cloud TPU pod slice it reads the topology itself; elsewhere pass
`job_addresses`, `num_processes` and `process_id`); `keras.distribution.list_devices()` then
returns every host's devices, and `data_parallel` spans all of them, each host feeding its
own part of the global batch.
"""

import contextlib

import keras

CHOICES = ("none", "data_parallel")


def configure(name, train_batch_size=None):
    """Installs the configured distribution for the rest of the process; returns it (or None).

    Must run before the model is built, so that its variables are laid out on the devices.
    """
    if name == "none":
        return None
    if name not in CHOICES:
        raise ValueError(f"Unknown trainer.distribution {name!r}; choose one of {CHOICES}.")
    backend = keras.config.backend()
    if backend == "torch":
        # keras.distribution has no torch implementation in Keras 3.15: torch.distributed instead.
        from kclip.backends.torch import distributed

        return distributed.configure(train_batch_size)
    if backend != "jax":
        raise ValueError(
            f"trainer.distribution=data_parallel needs KERAS_BACKEND=jax or torch; this run uses {backend!r}. "
            "keras.distribution is implemented for JAX only in Keras 3, and kclip wires torch.distributed "
            "(torchrun) for torch; on TensorFlow it would need a tf.distribute.MirroredStrategy scope "
            "around building and compiling the model, which kclip does not set up. Set "
            "trainer.distribution=none, or run on JAX or torch."
        )
    devices = keras.distribution.list_devices()
    if train_batch_size is not None and train_batch_size % len(devices):
        raise ValueError(
            f"data.train_batch_size={train_batch_size} does not split evenly over {len(devices)} "
            f"devices; make it a multiple of {len(devices)}."
        )
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return distribution


@contextlib.contextmanager
def undistributed():
    """Runs the block on whole, unsplit batches (weights stay replicated on every device).

    Evaluation and embedding take batches of any size (a split's last batch, one query),
    which a DataParallel layout cannot split unevenly; they are cheap next to training,
    so they run unsplit: inputs are placed next to the replicated weights.
    """
    if keras.config.backend() != "jax" or keras.distribution.distribution() is None:
        yield
        return
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)
