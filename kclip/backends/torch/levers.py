"""The torch-only levers: the training ones, switched on together while `fit` runs, and the
server's thread setting."""

import contextlib

import keras

from kclip.backends.torch import (conv_layout, fused_attention, fused_batch_norm, graph_memory, heap, inplace_ops,
                                  padded_pooling)


@contextlib.contextmanager
def training_levers(fused_batch_norm_kernel=True, release_intermediates=True, fast_conv_kernels=True,
                    fused_attention_kernel=True, fold_pool_padding=True, keep_freed_memory=False, *,
                    inplace_activations=True, model=None):
    """The measured speed and memory levers that apply while `fit` runs (on by default, except
    `keep_freed_memory`, whose heap kept growing at the full size: see kclip/backends/torch/heap.py).

    Each changes how the step runs, not what it computes (tests/test_training_levers.py);
    benchmarks/compare_training.py measures what they give together (docs/performance.md). On JAX and TensorFlow the step is traced and compiled, and
    the compiler already fuses and frees what these levers handle, so they switch off,
    silently: the config is the same on every backend.

    `model` is the model about to be trained: with `fast_conv_kernels`, its conv kernels are
    stored in torch's memory order first (kclip/backends/torch/conv_layout.py).
    """
    if keras.config.backend() != "torch":
        yield
        return
    with contextlib.ExitStack() as levers:
        levers.enter_context(fused_batch_norm.enabled(fused_batch_norm_kernel))
        levers.enter_context(graph_memory.enabled(release_intermediates))
        levers.enter_context(conv_layout.enabled(fast_conv_kernels, model))
        levers.enter_context(fused_attention.enabled(fused_attention_kernel))
        # Folding needs graph_memory's graph runner: with release_intermediates off it changes nothing.
        levers.enter_context(padded_pooling.enabled(fold_pool_padding))
        levers.enter_context(inplace_ops.enabled(inplace_activations))  # the graph runner's too
        levers.enter_context(heap.enabled(keep_freed_memory))
        yield


def limit_compute_threads(count):
    """Run each torch op on at most `count` threads (None changes nothing); returns the count before.

    A search server answers many small queries at once. Splitting each tiny op over every core
    only makes the requests' threads wait on one another (benchmarks/serve_load.py
    --compute-threads 0|1 compares the two), so the server runs each op on one thread
    and gets its parallelism from concurrent requests. No-op on other backends.
    """
    if keras.config.backend() != "torch":
        return None
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(int(count))
    return previous
