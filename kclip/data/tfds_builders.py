"""TFDS dataset builders for kclip's sources: prepare once into shards, then train from them.

One implementation serves every source family (`kclip_flickr8k`, `kclip_flickr30k`,
`kclip_custom`, `kclip_embedded`): it takes the `CaptionRecords` that
`kclip.data.layouts.read_captioned_images` returns (any layout, splits already chosen by
image, bad files already skipped and reported) and writes TFRecord (or ArrayRecord) shards
with one example per image:

- `image`: JPEG bytes, quality 95, normalized through `kclip.data.image_io.load_image`
  (EXIF orientation applied, RGB, longer side at most `max_side`), so training never meets
  an odd file;
- `captions`: every caption kept for the image; `image_id`: its id (path in the image folder);
- `index`: its position in `records.for_split(split)`, the id batches carry;

in `train` / `validation` / `test` splits.

**Manual input.** The data folder is TFDS's manual dir: `prepare_tfds(records)` passes
`DownloadConfig(manual_dir=records.data_dir)`, and a builder made without records reads
`dl_manager.manual_dir` itself. **Downloads** happen before, into that folder:
`data.artifact_id` (W&B) or `data.kaggle_handle` (kagglehub), see `kclip.data.sources`.

**Offline and cached.** Everything is written under a `data_dir` we choose (default
`<data folder>/.kclip_tfds`, which readers of the folder ignore because it is hidden) with
`try_download_gcs=False`, so TFDS never looks anything up on GCS. The builder config's name
is a hash of what goes into the shards (image ids, captions, splits, each file's size and
modification time, and the preparation parameters): unchanged data finds its shards and is
not prepared again; a changed caption file or image gives a new name and a new preparation,
and the stale versions of the same source are removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from kclip.data.splits import SPLITS
from kclip.data.image_io import ImageLoadError, encode_jpeg, load_image
from kclip.utils.files import write_json, write_text

# Bump when the content of the prepared examples changes, so old shards are not reused.
PREPARED_FORMAT = 1
DEFAULT_MAX_SIDE = 512
DEFAULT_JPEG_QUALITY = 95
CACHE_FOLDER_NAME = ".kclip_tfds"
SOURCE_FILE_NAME = "kclip_source.json"
SKIPPED_FILE_NAME = "kclip_prepare_skipped.txt"
_CHUNK = 256  # images normalized at a time by the thread pool

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the data set in a folder in any layout that kclip.data.layouts.LAYOUTS lists (Kaggle
Flickr8k `Images/` + `captions.txt`; the original Flickr8k release; Kaggle Flickr30k
`flickr30k_images/` + `results.csv`; a Karpathy `dataset_flickr*.json` next to the images;
or a folder of images with one CSV/TSV/JSONL caption file) and pass that folder as the
manual dir: `download_and_prepare(download_config=tfds.download.DownloadConfig(
manual_dir=FOLDER, try_download_gcs=False))`, or simply `kclip.data.tfds_builders.prepare_tfds(
read_captioned_images(FOLDER))`. To download first, use `--data.artifact_id` (W&B) or
`--data.kaggle_handle` (e.g. adityajn105/flickr8k), which fill the folder.
"""


@dataclasses.dataclass
class CaptionedImagesConfig(tfds.core.BuilderConfig):
    """Preparation parameters; `name` is `<layout>_<fingerprint>`."""

    max_side: int = DEFAULT_MAX_SIDE
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    split_fractions: tuple = (0.8, 0.1, 0.1)
    max_bad_fraction: float = 0.05


class CaptionedImagesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder; the registered subclasses below only name the source family."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images normalized to RGB JPEG, all captions, image id, split index."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    LAYOUT = "auto"  # the layout read from a manual dir when no records are given

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS works this out through `importlib_resources`, which is not installed on Python
        # >= 3.9 (TFDS only requires it below 3.9) and fails for an editable install: say it.
        return epath.Path(__file__)

    def __init__(self, *, records=None, num_threads=None, **kwargs):
        self._records = records
        self._num_threads = num_threads or min(8, 2 * (os.cpu_count() or 1))
        self.skipped: list[tuple[str, str]] = []  # (image id, reason) of images that failed to normalize
        super().__init__(**kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            description="Captioned images prepared by kclip (see kclip.data.tfds_builders).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "image_id": tfds.features.Text(),
                "index": tfds.features.Scalar(dtype=np.int32),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        records = self._records
        if records is None:
            from kclip.data.layouts import read_captioned_images

            config = self.builder_config
            records = read_captioned_images(
                dl_manager.manual_dir, layout=self.LAYOUT, split_fractions=config.split_fractions,
                max_bad_fraction=config.max_bad_fraction)
        return {split: self._generate_examples(records.for_split(split))
                for split in SPLITS if records.for_split(split)}

    def _generate_examples(self, images):
        config = self.builder_config

        def normalize(image):
            try:
                pixels = load_image(image.image_path, max_side=config.max_side)
                return encode_jpeg(pixels, quality=config.jpeg_quality), None
            except (ImageLoadError, OSError) as error:
                return None, str(error)

        # Pillow releases the GIL while decoding, resizing and encoding: threads scale with cores.
        with ThreadPoolExecutor(max_workers=self._num_threads) as pool:
            for start in range(0, len(images), _CHUNK):
                chunk = images[start:start + _CHUNK]
                for index, (image, (encoded, error)) in enumerate(zip(chunk, pool.map(normalize, chunk)), start):
                    if encoded is None:
                        self.skipped.append((image.image_id, error))
                        continue
                    yield image.image_id, {"image": encoded, "captions": list(image.captions),
                                           "image_id": image.image_id, "index": index}


class KclipFlickr8k(CaptionedImagesBuilder):
    """Flickr8k (Kaggle or original release layout, official or Karpathy splits)."""


class KclipFlickr30k(CaptionedImagesBuilder):
    """Flickr30k (Kaggle layout, Karpathy splits when the JSON is present)."""


class KclipCustom(CaptionedImagesBuilder):
    """A user's folder of images plus one CSV/TSV/JSONL caption file."""


class KclipEmbedded(CaptionedImagesBuilder):
    """The procedurally generated set (kclip.data.synthetic), in the Kaggle Flickr8k layout."""


BUILDERS = {"flickr8k": KclipFlickr8k, "flickr30k": KclipFlickr30k, "custom": KclipCustom,
            "embedded": KclipEmbedded}


@dataclasses.dataclass
class PreparedData:
    """Where a prepared data set lives and whether this call had to prepare it."""

    path: Path  # the version folder: <data_dir>/<builder>/<config>/<version>
    builder: tfds.core.DatasetBuilder
    fingerprint: str
    reused: bool
    skipped: list = dataclasses.field(default_factory=list)

    def split_counts(self):
        return {name: info.num_examples for name, info in self.builder.info.splits.items()}


def _file_state(path: Path):
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def records_fingerprint(records, **parameters) -> str:
    """A stable hash of everything that ends up in the shards.

    Captions, ids and splits come from the records (so a changed caption file changes it);
    images count by size and modification time (reading their bytes would cost as much as
    preparing them).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": PREPARED_FORMAT, "layout": records.layout, **parameters},
                             sort_keys=True, default=list).encode())
    for image in records.images:
        digest.update(json.dumps([image.image_id, image.split, image.captions, _file_state(image.image_path)],
                                 ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def default_tfds_dir(records) -> Path:
    """`<data folder>/.kclip_tfds`, or a cache folder in the home directory when that is read-only."""
    candidate = Path(records.data_dir) / CACHE_FOLDER_NAME
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=candidate):
            pass
        return candidate
    except OSError:
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kclip" / "tfds"


def prepare_tfds(records, family=None, data_dir=None, max_side=DEFAULT_MAX_SIDE,
                 jpeg_quality=DEFAULT_JPEG_QUALITY, file_format="tfrecord", num_threads=None,
                 split_fractions=(0.8, 0.1, 0.1), max_bad_fraction=0.05) -> PreparedData:
    """Prepares `records` into TFDS shards once; later calls with unchanged data reuse them.

    Args:
        records: `CaptionRecords` from `read_captioned_images` / `load_records`.
        family: "flickr8k", "flickr30k", "custom" or "embedded" (the builder's name);
            default: from the layout.
        data_dir: TFDS data dir (default `default_tfds_dir(records)`).
        max_side: longer side of the stored images, in pixels.
        file_format: "tfrecord" (streams best through tf.data) or "array_record".
        split_fractions, max_bad_fraction: used only when the builder reads a manual dir itself.
    """
    family = family or {"kaggle_flickr30k": "flickr30k", "custom": "custom"}.get(records.layout, "flickr8k")
    if family not in BUILDERS:
        raise ValueError(f"Unknown TFDS source family {family!r}; use one of {sorted(BUILDERS)}.")
    if not 1 <= int(jpeg_quality) <= 100 or int(max_side) < 1:
        raise ValueError(f"max_side must be positive and jpeg_quality in 1..100, got {max_side}, {jpeg_quality}.")
    data_dir = Path(data_dir) if data_dir else default_tfds_dir(records)
    parameters = {"max_side": int(max_side), "jpeg_quality": int(jpeg_quality), "file_format": file_format}
    fingerprint = records_fingerprint(records, **parameters)
    config = CaptionedImagesConfig(
        name=f"{records.layout}_{fingerprint[:16]}", version=CaptionedImagesBuilder.VERSION,
        description=f"{records.layout} at {records.data_dir}", max_side=int(max_side),
        jpeg_quality=int(jpeg_quality), split_fractions=tuple(split_fractions), max_bad_fraction=max_bad_fraction)
    builder = BUILDERS[family](config=config, data_dir=os.fspath(data_dir), records=records,
                               num_threads=num_threads, file_format=file_format)
    path = Path(builder.data_dir)
    reused = builder.is_prepared()
    skipped = []
    if not reused:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(records.data_dir), try_download_gcs=False))
        skipped = list(builder.skipped)
        source = {"source": os.fspath(Path(records.data_dir).resolve()), "layout": records.layout,
                  "fingerprint": fingerprint, "split_source": records.split_source, **parameters,
                  "skipped": skipped}
        write_json(path / SOURCE_FILE_NAME, source, indent=1)
        if skipped:
            write_text(path / SKIPPED_FILE_NAME, "".join(f"{image_id}: {reason}\n" for image_id, reason in skipped))
        _remove_stale_versions(path, source["source"])
        builder = load_prepared_builder(path)  # re-read: the writer's builder keeps the records alive
    elif (path / SOURCE_FILE_NAME).is_file():
        skipped = json.loads((path / SOURCE_FILE_NAME).read_text(encoding="utf-8")).get("skipped", [])
    return PreparedData(path, builder, fingerprint, reused, skipped)


def _remove_stale_versions(current: Path, source: str) -> None:
    """Deletes other configs of the same builder prepared from the same source folder."""
    for info in current.parent.parent.glob(f"*/*/{SOURCE_FILE_NAME}"):
        if info.parent == current:
            continue
        try:
            stale = json.loads(info.read_text(encoding="utf-8")).get("source") == source
        except ValueError:
            stale = False
        if stale:
            shutil.rmtree(info.parent.parent, ignore_errors=True)  # the config folder


def load_prepared_builder(prepared):
    """A reader for prepared shards: a `PreparedData`, a builder, or a version folder path."""
    if isinstance(prepared, PreparedData):
        return prepared.builder
    if isinstance(prepared, tfds.core.DatasetBuilder):
        return prepared
    path = Path(prepared)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no prepared data set (no dataset_info.json); prepare it with "
            "kclip.data.tfds_builders.prepare_tfds(records) first.")
    return tfds.builder_from_directory(os.fspath(path))
