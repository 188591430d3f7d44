"""Frozen towers computed once: the heads train on cached pooled features.

When the image tower is frozen and `data.augment` is off, each image's pooled features are
the same every epoch, so they are computed once (a progress bar with img/s) and kept: in memory,
or on disk under `$KCLIP_CACHE_DIR/features/` (default `~/.cache/kclip`), keyed by the tower's
weights, the image size and the data (paths, sizes, modification times). A frozen text tower's
pooled features are cached per caption the same way; a trainable one is fed tokens. Each epoch
then costs only the heads (and the text tower when it trains).

`fit` takes the batches from `FeatureBatches` (a `keras.utils.PyDataset`): the model's own
`call` runs the heads alone on `image_features` / `text_features` (DualEncoder.call), so the
callbacks, BackupAndRestore and the exported file see the whole dual encoder, towers included.
"""

import contextlib
import hashlib
import os
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kclip.data.image_io import load_model_image
from kclip.models.hf_folders import CACHE_ENV

MODES = ("auto", "disk", "memory", "off")
_MEMORY = {}


def plan(model_config, data_config):
    """(cache image features?, cache text features?) for this run, and why not when not."""
    mode = getattr(data_config, "feature_cache", "auto")
    if mode not in MODES:
        raise ValueError(f"data.feature_cache must be one of {MODES}, not {mode!r}.")
    if mode == "off":
        return False, False, "data.feature_cache is off"
    if model_config.image_encoder_trainable:
        return False, False, "the image tower trains"
    if data_config.augment:
        return False, False, "data.augment changes the images every epoch"
    return True, not model_config.text_encoder_trainable, None


def no_grad():
    """Outside `fit`, torch records autograd graphs for every call unless told not to (STACK.md)."""
    if keras.config.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def tower_fingerprint(layer, *extra):
    digest = hashlib.sha256(repr(extra).encode())
    digest.update(type(layer).__name__.encode())
    for weight in layer.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def _data_key(paths=(), texts=()):
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    for text in texts:
        digest.update(text.encode() + b"\n")
    return digest.hexdigest()


def _cache_dir():
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kclip") / "features"


def _cached(kind, key, compute, mode):
    """`compute()`'s array, kept under `key` in memory and (mode disk/auto) on disk."""
    if key in _MEMORY:
        return _MEMORY[key], "memory"
    path = _cache_dir() / f"{kind}-{key[:32]}.npy"
    if mode in ("auto", "disk") and path.is_file():
        array = np.load(path)
        _MEMORY[key] = array
        return array, str(path)
    array = compute()
    _MEMORY[key] = array
    if mode in ("auto", "disk"):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}.npy")
        np.save(partial, array)
        os.replace(partial, path)
    return array, None


def _progress(total, description):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img", unit_scale=False, dynamic_ncols=True)


def compute_image_features(model, paths, batch_size=64, progress=True):
    """(N, width) float32 pooled image-tower features of the images at `paths`."""
    backbone = model.backbone
    images = keras.Input(shape=(None, None, 3), name="images")
    encoder = keras.Model(images, backbone.pool_images(images))
    bar = _progress(len(paths), "Image features") if progress else None
    chunks = []
    try:
        with no_grad():
            for start in range(0, len(paths), batch_size):
                batch = [model.resize_image(load_model_image(path, model.image_size))
                         for path in paths[start:start + batch_size]]
                converted = model.preprocessor({"images": np.stack(batch)})["images"]
                chunks.append(np.asarray(ops.convert_to_numpy(encoder.predict_on_batch(converted)), "float32"))
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), "float32")


def compute_text_features(model, texts, batch_size=256):
    """(N, width) float32 pooled text-tower features of `texts`."""
    backbone = model.backbone
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
    encoder = keras.Model({"token_ids": token_ids, "padding_mask": padding_mask},
                          backbone.pool_text(token_ids, padding_mask))
    with no_grad():
        chunks = [np.asarray(ops.convert_to_numpy(encoder.predict_on_batch(packed)), "float32")
                  for packed in model.tokenize(texts, batch_size)]
    return np.concatenate(chunks)


