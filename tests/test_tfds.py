"""Preparing captioned images into TFDS shards, and reading them back as training batches."""

import csv
import json
import dataclasses

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_fixtures import (make_custom, make_flickr8k_original, make_indexed_custom, make_kaggle_flickr8k,
                           make_kaggle_flickr30k, make_karpathy, make_odd_images_custom)
from kclip.config import DataConfig
from kclip.data.layouts import read_captioned_images
from kclip.data.pipeline import datasets_for_training, prepared_dataset, training_dataset
from kclip.data.splits import SPLITS
from kclip.data.tfds_builders import (CACHE_FOLDER_NAME, CaptionedImagesConfig, KclipCustom, load_prepared_builder,
                                      prepare_tfds)
from kclip.data.image_io import load_image

tfds.disable_progress_bar()
RESIZING = keras_hub.layers.ImageConverter(image_size=(8, 8)).resizing
FIXTURES = {
    "kaggle_flickr8k": make_kaggle_flickr8k,
    "flickr8k_original": make_flickr8k_original,
    "kaggle_flickr30k": make_kaggle_flickr30k,
    "karpathy": make_karpathy,
    "custom_csv": make_custom,
    "custom_jsonl": lambda root: make_custom(root, "jsonl"),
}


def _read_records(data_dir, **kwargs):
    return read_captioned_images(data_dir, max_bad_fraction=0.9, split_fractions=(0.5, 0.25, 0.25), **kwargs)


def _examples(prepared):
    """image id -> (split, captions, index, decoded image) for every prepared example."""
    builder = load_prepared_builder(prepared)
    found = {}
    for split in builder.info.splits:
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            image_id = example["image_id"].decode()
            assert image_id not in found, f"{image_id} is prepared twice"
            found[image_id] = (split, [c.decode() for c in example["captions"]], int(example["index"]),
                               example["image"])
    return found


@pytest.mark.parametrize("layout", sorted(FIXTURES))
def test_preparing_each_layout_round_trips_images_captions_ids_and_splits(tmp_path, layout):
    fixture = FIXTURES[layout](tmp_path)
    columns = {"image_column": "file", "caption_column": "text"} if layout.startswith("custom") else {}
    records = _read_records(fixture.data_dir, **columns)
    prepared = prepare_tfds(records, data_dir=tmp_path / "tfds")
    assert not prepared.reused and prepared.skipped == []
    examples = _examples(prepared)

    assert {image_id: captions for image_id, (_, captions, _, _) in examples.items()} == fixture.captions
    by_split = {name: [image.image_id for image in records.for_split(name)] for name in SPLITS}
    for image_id, (split, _, index, pixels) in examples.items():
        assert by_split[split][index] == image_id  # index = position in records.for_split(split)
        original = load_image(records.data_dir / _path_of(records, image_id))
        assert pixels.shape == original.shape
        assert np.abs(pixels.astype(int) - original).mean() < 3  # JPEG q95 of the same pixels
    assert prepared.split_counts() == {name: len(ids) for name, ids in by_split.items() if ids}
    if fixture.splits:  # official lists or Karpathy JSON: the prepared splits are exactly those
        assert {image_id: split for image_id, (split, *_) in examples.items()} == \
            {image_id: split for image_id, split in fixture.splits.items() if image_id in fixture.captions}


def _path_of(records, image_id):
    return next(image.image_path for image in records.images if image.image_id == image_id)


def test_odd_images_are_normalized_rgb_upright_and_downscaled(tmp_path):
    fixture = make_odd_images_custom(tmp_path)
    records = _read_records(fixture.data_dir, split_method="hash")
    examples = _examples(prepare_tfds(records, data_dir=tmp_path / "tfds", max_side=64))
    assert set(examples) == set(fixture.captions)
    rotated = examples["rotated.jpg"][3]
    assert rotated.shape == (40, 20, 3)  # EXIF orientation 6 applied: stored 40x20, shown 20 wide
    assert rotated[5, 10, 0] > 200 and rotated[5, 10, 2] < 60  # red on top
    assert rotated[35, 10, 2] > 200 and rotated[35, 10, 0] < 60  # blue at the bottom
    assert examples["large.jpg"][3].shape == (43, 64, 3)  # 1200x800 -> longer side 64
    assert np.abs(examples["modes/cmyk.tif"][3][0, 0].astype(int) - (255, 0, 0)).max() < 8
    assert np.abs(examples["modes/sixteen_bit.png"][3][0, 1].astype(int) - 255).max() < 8


