"""The training input pipeline: `tf.data` from captioned images to raw batches.

Batches are `({"images": uint8 (B, S, S, 3), "captions": string (B,)}, image_ids)`.
Normalization and tokenization happen later, in the model's preprocessor, which
`Task.fit` maps over these batches inside `tf.data` as well. Everything here runs
in TensorFlow's threads, off the training thread.

Two sources give the same batches:

- `training_dataset` reads loose files. Images are decoded by the shared rule
  `kclip.data.image_io.load_model_image` (Pillow), which evaluation, `encode_image`
  and indexing use too, so that training and inference see identical pixels (EXIF
  orientation, CMYK, 16-bit and palette files included; tests/test_decoding_rule.py).
- `prepared_dataset` reads the shards `kclip.data.tfds_builders.prepare_tfds`
  wrote. Those hold clean RGB JPEGs already normalized by `load_image` (longer side at
  most `data.prepared_max_side`), so they are decoded with `tf.io.decode_jpeg`, in
  TensorFlow's threads, without the GIL. That JPEG re-encoding makes their pixels
  close to, not identical with, the loose files' ones.

Both resize with the model's own image converter and share the caption choice,
shuffling, caching and batching below (`_batches`).
"""

import numpy as np

from kclip.data.image_io import load_model_image
from kclip.utils.optional import require_tensorflow, tensorflow_available

AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TensorFlow for it
# Encoded images held for shuffling prepared shards (on top of shuffling the shard files).
DEFAULT_SHUFFLE_BUFFER = 4096
_gpu_hidden = False


def _tf():
    """TensorFlow, imported on first use: kclip imports and trains without it (the pydataset
    loader, kclip/data/pydataset.py); this loader is the one that needs it."""
    global _gpu_hidden
    tf = require_tensorflow("the tf.data loader (data.loader: tfdata) and prepared TFDS shards")
    if not _gpu_hidden:
        _gpu_hidden = True
        # kclip trains on torch; TensorFlow only feeds it, and must not map the GPU's memory.
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # already initialized by the caller: nothing left to hide
            pass
    return tf


def _decoder(image_size):
    # The shared rule (kclip.data.image_io.load_model_image): encode_image sees the same pixels.
    def decode(path):
        return load_model_image(path.decode("utf-8"), image_size)

    return decode


def resize_image(image, resizing):
    """A (H, W, 3) image tensor -> (S, S, 3) uint8 through the model's resizing layer."""
    tf = _tf()
    resized = resizing(tf.cast(image, "float32"))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def decode_and_resize(path, resizing, image_size):
    """A path tensor -> a (S, S, 3) uint8 image, resized by the model's converter."""
    tf = _tf()
    image = tf.numpy_function(_decoder(image_size), [path], tf.uint8, stateful=False)
    image.set_shape((None, None, 3))
    return resize_image(image, resizing)


def decode_jpeg_and_resize(encoded, resizing):
    """JPEG bytes (as prepared, already RGB and oriented) -> a (S, S, 3) uint8 image."""
    tf = _tf()
    return resize_image(tf.io.decode_jpeg(encoded, channels=3), resizing)


def _augment(image, seed):
    """Random resized crop (80-100% of the side) and horizontal flip."""
    tf = _tf()
    size = tf.shape(image)[0]
    crop = tf.cast(tf.cast(size, tf.float32) * tf.random.stateless_uniform((), seed, 0.8, 1.0), tf.int32)
    image = tf.image.stateless_random_crop(image, (crop, crop, 3), seed)
    image = tf.image.resize(image, (size, size))
    image = tf.image.stateless_random_flip_left_right(image, seed + 1)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _check_arguments(count, batch_size, captions, drop_remainder):
    if not count:
        raise ValueError("No images to train on: the split is empty. Check data.dir and the splits.")
    if captions not in ("one", "all"):
        raise ValueError(f"captions must be 'one' or 'all', got {captions!r}.")
    if count < batch_size and drop_remainder:
        raise ValueError(
            f"Only {count} training images for batch size {batch_size}: "
            f"lower data.train_batch_size or add data."
        )


