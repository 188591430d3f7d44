"""The training input pipeline: `tf.data` from captioned images to raw batches.

Batches are `({"images": uint8 (B, S, S, 3), "captions": string (B,)}, image_ids)`.
Normalization and tokenization happen later, in the model's preprocessor, which
`Task.fit` maps over these batches inside `tf.data` as well. Everything here runs
in TensorFlow's threads, off the training thread.

Images are decoded with `kclip.image_io.load_image` (Pillow), the same function
search and indexing use, so that training and inference see identical pixels
(EXIF orientation, CMYK, 16-bit and palette files included), then resized by the
model's own image converter.
"""

import numpy as np
import tensorflow as tf

from kclip.image_io import load_image

# kclip trains on torch; TensorFlow only feeds it, and must not map the GPU's memory.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # already initialized by the caller: nothing left to hide
    pass

AUTOTUNE = tf.data.AUTOTUNE


def _decoder(image_size):
    # Decoding at up to 4x the target side lets Pillow's JPEG draft mode skip most
    # of a big photo's pixels while leaving enough for a clean downscale.
    max_side = 4 * image_size

    def decode(path):
        return load_image(path.decode("utf-8"), max_side=max_side)

    return decode


def decode_and_resize(path, resizing, image_size):
    """A path tensor -> a (S, S, 3) uint8 image, resized by the model's converter."""
    image = tf.numpy_function(_decoder(image_size), [path], tf.uint8, stateful=False)
    image.set_shape((None, None, 3))
    resized = resizing(tf.cast(image, "float32"))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _augment(image, seed):
    """Random resized crop (80-100% of the side) and horizontal flip."""
    size = tf.shape(image)[0]
    crop = tf.cast(tf.cast(size, tf.float32) * tf.random.stateless_uniform((), seed, 0.8, 1.0), tf.int32)
    image = tf.image.stateless_random_crop(image, (crop, crop, 3), seed)
    image = tf.image.resize(image, (size, size))
    image = tf.image.stateless_random_flip_left_right(image, seed + 1)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def training_dataset(
    images,
    resizing,
    image_size,
    batch_size,
    seed=0,
    captions="one",
    cache=False,
    augment=False,
    shuffle=True,
    drop_remainder=True,
):
    """`CaptionedImage`s -> batches for `DualEncoder.fit`.

    With `captions="one"` every epoch shows each image once, with one of its
    captions drawn at random (a new draw each epoch), so that one image never fills
    a batch with false negatives. With `captions="all"` every caption is a row; the
    loss then counts same-image rows as positives through `image_ids`.

    Args:
        images: list of `kclip.data.layouts.CaptionedImage`.
        resizing: the preprocessor's `image_converter.resizing` layer.
        image_size: the square side the model takes.
    """
    if not images:
        raise ValueError("No images to train on: the split is empty. Check data.dir and the splits.")
    if captions not in ("one", "all"):
        raise ValueError(f"captions must be 'one' or 'all', got {captions!r}.")
    if len(images) < batch_size and drop_remainder:
        raise ValueError(
            f"Only {len(images)} training images for batch size {batch_size}: "
            f"lower data.train_batch_size or add data."
        )
    paths = [str(image.image_path) for image in images]
    caption_lists = tf.ragged.constant([list(image.captions) for image in images])
    dataset = tf.data.Dataset.from_tensor_slices(
        {"path": paths, "image_id": np.arange(len(images), dtype="int32"), "captions": caption_lists}
    )
    dataset = dataset.map(
        lambda item: {**item, "image": decode_and_resize(item["path"], resizing, image_size)},
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    randomness = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip(dataset, randomness.batch(2))

    def pick_caption(item, random_pair):
        count = tf.shape(item["captions"], out_type=tf.int64)[0]
        caption = item["captions"][random_pair[0] % count]
        image = item["image"]
        if augment:
            image = _augment(image, tf.stack([random_pair[1], random_pair[0]]))
        return {"images": image, "captions": caption}, item["image_id"]

    def every_caption(item, random_pair):
        count = tf.shape(item["captions"])[0]
        image = item["image"]
        if augment:
            image = _augment(image, tf.stack([random_pair[1], random_pair[0]]))
        return tf.data.Dataset.from_tensor_slices(
            ({"images": tf.repeat(image[None], count, axis=0), "captions": item["captions"]},
             tf.repeat(item["image_id"], count))
        )

    if captions == "one":
        dataset = dataset.map(pick_caption, num_parallel_calls=AUTOTUNE)
    else:
        dataset = dataset.flat_map(every_caption)
        if shuffle:
            dataset = dataset.shuffle(8 * batch_size, seed=seed + 1, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
