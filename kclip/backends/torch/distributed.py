"""Data-parallel training on torch with torch.distributed: one process per device, launched by torchrun.

    torchrun --nproc_per_node N scripts/train.py --config ... --trainer.distribution data_parallel

Keras 3.15 has no `keras.distribution` for torch, so kclip wires torch's own engine into its train
step (kclip/models/task.py):

- `configure` starts the process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
  ...): NCCL when CUDA is there, each process on the GPU named by LOCAL_RANK; gloo on CPUs.
- Each rank trains on its own rows of each global batch (`local_batch`): rank r takes rows
  [r*b, (r+1)*b) of a global batch of W*b rows, or the batch as it is when the input pipeline
  already gives each rank its own b rows.
- The embeddings are gathered across ranks with their gradient (`gather_with_grad`, open_clip's
  `--gather-with-grad`): each rank scores its own captions against every image of the global batch
  (and its images against every caption). Its loss is the mean over its own rows, so the global
  loss is the mean of the ranks' losses.
- The backward pass of the gather sums, over ranks, what every rank's loss sends back to a rank's
  embeddings, so rank r's gradient is d(sum of the ranks' losses)/d(its part of the weights). Summed
  over ranks that is W times the gradient of the global loss: `average_gradients` (one all-reduce
  per bucket) divides by W and gives every rank exactly the one-process gradient. The loss scale of
  mixed_float16 travels inside the gradients, so every rank then skips or applies the same step.
- Batch norm normalizes with each rank's own rows, as DistributedDataParallel does without
  SyncBatchNorm; its moving statistics are averaged over the ranks after each step
  (`average_state`), so that every rank holds the same model.
"""

import contextlib
import os

import keras

# 25 MiB, DistributedDataParallel's default bucket: few collectives, bounded extra memory.
BUCKET_BYTES = 25 * 1024 * 1024
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_state = {"global_batch_size": None}


def _dist():
    import torch.distributed as dist

    return dist


def active():
    """True inside a torchrun job of two or more processes whose group `configure` started."""
    if keras.config.backend() != "torch":
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return _dist().get_rank() if active() else 0


def world_size():
    return _dist().get_world_size() if active() else 1


def is_primary():
    """Whether this process writes the run's files (checkpoints, model.keras, reports, W&B): rank 0."""
    return rank() == 0


def configure(train_batch_size=None):
    """Starts the process group torchrun describes; returns the world size (1 outside torchrun).

    Must run before the model is built, so that on a GPU each process builds on its own device.
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        if "WORLD_SIZE" in os.environ or "RANK" in os.environ:
            raise ValueError(
                f"trainer.distribution=data_parallel found a partial torchrun environment (missing "
                f"{', '.join(missing)}); launch with `torchrun --nproc_per_node N scripts/train.py ...`."
            )
        print("trainer.distribution=data_parallel on torch without torchrun: training in this one "
              "process. For N devices launch `torchrun --nproc_per_node N scripts/train.py ...`.", flush=True)
        return 1
    import torch

    dist = _dist()
    count = int(os.environ["WORLD_SIZE"])
    if train_batch_size is not None and train_batch_size % count:
        raise ValueError(
            f"data.train_batch_size={train_batch_size} is the global batch and must split evenly over "
            f"{count} processes; make it a multiple of {count}."
        )
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    _state["global_batch_size"] = train_batch_size
    return count


def shutdown():
    """Ends the process group (every rank must call it)."""
    if keras.config.backend() == "torch" and _dist().is_available() and _dist().is_initialized():
        _dist().destroy_process_group()
    _state["global_batch_size"] = None


def local_batch(inputs, image_ids):
    """This rank's rows of a batch: a slice of a global batch, or the batch itself if already local."""
    rows = int(image_ids.shape[0])
    count, index = world_size(), rank()
    global_size = _state["global_batch_size"]
    if global_size is not None and rows == global_size // count and rows != global_size:
        return inputs, image_ids
    if rows % count:
        raise ValueError(
            f"A training batch of {rows} rows does not split over {count} processes; "
            f"make data.train_batch_size a multiple of {count}."
        )
    size = rows // count
    rows_of_rank = slice(index * size, (index + 1) * size)
    return {key: value[rows_of_rank] for key, value in inputs.items()}, image_ids[rows_of_rank]


def gather_with_grad(tensor):
    """Every rank's `tensor`, concatenated along the batch axis in rank order; differentiable."""
    import torch
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather(tensor):
    """Like `gather_with_grad`, for values that need no gradient (ids)."""
    import torch

    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    _dist().all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def _average_in_buckets(tensors):
    """Replaces each tensor in place by its mean over the ranks, one all-reduce per bucket."""
    import torch

    dist = _dist()
    count = world_size()
    buckets, bucket, size = [], [], 0
    for tensor in tensors:
        bucket.append(tensor)
        size += tensor.numel() * tensor.element_size()
        if size >= BUCKET_BYTES:
            buckets.append(bucket)
            bucket, size = [], 0
    if bucket:
        buckets.append(bucket)
    for bucket in buckets:
        by_dtype = {}
        for tensor in bucket:
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        for group in by_dtype.values():
            flat = torch.cat([tensor.reshape(-1) for tensor in group])
            dist.all_reduce(flat)
            flat /= count
            offset = 0
            for tensor in group:
                tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


def average_gradients(gradients):
    """The mean of each gradient over the ranks, in place (see the module docstring for why the mean)."""
    import torch

    with torch.no_grad():
        _average_in_buckets([gradient for gradient in gradients if gradient is not None])


def average_state(model):
    """Averages the model's floating-point non-trainable variables (batch-norm moving statistics)."""
    import torch

    values = [variable.value for variable in model.non_trainable_variables
              if variable.value.is_floating_point()]
    with torch.no_grad():
        _average_in_buckets(values)


def broadcast_variables(variables):
    """Copies rank 0's values of `variables` to every rank, so that all ranks start equal."""
    import torch

    dist = _dist()
    with torch.no_grad():
        for variable in variables:
            dist.broadcast(variable.value.data, src=0)


def mean_over_ranks(values):
    """Scalar tensors -> their means over the ranks (for logging the global batch's loss)."""
    import torch

    stacked = torch.stack([value.detach().float().reshape(()) for value in values])
    _dist().all_reduce(stacked)
    stacked /= world_size()
    return list(stacked.unbind())


def max_over_ranks(value):
    """A Python number -> its maximum over the ranks (a stop flag every rank must agree on)."""
    import torch

    if not active():
        return value
    tensor = torch.tensor(float(value), dtype=torch.float64)
    if _dist().get_backend() == "nccl":
        tensor = tensor.cuda()
    _dist().all_reduce(tensor, op=_dist().ReduceOp.MAX)
    return float(tensor.item())


def barrier():
    if active():
        if _dist().get_backend() == "nccl":
            _dist().barrier(device_ids=[_current_cuda_device()])
        else:
            _dist().barrier()


def _current_cuda_device():
    import torch

    return torch.cuda.current_device()


@contextlib.contextmanager
def primary_first():
    """Rank 0 runs the block first (downloads, generated data, prepared shards); the others wait, then
    run it on what rank 0 left on disk."""
    if not active():
        yield
        return
    if not is_primary():
        barrier()
    try:
        yield
    finally:
        if is_primary():
            barrier()