def _batches(items, decode, batch_size, seed, captions, cache, augment, shuffle, drop_remainder,
             shuffle_buffer):
    """Items `{"captions": (n,) strings, "image_id": int32, ...}` -> training batches.

    `decode(item)` returns the item with `"image"`, a (S, S, 3) uint8 tensor. Without a
    cache the (cheap) undecoded items are shuffled before decoding, so the shuffle buffer
    never holds decoded images; with a cache, decoded images are cached, then shuffled.
    """
    tf = _tf()

    def with_image(item):
        return {"image": decode(item), "captions": item["captions"], "image_id": item["image_id"]}

    if cache:
        items = items.map(with_image, num_parallel_calls=AUTOTUNE, deterministic=True).cache()
    if shuffle:
        items = items.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if not cache:
        items = items.map(with_image, num_parallel_calls=AUTOTUNE, deterministic=True)
    randomness = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    items = tf.data.Dataset.zip(items, randomness.batch(2))

    def image_of(item, random_pair):
        if augment:
            return _augment(item["image"], tf.stack([random_pair[1], random_pair[0]]))
        return item["image"]

    def pick_caption(item, random_pair):
        count = tf.shape(item["captions"], out_type=tf.int64)[0]
        caption = item["captions"][random_pair[0] % count]
        return {"images": image_of(item, random_pair), "captions": caption}, item["image_id"]

    def every_caption(item, random_pair):
        count = tf.shape(item["captions"])[0]
        image = image_of(item, random_pair)
        return tf.data.Dataset.from_tensor_slices(
            ({"images": tf.repeat(image[None], count, axis=0), "captions": item["captions"]},
             tf.repeat(item["image_id"], count))
        )

    if captions == "one":
        batches = items.map(pick_caption, num_parallel_calls=AUTOTUNE)
    else:
        batches = items.flat_map(every_caption)
        if shuffle:
            batches = batches.shuffle(8 * batch_size, seed=seed + 1, reshuffle_each_iteration=True)
    return batches.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def training_dataset(images, resizing, image_size, batch_size, seed=0, captions="one", cache=False,
                     augment=False, shuffle=True, drop_remainder=True):
    """`CaptionedImage`s (loose files) -> batches for `DualEncoder.fit`.

    With `captions="one"` every epoch shows each image once, with one of its
    captions drawn at random (a new draw each epoch), so that one image never fills
    a batch with false negatives. With `captions="all"` every caption is a row; the
    loss then counts same-image rows as positives through `image_ids`, which are
    positions in `images`.

    Args:
        images: list of `kclip.data.layouts.CaptionedImage`.
        resizing: the preprocessor's `image_converter.resizing` layer.
        image_size: the square side the model takes.
    """
    tf = _tf()
    _check_arguments(len(images), batch_size, captions, drop_remainder)
    paths = [str(image.image_path) for image in images]
    caption_lists = tf.ragged.constant([list(image.captions) for image in images])
    items = tf.data.Dataset.from_tensor_slices(
        {"path": paths, "image_id": np.arange(len(images), dtype="int32"), "captions": caption_lists}
    )
    return _batches(
        items, lambda item: decode_and_resize(item["path"], resizing, image_size), batch_size, seed,
        captions, cache, augment, shuffle, drop_remainder, shuffle_buffer=len(images),
    )


