"""The TF-free training input pipeline: worker processes from captioned images to model inputs.

It needs no TensorFlow (`data.loader: pydataset`, chosen by itself when TensorFlow is absent),
and gives `fit` what the tf.data loader (kclip/data/pipeline.py) gives it once KerasHub's
`Task.fit` has mapped the preprocessor over its batches: `({"images", "token_ids",
"padding_mask"}, image_ids)`, with the same caption choice ("one": each image once per epoch
with a caption drawn at random, a new draw each epoch; "all": every caption a row), the same
shuffling by epoch, augmentation, `drop_remainder` and `image_ids` (positions in the split).

Images are decoded by the shared rule (`kclip.data.image_io.load_model_image`) and resized by
the model's own resizing layer, on the CPU, as `encode_image` does, so training and inference
see the same pixels. Everything per batch (decoding, resizing, tokenizing, normalizing) runs in
the workers:

- on torch, a `torch.utils.data.DataLoader` whose worker processes hand their tensors over in
  shared memory (a 128-image batch at 224² is 77 MB of float32: a pipe would cost the training
  process a copy of each), pinned for the GPU when one is used;
- on the other backends, a `keras.utils.PyDataset` with worker threads (a forked JAX process
  can deadlock).

Each batch is a pure function of (seed, epoch, batch number): the epoch travels with the batch's
key from the training process, so workers hold no state that could go stale between epochs.
"""

import os

import keras
import numpy as np

from kclip.data.image_io import load_model_image


def default_workers():
    """Worker processes: every core but one (the training loop's), at most 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def _check_arguments(count, batch_size, captions, drop_remainder):
    if not count:
        raise ValueError("No images to train on: the split is empty. Check data.dir and the splits.")
    if captions not in ("one", "all"):
        raise ValueError(f"captions must be 'one' or 'all', got {captions!r}.")
    if batch_size < 1:
        raise ValueError(f"The batch size must be at least 1, got {batch_size}.")
    if count < batch_size and drop_remainder:
        raise ValueError(
            f"Only {count} training images for batch size {batch_size}: "
            f"lower data.train_batch_size or add data."
        )


class CaptionedBatches:
    """Batch `number` of epoch `epoch`: model inputs and image ids, as numpy arrays.

    Args:
        images: list of `kclip.data.layouts.CaptionedImage` (one split).
        preprocessor: the model's `DualEncoderPreprocessor` (resizing, tokenizer, converter).
        cache: decode and resize every image once, here, and keep them (workers inherit them).
    """

    def __init__(self, images, preprocessor, batch_size, seed=0, captions="one", cache=False, augment=False,
                 shuffle=True, drop_remainder=True):
        _check_arguments(len(images), batch_size, captions, drop_remainder)
        if any(not image.captions for image in images):
            raise ValueError("Every training image needs at least one caption; the split has one without.")
        self.paths = [str(image.image_path) for image in images]
        self.captions = [list(image.captions) for image in images]
        # "all": one row per (image, caption); "one": one row per image.
        if captions == "all":
            self.rows = [(i, c) for i, image in enumerate(images) for c in range(len(image.captions))]
        else:
            self.rows = [(i, None) for i in range(len(images))]
        self.preprocessor = preprocessor
        self.image_size = int(preprocessor.image_size[0])
        self.batch_size, self.seed, self.augment, self.shuffle = batch_size, seed, augment, shuffle
        self.drop_remainder = drop_remainder
        # Built here, once: worker threads would race to build it, and forked workers to each build their own.
        with keras.device("cpu"):
            preprocessor({"captions": [self.captions[0][0]]})
        self.cached = None
        if cache:
            self.cached = [self._decode(i) for i in range(len(self.paths))]

    def __len__(self):
        full, rest = divmod(len(self.rows), self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def _rng(self, epoch, *stream):
        # Streams: (0,) the epoch's order, (1, image) its caption draw, (2, batch) the batch's augmentation.
        return np.random.default_rng([self.seed, epoch, *stream])

    def _order(self, epoch):
        if not self.shuffle:
            return np.arange(len(self.rows))
        return self._rng(epoch, 0).permutation(len(self.rows))

    def _decode(self, index):
        with keras.device("cpu"):  # a worker must not touch the GPU (and cannot, once forked)
            image = load_model_image(self.paths[index], self.image_size)
            resized = self.preprocessor.image_converter.resizing(image.astype("float32"))
            return np.clip(np.round(keras.ops.convert_to_numpy(resized)), 0, 255).astype("uint8")

    def _augmented(self, image, rng):
        """Random resized crop (80-100% of the side) and horizontal flip, as the tf.data loader's."""
        size = image.shape[0]
        crop = int(size * rng.uniform(0.8, 1.0))
        top, left = rng.integers(0, size - crop + 1, size=2)
        with keras.device("cpu"):
            resized = self.preprocessor.image_converter.resizing(
                image[top:top + crop, left:left + crop].astype("float32"))
            image = np.clip(np.round(keras.ops.convert_to_numpy(resized)), 0, 255).astype("uint8")
        return image[:, ::-1] if rng.uniform() < 0.5 else image

    def batch(self, epoch, number):
        if not 0 <= number < len(self):
            raise IndexError(f"Batch {number} of {len(self)}.")
        rows = [self.rows[r] for r in self._order(epoch)[number * self.batch_size:(number + 1) * self.batch_size]]
        rng = self._rng(epoch, 2, number)
        decoded = {}
        images, captions = [], []
        for index, caption in rows:
            if index not in decoded:
                decoded[index] = self.cached[index] if self.cached is not None else self._decode(index)
            image = self._augmented(decoded[index], rng) if self.augment else decoded[index]
            images.append(image)
            if caption is None:  # "one": a fresh draw for every (epoch, image)
                caption = self._rng(epoch, 1, index).integers(len(self.captions[index]))
            captions.append(self.captions[index][int(caption)])
        with keras.device("cpu"):
            inputs = self.preprocessor({"images": np.stack(images), "captions": captions})
            inputs = {key: np.asarray(keras.ops.convert_to_numpy(value)) for key, value in inputs.items()}
        return inputs, np.asarray([index for index, _ in rows], dtype="int32")