def test_preparation_is_reused_when_unchanged_and_redone_when_a_caption_file_changes(tmp_path):
    fixture = make_indexed_custom(tmp_path, count=4)
    first = prepare_tfds(_read_records(fixture.data_dir))
    assert first.path.is_relative_to(fixture.data_dir / CACHE_FOLDER_NAME)  # the default cache folder
    again = prepare_tfds(_read_records(fixture.data_dir))
    assert again.reused and again.path == first.path and again.fingerprint == first.fingerprint

    with open(fixture.data_dir / "captions.csv", "a", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerow(["2.png", "a brand new caption"])
    changed = prepare_tfds(_read_records(fixture.data_dir))
    assert not changed.reused and changed.path != first.path
    assert not first.path.exists()  # the stale version of the same source is removed
    assert "a brand new caption" in _examples(changed)["2.png"][1]
    source = json.loads((changed.path / "kclip_source.json").read_text())
    assert source["fingerprint"] == changed.fingerprint and source["max_side"] == 512

    assert not prepare_tfds(_read_records(fixture.data_dir), max_side=32).reused  # parameters count too


def test_builder_reads_the_manual_dir_itself(tmp_path):
    fixture = make_kaggle_flickr30k(tmp_path)
    builder = KclipCustom(config=CaptionedImagesConfig(name="manual", version="1.0.0", max_side=64,
                                                              max_bad_fraction=0.5),
                          data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(fixture.data_dir), try_download_gcs=False))
    assert {image_id: captions for image_id, (_, captions, _, _) in _examples(builder).items()} == fixture.captions


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    fixture = make_indexed_custom(tmp_path_factory.mktemp("indexed"), count=6)
    records = read_captioned_images(fixture.data_dir, split_fractions=(1.0, 0.0, 0.0))
    return records, prepare_tfds(records, data_dir=fixture.data_dir.parent / "tfds")


def _epochs(dataset, count):
    return [[(batch["images"].numpy(), [c.decode() for c in batch["captions"].numpy()], ids.numpy())
             for batch, ids in dataset] for _ in range(count)]


def test_reader_shows_each_image_once_per_epoch_with_one_of_its_own_captions(indexed):
    records, prepared = indexed
    dataset = prepared_dataset(prepared, "train", RESIZING, batch_size=3, seed=1)
    reference = training_dataset(records.for_split("train"), RESIZING, 8, batch_size=3, seed=1)
    assert dataset.element_spec == reference.element_spec  # the same batches as from loose files
    names = [image.image_id for image in records.for_split("train")]
    seen = set()
    for epoch in _epochs(dataset, 3):
        assert all(pixels.shape == (3, 8, 8, 3) and pixels.dtype == np.uint8 for pixels, _, _ in epoch)
        rows = [(caption, int(names[image_id].removesuffix(".png")), int(image[4, 4, 0]))
                for pixels, captions, ids in epoch for caption, image_id, image in zip(captions, ids, pixels)]
        assert sorted(index for _, index, _ in rows) == list(range(6))  # every image once
        assert all(caption.startswith(f"image {index} ") for caption, index, _ in rows)  # its own caption
        assert all(abs(red - 40 * index) <= 3 for _, index, red in rows)  # and its own pixels
        seen.update(caption for caption, _, _ in rows)
    assert len(seen) > 6  # a new caption draw each epoch


def test_reader_is_deterministic_by_seed_and_all_mode_yields_every_caption(indexed):
    _, prepared = indexed
    first = _epochs(prepared_dataset(prepared, "train", RESIZING, batch_size=3, seed=7), 2)
    second = _epochs(prepared_dataset(prepared, "train", RESIZING, batch_size=3, seed=7), 2)
    assert [[(c, i.tolist()) for _, c, i in epoch] for epoch in first] == \
        [[(c, i.tolist()) for _, c, i in epoch] for epoch in second]
    (epoch,) = _epochs(prepared_dataset(prepared, "train", RESIZING, batch_size=4, captions="all", cache=True,
                                        drop_remainder=False), 1)
    pairs = sorted(caption for _, captions, _ in epoch for caption in captions)
    assert pairs == sorted(f"image {i} caption {k}" for i in range(6) for k in range(3))


def test_reader_errors_for_a_missing_split_or_too_small_a_split(indexed, tmp_path):
    _, prepared = indexed
    with pytest.raises(ValueError, match="no 'test' split"):
        prepared_dataset(prepared, "test", RESIZING, batch_size=2)
    with pytest.raises(ValueError, match="lower data.train_batch_size"):
        prepared_dataset(prepared, "train", RESIZING, batch_size=64)
    with pytest.raises(FileNotFoundError, match="prepare_tfds"):
        prepared_dataset(tmp_path, "train", RESIZING, batch_size=2)


def test_datasets_for_training_prepares_once_then_reads_the_shards(tmp_path, capsys):
    fixture = make_indexed_custom(tmp_path, count=8)
    records = read_captioned_images(fixture.data_dir, split_fractions=(0.5, 0.5, 0.0))
    data = DataConfig(dataset_name="custom", tfds=True, tfds_dir=str(tmp_path / "tfds"), prepared_max_side=64,
                      captions="one", cache=False, augment=False, train_batch_size=2, val_batch_size=128,
                      split_fractions=[0.5, 0.5, 0.0], max_bad_fraction=0.05, shuffle_buffer=16)
    train, validation = datasets_for_training(records, data, RESIZING, 8, seed=3)
    assert "Prepared TFDS shards" in capsys.readouterr().out
    validation_ids = np.concatenate([ids.numpy() for _, ids in validation])
    assert sorted(validation_ids.tolist()) == list(range(len(records.for_split("validation"))))
    assert sum(ids.shape[0] for _, ids in train) == 2 * (len(records.for_split("train")) // 2)
    datasets_for_training(records, data, RESIZING, 8, seed=3)
    assert "Reusing TFDS shards" in capsys.readouterr().out
    loose, _ = datasets_for_training(records, dataclasses.replace(data, tfds=False), RESIZING, 8)
    assert loose.element_spec == train.element_spec
    assert isinstance(train, tf.data.Dataset)
