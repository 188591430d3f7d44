import keras_hub
import numpy as np
import pytest
from PIL import Image

from kclip.data.layouts import CaptionedImage
from kclip.data.pipeline import repeated_for_fit, training_dataset


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


def test_a_repeated_dataset_keeps_epochs_apart_as_separate_passes_did(images):
    """fit is told the epoch length and reads one repeated iterator: every run of
    `length` batches must still be one whole, reshuffled pass with fresh captions."""
    single = training_dataset(images, RESIZING, 8, batch_size=3, seed=1)
    repeated, steps = repeated_for_fit(training_dataset(images, RESIZING, 8, batch_size=3, seed=1))
    assert steps == 2
    batches = [(batch["captions"].numpy().tolist(), ids.numpy().tolist()) for batch, ids in repeated.take(3 * steps)]
    passes = [batches[i * steps:(i + 1) * steps] for i in range(3)]
    for one_pass in passes:
        assert sorted(i for _, ids in one_pass for i in ids) == list(range(6))
    orders = [[i for _, ids in one_pass for i in ids] for one_pass in passes]
    captions = [[c for caps, _ in one_pass for c in caps] for one_pass in passes]
    assert len({tuple(order) for order in orders}) > 1, "every pass came in the same order"
    assert len({tuple(sorted(c)) for c in captions}) > 1, "every pass drew the same captions"
    # The same passes as iterating the unrepeated dataset epoch by epoch.
    for one_pass, epoch in zip(passes, epochs(single, 3)):
        assert [ids for _, ids in one_pass] == [ids.tolist() for _, _, ids in epoch]


def test_a_dataset_of_unknown_length_is_left_alone():
    import tensorflow as tf

    unknown = tf.data.Dataset.range(10).filter(lambda x: x % 2 == 0)
    dataset, steps = repeated_for_fit(unknown, steps_per_epoch=None)
    assert dataset is unknown and steps is None
    _, steps = repeated_for_fit(tf.data.Dataset.range(10).batch(5), steps_per_epoch=7)
    assert steps == 7  # the user's own count wins