def _torch_loader(batches, workers, validation=False):
    import torch
    import torch.utils.data

    class Keys(torch.utils.data.Sampler):
        """(epoch, batch) keys in batch order; each pass over it is a new epoch."""

        def __init__(self):
            self.epoch = -1

        def __len__(self):
            return len(batches)

        def __iter__(self):
            # A generator: its body runs at the first key taken, and the DataLoader makes (and
            # drops) more than one iterator per pass, so only a pass that runs counts as an epoch.
            self.epoch += 1
            epoch = self.epoch
            for number in range(len(batches)):
                yield epoch, number

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, key):
            inputs, image_ids = batches.batch(*key)
            return {k: torch.from_numpy(v) for k, v in inputs.items()}, torch.from_numpy(image_ids)

    return torch.utils.data.DataLoader(
        Batches(), batch_size=None, sampler=Keys(), num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        pin_memory=torch.cuda.is_available() and not validation,
        multiprocessing_context="fork" if workers > 0 else None,
    )


class KerasBatches(keras.utils.PyDataset):
    """`CaptionedBatches` as a PyDataset: worker threads; the epoch advances at each epoch's end."""

    def __init__(self, batches, workers):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=2 * workers)
        self.batches, self.epoch = batches, 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, number):
        return self.batches.batch(self.epoch, number)

    def on_epoch_end(self):
        self.epoch += 1


def loader(images, preprocessor, batch_size, seed=0, captions="one", cache=False, augment=False, shuffle=True,
           drop_remainder=True, workers=None, validation=False):
    """Captioned images (one split) -> an input pipeline for `DualEncoder.fit`, with no TensorFlow.

    `workers`: 0 decodes in the training process; None: `default_workers()`.
    """
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"data.loader_workers must be 0 or more, got {workers}.")
    batches = CaptionedBatches(images, preprocessor, batch_size, seed=seed, captions=captions, cache=cache,
                               augment=augment, shuffle=shuffle, drop_remainder=drop_remainder)
    if keras.config.backend() == "torch":
        return _torch_loader(batches, workers, validation=validation)
    return KerasBatches(batches, max(1, workers))


def datasets_for_training(records, data_config, preprocessor, seed=0):
    """(train, validation or None) for `fit` from `records`' loose files, as `data_config` asks."""
    if data_config.tfds:
        print("Loader pydataset: reading the loose files (prepared TFDS shards, data.tfds, need TensorFlow "
              "and the tfdata loader).", flush=True)
    workers = default_workers() if data_config.loader_workers is None else data_config.loader_workers
    train = loader(records.for_split("train"), preprocessor, data_config.train_batch_size, seed=seed,
                   captions=data_config.captions, cache=data_config.cache, augment=data_config.augment,
                   workers=workers)
    validation_images = records.for_split("validation")
    validation = None
    if validation_images:
        validation = loader(validation_images, preprocessor, min(data_config.val_batch_size, len(validation_images)),
                            seed=seed, cache=data_config.cache, shuffle=False, drop_remainder=False,
                            workers=workers // 2, validation=True)
    return train, validation
