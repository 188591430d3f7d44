import keras_hub
import numpy as np
import pytest
from PIL import Image

from kclip.data.layouts import CaptionedImage
from kclip.data.pipeline import training_dataset


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    items = []
    for index in range(6):
        path = folder / f"{index}.png"
        Image.new("RGB", (20 + index, 16), (index * 40, 0, 0)).save(path)
        captions = [f"image {index} caption {k}" for k in range(3)]
        items.append(CaptionedImage(path, f"{index}.png", captions, "train"))
    return items


RESIZING = keras_hub.layers.ImageConverter(image_size=(8, 8)).resizing


def epochs(dataset, count):
    return [
        [(images.numpy(), [c.decode() for c in batch["captions"].numpy()], ids.numpy())
         for batch, ids in dataset for images in [batch["images"]]]
        for _ in range(count)
    ]


def test_each_epoch_shows_every_image_once_with_one_of_its_own_captions(images):
    dataset = training_dataset(images, RESIZING, 8, batch_size=3, seed=1)
    seen_captions = set()
    for epoch in epochs(dataset, 3):
        ids = np.concatenate([batch_ids for _, _, batch_ids in epoch])
        assert sorted(ids.tolist()) == list(range(6))
        for pixels, captions, batch_ids in epoch:
            assert pixels.shape == (3, 8, 8, 3) and pixels.dtype == np.uint8
            for caption, image_id in zip(captions, batch_ids):
                assert caption.startswith(f"image {image_id} ")
                seen_captions.add(caption)
            # The red channel encodes the image index, so pixels match their id.
            np.testing.assert_array_equal(pixels[:, 0, 0, 0], batch_ids * 40)
    assert len(seen_captions) > 6  # captions change between epochs


def test_same_seed_gives_the_same_batches(images):
    first = epochs(training_dataset(images, RESIZING, 8, batch_size=3, seed=5), 2)
    second = epochs(training_dataset(images, RESIZING, 8, batch_size=3, seed=5), 2)
    for epoch_a, epoch_b in zip(first, second):
        for (_, captions_a, ids_a), (_, captions_b, ids_b) in zip(epoch_a, epoch_b):
            assert captions_a == captions_b and np.array_equal(ids_a, ids_b)


def test_all_captions_mode_yields_every_caption_with_its_image_id(images):
    dataset = training_dataset(images, RESIZING, 8, batch_size=6, seed=0, captions="all", drop_remainder=False)
    (epoch,) = epochs(dataset, 1)
    pairs = [(caption, image_id) for _, captions, ids in epoch for caption, image_id in zip(captions, ids)]
    assert len(pairs) == 18
    assert all(caption.startswith(f"image {image_id} ") for caption, image_id in pairs)


def test_batch_larger_than_the_split_is_a_clear_error(images):
    with pytest.raises(ValueError, match="lower data.train_batch_size"):
        training_dataset(images, RESIZING, 8, batch_size=64)