def prepared_dataset(prepared, split, resizing, batch_size, seed=0, captions="one", cache=False, augment=False,
                     shuffle=True, drop_remainder=True, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER):
    """One split of a prepared TFDS data set -> the same batches as `training_dataset`.

    `image_ids` are the images' positions in `records.for_split(split)` (stored at
    preparation), so validation batches line up with the records exactly as
    `training_dataset`'s do.

    Args:
        prepared: a `kclip.data.tfds_builders.PreparedData`, or the folder that
            holds a prepared version's `dataset_info.json`.
        split: "train", "validation" or "test".
        resizing: the preprocessor's `image_converter.resizing` layer.
        shuffle_buffer: encoded images held for shuffling, on top of shuffling
            the order of the shard files (default 4096, about 0.4 GB at 512 px).
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    from kclip.data.splits import normalise_split_name
    from kclip.data.tfds_builders import load_prepared_builder

    builder = load_prepared_builder(prepared)
    split = normalise_split_name(split)
    if split not in builder.info.splits:
        raise ValueError(
            f"The prepared data set at {builder.data_dir} has no {split!r} split "
            f"(it has {sorted(builder.info.splits)}): that split had no images."
        )
    count = builder.info.splits[split].num_examples
    _check_arguments(count, batch_size, captions, drop_remainder)
    read_config = tfds.ReadConfig(
        shuffle_seed=seed, shuffle_reshuffle_each_iteration=True, try_autocache=False,
    )
    items = builder.as_dataset(
        split=split, shuffle_files=shuffle, read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    items = items.map(lambda example: {"encoded": example["image"], "captions": example["captions"],
                                       "image_id": tf.cast(example["index"], tf.int32)})
    return _batches(
        items, lambda item: decode_jpeg_and_resize(item["encoded"], resizing), batch_size, seed,
        captions, cache, augment, shuffle, drop_remainder, shuffle_buffer=min(count, shuffle_buffer),
    )


def resolve_loader(loader="auto"):
    """`data.loader` -> "tfdata" or "pydataset"; auto: tfdata where TensorFlow is installed."""
    if loader == "auto":
        return "tfdata" if tensorflow_available() else "pydataset"
    if loader not in ("tfdata", "pydataset"):
        raise ValueError(f"data.loader must be auto, tfdata or pydataset, got {loader!r}.")
    return loader


def datasets_for_training(records, data_config, resizing, image_size, seed=0, preprocessor=None):
    """(train, validation or None) for `fit`, as `data_config` asks.

    `data_config.loader` picks the pipeline (`resolve_loader`). The pydataset loader
    (kclip/data/pydataset.py, no TensorFlow) reads the loose files and needs the model's
    `preprocessor`. The tf.data loader, with `data_config.tfds` (default on), prepares the
    records once into TFDS shards (`kclip.data.tfds_builders.prepare_tfds`, reused while the
    data is unchanged) and reads them from there; otherwise it decodes the loose files every epoch.
    """
    if resolve_loader(getattr(data_config, "loader", "auto")) == "pydataset":
        from kclip.data.pydataset import datasets_for_training as pydatasets_for_training

        if preprocessor is None:
            raise ValueError("The pydataset loader needs the model's preprocessor: pass preprocessor=model.preprocessor.")
        return pydatasets_for_training(records, data_config, preprocessor, seed=seed)
    options = dict(captions=data_config.captions, cache=data_config.cache, augment=data_config.augment)
    if not data_config.tfds:
        def read(split, batch_size, **kwargs):
            return training_dataset(records.for_split(split), resizing, image_size, batch_size, seed=seed, **kwargs)
    else:
        _tf()  # what to install, before tensorflow_datasets fails to import without it
        from kclip.data.tfds_builders import prepare_tfds

        prepared = prepare_tfds(
            records, family=data_config.dataset_name, data_dir=data_config.tfds_dir,
            max_side=data_config.prepared_max_side,
            split_fractions=data_config.split_fractions, max_bad_fraction=data_config.max_bad_fraction)
        print(f"{'Reusing' if prepared.reused else 'Prepared'} TFDS shards at {prepared.path} "
              f"({prepared.split_counts()}).")
        buffer = data_config.shuffle_buffer

        def read(split, batch_size, **kwargs):
            return prepared_dataset(prepared, split, resizing, batch_size, seed=seed, shuffle_buffer=buffer, **kwargs)

    train = read("train", data_config.train_batch_size, **options)
    validation_count = len(records.for_split("validation"))
    validation = None
    if validation_count:
        validation = read("validation", min(data_config.val_batch_size, validation_count), cache=data_config.cache,
                          shuffle=False, drop_remainder=False)
    return train, validation


def repeated_for_fit(dataset, steps_per_epoch=None):
    """(dataset repeated, steps per epoch) when the dataset's length is known, for `fit`.

    Left to find each epoch's end itself, Keras on torch runs the iterator dry, and on a
    2-core CPU that end costs about 2 s per epoch while the training threads hold the
    cores: 40 demo epochs took 161 s instead of 215 s on a 2-core avx512_bf16 EPYC (runs R0 and
    R3 in benchmarks/results/demo-recipes-2026-11-30.jsonl).
    Told the length, Keras keeps one iterator across epochs; each pass of the repeat is
    reshuffled and draws new captions, as a new epoch did before. A dataset of unknown
    length (a TFDS read) is returned as it is.
    """
    if not hasattr(dataset, "cardinality"):  # the pydataset loader's: Keras knows its length
        return dataset, steps_per_epoch
    length = int(dataset.cardinality())
    if length <= 0:  # tf.data.UNKNOWN_CARDINALITY (-2), INFINITE (-1), or empty
        return dataset, steps_per_epoch
    return dataset.repeat(), steps_per_epoch or length
