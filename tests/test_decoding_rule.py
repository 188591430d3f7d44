"""One image file gives identical model inputs through training, evaluation, encode_image and indexing."""
import numpy as np
import pytest
from PIL import Image

from helpers import tiny_model
from kclip.data.image_io import DECODE_SIDE_FACTOR, decode_side, load_image
from kclip.data.layouts import CaptionedImage
from kclip.data.pipeline import training_dataset
from kclip.evaluation.evaluate import embed_split
from kclip.index.index import build_index


class RecordingEncoder:
    """Stands in for the image sub-model: keeps every batch of model inputs it is given."""

    def __init__(self, encoder):
        self.encoder, self.inputs = encoder, []

    def predict_on_batch(self, images):
        self.inputs.extend(np.asarray(images, dtype=np.float32))
        return self.encoder.predict_on_batch(images)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def photo(path, size, seed):
    # Smooth noise at a size far above DECODE_SIDE_FACTOR x the model side, so that the cap matters:
    # a 2x cap (indexing's old rule) gives other pixels than the 4x one.
    rng = np.random.default_rng(seed)
    small = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype("uint8")
    Image.fromarray(small).resize(size, Image.BICUBIC).save(path, quality=92)
    return path


def test_the_rule_is_one_named_function():
    assert decode_side(32) == DECODE_SIDE_FACTOR * 32 == 128
    assert decode_side(None) is None and decode_side(0) is None and decode_side(True) is None


def test_one_file_gives_identical_inputs_through_every_path(model, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    # Named so that the index (sorted by path) holds them in this order too.
    files = [photo(folder / "a-wide.jpg", (903, 517), 0), photo(folder / "b-tall.jpg", (301, 640), 1)]
    recorder = RecordingEncoder(model._encoder("image"))
    real_encoder = model._encoder
    monkeypatch.setattr(model, "_encoder", lambda modality: recorder if modality == "image" else real_encoder(modality))

    def inputs_of(run):
        recorder.inputs.clear()
        run()
        return np.stack(recorder.inputs)

    direct = inputs_of(lambda: model.encode_image([str(path) for path in files], batch_size=2))
    images = [CaptionedImage(path, path.stem, ["a red circle"], "test") for path in files]
    evaluation = inputs_of(lambda: embed_split(model, images, batch_size=1, progress=False))
    indexing = inputs_of(lambda: build_index(model, folder, tmp_path / "index", batch_size=2, progress=False))

    # Training: the loose-file pipeline, then the preprocessor mapped inside tf.data as Task.fit does.
    dataset = training_dataset(images, model.preprocessor.image_converter.resizing, model.image_size, 2,
                               shuffle=False, drop_remainder=False)
    features, _ = next(iter(dataset.map(lambda x, y: (model.preprocessor(x), y))))
    training = np.asarray(features["images"], dtype=np.float32)

    assert direct.shape == (2, model.image_size, model.image_size, 3)
    for name, inputs in (("evaluation", evaluation), ("indexing", indexing), ("training", training)):
        np.testing.assert_array_equal(inputs, direct, err_msg=f"{name} decodes differently from encode_image")

    # The check has teeth: decoding at 2x (indexing's old rule) gives other model inputs.
    resized_2x = model.resize_image(load_image(files[0], max_side=2 * model.image_size))
    old_rule = np.asarray(model.preprocessor({"images": resized_2x[None]})["images"], dtype=np.float32)[0]
    assert np.abs(old_rule - direct[0]).max() > 1e-3
