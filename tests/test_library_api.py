"""The library calls a user makes first: kclip.evaluate, kclip.classify's errors, kclip.load_model's errors."""
import numpy as np
import pytest
from PIL import Image

import kclip
from fake_encoder import FakeEncoder, solid_image
from kclip.data.layouts import CaptionedImage
from recall_reference import recall

pytestmark = pytest.mark.backend_neutral


@pytest.fixture
def colour_split(tmp_path):
    """Four solid-colour photos; the red one has a second caption that names green instead."""
    captions = {"red": ["a red photo", "a green photo"], "green": ["a green photo"], "blue": ["a blue photo"],
                "yellow": ["a yellow photo"]}
    images = []
    for colour, texts in captions.items():
        path = tmp_path / f"{colour}.png"
        Image.fromarray(solid_image(colour, size=(20, 20))).save(path)
        images.append(CaptionedImage(image_path=path, image_id=path.name, captions=texts, split="test"))
    return images


def test_evaluate_gives_the_recall_worked_out_by_hand(colour_split):
    # The fake encoder embeds a photo and a caption naming its colour identically (cosine 1).
    # text->image: 4 of 5 captions find their photo first; "a green photo" of the red photo finds
    # the green one. image->text: the green photo's own caption ties with the red photo's
    # identical one, and a tie counts against the query, so 3 of 4 photos find theirs first.
    metrics = kclip.evaluate(FakeEncoder(), colour_split, batch_size=3, progress=False)
    assert metrics["t2i_r@1"] == pytest.approx(4 / 5)
    assert metrics["i2t_r@1"] == pytest.approx(3 / 4)
    assert metrics["t2i_r@5"] == 1.0 and metrics["i2t_r@5"] == 1.0
    assert (metrics["num_images"], metrics["num_captions"]) == (4, 5)


def test_evaluate_agrees_with_the_reference_and_returns_its_embeddings(colour_split):
    metrics, (images, texts, owners) = kclip.evaluate(FakeEncoder(), colour_split, batch_size=2, progress=False,
                                                      return_embeddings=True)
    assert owners.tolist() == [0, 0, 1, 2, 3]
    encoder = FakeEncoder()
    np.testing.assert_array_equal(images, encoder.encode_image([image.image_path for image in colour_split]))
    for key, value in recall(images, texts, owners).items():
        assert metrics[key] == pytest.approx(value), key


def test_evaluate_refuses_an_empty_split():
    with pytest.raises(ValueError, match="the split has no images"):
        kclip.evaluate(FakeEncoder(), [])


def test_classify_names_the_colour_and_explains_bad_arguments(tmp_path):
    photo = solid_image("blue", size=(16, 16))
    (result,) = kclip.classify(photo, ["red", "blue", "green"], FakeEncoder())
    assert result.label == "blue" and [label for label, _ in result.ranking][0] == "blue"
    assert sum(probability for _, probability in result.ranking) == pytest.approx(1.0)
    for labels, message in [([], "non-empty list"), (["red", " "], "non-empty names"),
                            (["red", "red"], "labels must be distinct")]:
        with pytest.raises(ValueError, match=message):
            kclip.classify(photo, labels, FakeEncoder())
    with pytest.raises(ValueError, match="template must contain '{}'"):
        kclip.classify(photo, ["red"], FakeEncoder(), template="a photo")
    with pytest.raises(ValueError, match="no images to classify"):
        kclip.classify([], ["red"], FakeEncoder())


def test_load_model_refuses_what_is_not_a_kclip_model(tmp_path):
    import keras

    with pytest.raises(FileNotFoundError, match="No model file at .*missing.keras"):
        kclip.load_model(tmp_path / "missing.keras")
    (tmp_path / "notes.keras").write_text("not a zip file")
    with pytest.raises(ValueError, match="notes.keras is not a kclip model"):
        kclip.load_model(tmp_path / "notes.keras")
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match="plain.keras holds a Keras Sequential, not a kclip DualEncoder"):
        kclip.load_model(tmp_path / "plain.keras")