class FeatureBatches(keras.utils.PyDataset):
    """`({"image_features", "text_features" | "token_ids", "padding_mask"}, image_ids)` batches.

    Rows follow the images pipeline's rules: `captions="one"` shows each image once per epoch
    with a caption drawn at random (a new draw each epoch), `"all"` every caption; rows are
    shuffled by (seed, epoch); `image_ids` are positions in the split.
    """

    def __init__(self, image_features, captions, batch_size, text_features=None, preprocessor=None, seed=0,
                 caption_mode="one", shuffle=True, drop_remainder=True):
        super().__init__()
        if len(image_features) != len(captions):
            raise ValueError(f"{len(image_features)} image feature rows for {len(captions)} images' captions.")
        if any(not caption_list for caption_list in captions):
            raise ValueError("Every image needs at least one caption; the split has one without.")
        if text_features is None and preprocessor is None:
            raise ValueError("Give either cached text_features or the preprocessor that tokenizes captions.")
        if drop_remainder and len(image_features) < batch_size:
            raise ValueError(f"Only {len(image_features)} images for batch size {batch_size}: "
                             f"lower data.train_batch_size or add data.")
        self.image_features = image_features
        self.captions = [list(caption_list) for caption_list in captions]
        self.offsets = np.cumsum([0] + [len(caption_list) for caption_list in self.captions])
        self.text_features = text_features
        self.preprocessor = preprocessor
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.caption_mode, self.drop_remainder = caption_mode, drop_remainder
        self.epoch = 0
        self._rows = self._epoch_rows()

    def _epoch_rows(self):
        """(image index, caption index) of every row of this epoch, in order."""
        rng = np.random.default_rng((self.seed, self.epoch))
        if self.caption_mode == "all":
            rows = [(i, c) for i, caption_list in enumerate(self.captions) for c in range(len(caption_list))]
        else:
            rows = [(i, int(rng.integers(len(caption_list)))) for i, caption_list in enumerate(self.captions)]
        rows = np.asarray(rows, dtype="int64")
        return rows[rng.permutation(len(rows))] if self.shuffle else rows

    def __len__(self):
        count = len(self._rows)
        return count // self.batch_size if self.drop_remainder else -(-count // self.batch_size)

    def __getitem__(self, index):
        rows = self._rows[index * self.batch_size:(index + 1) * self.batch_size]
        images, captions = rows[:, 0], rows[:, 1]
        inputs = {"image_features": self.image_features[images]}
        if self.text_features is not None:
            inputs["text_features"] = self.text_features[self.offsets[images] + captions]
        else:
            packed = self.preprocessor({"captions": [self.captions[i][c] for i, c in rows]})
            inputs["token_ids"] = np.asarray(ops.convert_to_numpy(packed["token_ids"]))
            inputs["padding_mask"] = np.asarray(ops.convert_to_numpy(packed["padding_mask"]))
        return inputs, images.astype("int32")

    def on_epoch_begin(self):
        # Counted at the start: Keras also calls on_epoch_end once before the first epoch.
        # Validation rows (no shuffle) keep epoch 0's caption draw, so val_loss compares across epochs.
        self._epochs_begun = getattr(self, "_epochs_begun", 0) + 1
        if self.shuffle and self._epochs_begun - 1 != self.epoch:
            self.epoch = self._epochs_begun - 1
            self._rows = self._epoch_rows()


def split_features(model, images, mode="auto", with_text=True, progress=True, batch_size=64):
    """Cached (image features, text features or None) of one split's `CaptionedImage`s."""
    backbone = model.backbone
    paths = [str(image.image_path) for image in images]
    image_key = _data_key(paths) + tower_fingerprint(backbone.image_encoder, model.image_size,
                                                     backbone.image_data_format,
                                                     backbone.image_encoder.dtype_policy.name)
    started = time.time()
    image_features, source = _cached(
        "images", hashlib.sha256(image_key.encode()).hexdigest(),
        lambda: compute_image_features(model, paths, batch_size=batch_size, progress=progress), mode)
    message = f"reused from {source}" if source else f"computed in {time.time() - started:.1f} s"
    print(f"Image features of {len(paths)} images: {message}.", flush=True)
    text_features = None
    if with_text:
        texts = [caption for image in images for caption in image.captions]
        text_key = _data_key(texts=texts) + tower_fingerprint(
            backbone.text_encoder, backbone.text_pooling, model.preprocessor.sequence_length,
            backbone.text_encoder.dtype_policy.name)
        text_features, _ = _cached("text", hashlib.sha256(text_key.encode()).hexdigest(),
                                   lambda: compute_text_features(model, texts), mode)
    return image_features, text_features


def cached_datasets(model, records, model_config, data_config, seed=0, progress=True):
    """(train, validation or None) `FeatureBatches` for `fit`, or None when the towers' features
    cannot be cached for this run (the reason is printed)."""
    cache_images, cache_text, why_not = plan(model_config, data_config)
    if not cache_images:
        print(f"Feature cache: off ({why_not}).", flush=True)
        return None
    mode = getattr(data_config, "feature_cache", "auto")
    datasets = []
    for split, batch_size, training in (("train", data_config.train_batch_size, True),
                                        ("validation", data_config.val_batch_size, False)):
        images = records.for_split(split)
        if not images:
            datasets.append(None)
            continue
        if not training:  # as the image pipeline's validation batches: all rows, the last one short
            batch_size = min(batch_size, len(images))
        image_features, text_features = split_features(model, images, mode, with_text=cache_text,
                                                       progress=progress)
        datasets.append(FeatureBatches(
            image_features, [image.captions for image in images], batch_size, text_features=text_features,
            preprocessor=model.preprocessor, seed=seed, caption_mode=data_config.captions if training else "one",
            shuffle=training, drop_remainder=training))
    return tuple(datasets)
