"""Training throughput of kclip's `fit` train step, in pairs/s, on synthetic tensors.

    python benchmarks/train_throughput.py --size full --precision mixed_bfloat16 --batch-size 32
    python benchmarks/train_throughput.py --config configs/demo.yaml --batch-size 64

`--size full|small` builds the towers of benchmarks/harness.py (random weights, the
same shapes as the presets); `--config` uses a config's from-scratch towers.
The data pipeline is left out: batches are fixed, already-preprocessed tensors, so
this measures the model step alone (benchmarks/data_pipeline.py measures input).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from harness import SIZES, minor_faults, report  # noqa: E402
from kclip.config import ModelConfig, parse_config  # noqa: E402
from kclip.models.towers import build_dual_encoder, build_word_vocabulary  # noqa: E402
from kclip.backends.torch.levers import training_levers  # noqa: E402
from kclip.utils.precision import resolve_precision  # noqa: E402


# Command-line flag -> (kclip.backends.torch.levers.training_levers keyword, what it switches,
# kclip.train's default).
LEVER_FLAGS = {
    "fused-batch-norm": ("fused_batch_norm_kernel", "torch's fused BatchNormalization while training", "on"),
    "release-intermediates": ("release_intermediates",
                              "free functional-graph activations after their last use", "on"),
    "fast-conv-kernels": ("fast_conv_kernels", "conv kernels in torch's layout while training", "on"),
    "fused-attention": ("fused_attention_kernel", "attention with dropout through torch's fused kernel while training",
                        "on"),
    "fold-pool-padding": ("fold_pool_padding", "a ResNet stem's padding inside its max pooling while training", "on"),
    "inplace-activations": ("inplace_activations", "ReLUs and residual sums written into their input while training",
                            "on"),
    # Off by default (the heap keeps growing at the full size); configs/demo.yaml turns it on.
    "keep-freed-memory": ("keep_freed_memory", "glibc keeps freed memory in the process between steps", "off"),
}


def lever_setting(args, flag):
    return getattr(args, flag.replace("-", "_"))


def model_config_for(args):
    if args.config:
        config = parse_config(["--config", args.config])
        return config.model, config.data.max_length
    size = SIZES[args.size]
    bert = dict(size["bert"])
    bert.pop("vocabulary_size")
    return (
        ModelConfig(
            image_encoder="ResNetBackbone",
            image_encoder_config=size["resnet"],
            text_encoder="DistilBertBackbone",
            text_encoder_config=bert,
            image_size=size["image_size"],
            image_data_format=args.data_format,
            projection_dims=size["projection_dim"],
        ),
        size["sequence_length"],
    )


class StepTimer(keras.callbacks.Callback):
    """Each train step's seconds and minor page faults."""

    def __init__(self, synchronize):
        super().__init__()
        self.synchronize, self.times, self.faults = synchronize, [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.synchronize()
        self.faults_before, self.started = minor_faults(), time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.synchronize()
        self.times.append(time.perf_counter() - self.started)
        self.faults.append(minor_faults() - self.faults_before)


class SameBatch(keras.utils.PyDataset):
    """One preprocessed batch, `count` times."""

    def __init__(self, inputs, labels, count):
        super().__init__()
        self.batch, self.count = (inputs, labels), count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.batch


def time_fit_steps(model, inputs, labels, warmup, steps, synchronize, faults=None):
    """Times `fit`'s own train steps (one epoch of warmup + steps batches).

    With a list as `faults`, extends it with each timed step's minor page faults.
    """
    # The same host batch each step, through a PyDataset (no TensorFlow needed, as on a GPU
    # machine without it): `fit` still converts and copies it to the device every step.
    batches = SameBatch(inputs, labels, warmup + steps)
    timer = StepTimer(synchronize)
    model.fit(batches, epochs=1, verbose=0, callbacks=[timer])
    if faults is not None:
        faults.extend(timer.faults[warmup:])
    return timer.times[warmup:]


def add_model_arguments(parser, precision="auto"):
    """The flags `model_and_batch` reads: the towers, batch, precision, layout, text length, compiling."""
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--config", help="take the towers from a config instead of --size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default=precision)
    parser.add_argument("--data-format", default="auto", choices=["auto", "channels_first", "channels_last"])
    parser.add_argument("--sequence-length", type=int,
                        help="padded caption length (default: the size's 32, or the config's max_length)")
    parser.add_argument("--jit-compile", default="off", choices=["on", "off"],
                        help="compile(jit_compile=True): torch.compile of the train step on torch")


def model_and_batch(args):
    """(compiled model without preprocessor, one preprocessed batch, image_ids, policy, sequence length)."""
    policy = resolve_precision(args.precision)
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model_config, sequence_length = model_config_for(args)
    sequence_length = args.sequence_length or sequence_length
    vocabulary_size = SIZES[args.size]["bert"]["vocabulary_size"] if not args.config else model_config.vocabulary_size
    vocabulary = build_word_vocabulary([f"w{i}" for i in range(vocabulary_size)], max_size=vocabulary_size)
    model = build_dual_encoder(model_config, sequence_length=sequence_length, vocabulary=vocabulary)
    model.compile(
        learning_rate=model_config.head_lr,
        image_learning_rate=model_config.image_encoder_lr,
        text_learning_rate=model_config.text_encoder_lr,
        jit_compile=args.jit_compile == "on",
    )
    model.preprocessor = None  # synthetic tensors are already preprocessed

    rng = np.random.default_rng(0)
    size, batch = model_config.image_size, args.batch_size
    inputs = {
        "images": rng.standard_normal((batch, size, size, 3), dtype="float32"),
        "token_ids": rng.integers(5, vocabulary_size, (batch, sequence_length)).astype("int32"),
        "padding_mask": np.ones((batch, sequence_length), dtype="int32"),
    }
    image_ids = np.arange(batch)
    return model, inputs, image_ids, policy, sequence_length


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    for flag, (_, what, default) in LEVER_FLAGS.items():
        parser.add_argument(f"--{flag}", default=default, choices=["on", "off"],
                            help=f"{what} (kclip.train's default: {default})")
    parser.add_argument("--fused-adam", default="on", choices=["on", "off"],
                        help="torch's fused Adam kernel for MultiRateAdamW's update (kclip's default: on)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    model, inputs, image_ids, policy, sequence_length = model_and_batch(args)
    size, batch = inputs["images"].shape[1], args.batch_size
    synchronize = lambda: None  # noqa: E731
    if keras.config.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            synchronize = torch.cuda.synchronize
    getattr(model.optimizer, "inner_optimizer", model.optimizer).fused = args.fused_adam == "on"
    with training_levers(**{keyword: lever_setting(args, flag) == "on" for flag, (keyword, *_) in LEVER_FLAGS.items()},
                         model=model):
        faults = []
        times = time_fit_steps(model, inputs, image_ids, args.warmup, args.steps, synchronize, faults)
    report(
        "kclip_fit_step",
        times,
        batch,
        size=args.config or args.size,
        image_size=size,
        sequence_length=sequence_length,
        precision=policy,
        data_format=model.backbone.image_data_format,
        **{flag.replace("-", "_"): lever_setting(args, flag) for flag in LEVER_FLAGS},
        fused_adam=args.fused_adam,
        jit_compile=args.jit_compile,
        minor_faults_per_step=statistics.median(faults),
        parameters=model.count_params(),
        backend=keras.config.backend(),
    )


if __name__ == "__main__":
    main()
