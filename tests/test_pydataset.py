"""The TF-free loader (kclip/data/pydataset.py): the batches the tf.data loader gives, without TensorFlow.

Pixels are checked against the model's own inference path (`load_model_image`, the resizing
layer and the preprocessor, as `encode_image` feeds them), tokens against the preprocessor on
the image's own captions, and the images of an epoch against the split.
"""

import numpy as np
import pytest

from data_fixtures import write_noise_jpeg
from helpers import tiny_model
from kclip.data import pydataset
from kclip.data.image_io import load_model_image
from kclip.data.layouts import CaptionedImage


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    images = []
    for number in range(10):
        path = write_noise_jpeg(folder / f"image_{number}.jpg", size=(40 + 3 * number, 30 + 2 * number), seed=number)
        captions = [f"a red circle {number}", f"a blue square {number}", f"a green triangle {number}"][: 1 + number % 3]
        images.append(CaptionedImage(path, path.name, captions, "train"))
    return images


@pytest.fixture(scope="module")
def model():
    captions = [f"a {c} {s} {n}" for c in ("red", "blue", "green") for s in ("circle", "square", "triangle")
                for n in range(10)]
    return tiny_model(captions=captions)


def expected_images(model, images):
    resized = [np.clip(np.round(model.resize_image(load_model_image(image.image_path, model.image_size))), 0, 255)
               .astype("uint8") for image in images]
    return np.asarray(model.preprocessor({"images": np.stack(resized)})["images"])


def tokens_of(model, captions):
    packed = model.preprocessor({"captions": captions})
    return np.asarray(packed["token_ids"]), np.asarray(packed["padding_mask"])


def test_an_epoch_shows_every_image_once_with_its_pixels_and_one_of_its_captions(model, split):
    batches = pydataset.CaptionedBatches(split, model.preprocessor, batch_size=4, seed=3)
    assert len(batches) == 2  # 10 images, drop_remainder
    seen = []
    for number in range(len(batches)):
        inputs, image_ids = batches.batch(0, number)
        np.testing.assert_allclose(inputs["images"], expected_images(model, [split[i] for i in image_ids]), atol=1e-6)
        for row, image_id in enumerate(image_ids):
            width = int(inputs["padding_mask"][row].sum())
            candidates = [tokens_of(model, [caption])[0][0][:width] for caption in split[image_id].captions]
            assert any(np.array_equal(inputs["token_ids"][row][:width], c) for c in candidates)
        seen.extend(image_ids.tolist())
    assert len(set(seen)) == len(seen) == 8
    whole = pydataset.CaptionedBatches(split, model.preprocessor, batch_size=4, seed=3, drop_remainder=False)
    ids = np.concatenate([whole.batch(0, n)[1] for n in range(len(whole))])
    assert len(whole) == 3 and sorted(ids.tolist()) == list(range(10))


def test_epochs_reshuffle_and_redraw_captions_and_a_seed_repeats_them(model, split):
    batches = pydataset.CaptionedBatches(split, model.preprocessor, batch_size=10, seed=0)
    first, first_ids = batches.batch(0, 0)
    second, second_ids = batches.batch(1, 0)
    assert sorted(first_ids.tolist()) == sorted(second_ids.tolist()) == list(range(10))
    assert first_ids.tolist() != second_ids.tolist()
    again, again_ids = pydataset.CaptionedBatches(split, model.preprocessor, batch_size=10, seed=0).batch(1, 0)
    assert again_ids.tolist() == second_ids.tolist()
    np.testing.assert_array_equal(again["token_ids"], second["token_ids"])
    draws = [tuple(batches.batch(epoch, 0)[0]["token_ids"][batches.batch(epoch, 0)[1].tolist().index(2)])
             for epoch in range(8)]
    assert len(set(draws)) > 1  # image 2 has three captions: the draw changes across epochs


def test_all_captions_gives_one_row_per_caption(model, split):
    batches = pydataset.CaptionedBatches(split, model.preprocessor, batch_size=5, captions="all", shuffle=False,
                                         drop_remainder=False)
    rows = [(image_id, caption) for image_id, image in enumerate(split) for caption in image.captions]
    got = []
    for number in range(len(batches)):
        inputs, image_ids = batches.batch(0, number)
        expected_tokens, _ = tokens_of(model, [caption for _, caption in rows[number * 5:(number + 1) * 5]])
        width = expected_tokens.shape[1]
        np.testing.assert_array_equal(inputs["token_ids"][:, :width], expected_tokens)
        got.extend(image_ids.tolist())
    assert got == [image_id for image_id, _ in rows]


def test_worker_processes_give_the_same_batches_over_two_epochs(model, split):
    import keras

    if keras.config.backend() != "torch":
        pytest.skip("the DataLoader path is the torch backend's")
    batches = pydataset.CaptionedBatches(split, model.preprocessor, batch_size=4, seed=5, augment=True)
    loader = pydataset.loader(split, model.preprocessor, batch_size=4, seed=5, augment=True, workers=2)
    for epoch in range(2):
        got = list(loader)
        assert len(got) == len(batches) == 2
        for number, (inputs, image_ids) in enumerate(got):
            want, want_ids = batches.batch(epoch, number)
            np.testing.assert_array_equal(image_ids.numpy(), want_ids)
            for key in want:
                np.testing.assert_array_equal(inputs[key].numpy(), want[key])


def test_bad_arguments_say_what_is_wrong(model, split):
    with pytest.raises(ValueError, match="Only 10 training images for batch size 16"):
        pydataset.CaptionedBatches(split, model.preprocessor, batch_size=16)
    with pytest.raises(ValueError, match="captions must be 'one' or 'all'"):
        pydataset.CaptionedBatches(split, model.preprocessor, batch_size=4, captions="some")
    with pytest.raises(ValueError, match="split is empty"):
        pydataset.CaptionedBatches([], model.preprocessor, batch_size=4)
    with pytest.raises(ValueError, match="loader_workers must be 0 or more"):
        pydataset.loader(split, model.preprocessor, batch_size=4, workers=-1)
