"""Finds the captioned images a config names: generates, downloads or reads them.

Downloads land in a folder that is then read like any other (`read_captioned_images`
detects its layout): `data.artifact_id` takes a W&B dataset artifact, as the seed does;
`data.kaggle_handle` takes a Kaggle dataset through kagglehub, e.g. "adityajn105/flickr8k"
(Kaggle Flickr8k layout) or "hsankesara/flickr-image-dataset" (Kaggle Flickr30k layout).
"""

import os
from pathlib import Path

from kclip.data.layouts import read_captioned_images
from kclip.data.synthetic import write_synthetic_dataset

DEFAULT_EMBEDDED_DIR = "data/embedded"
DEFAULT_EMOJI_DIR = "data/emoji"
EMBEDDED_IMAGE_SIZE = 96


def download_wandb_artifact(artifact_id, root=None):
    """Downloads a W&B dataset artifact (as the seed does) and returns its folder."""
    import wandb

    try:
        artifact = wandb.Api().artifact(artifact_id, type="dataset")
        return Path(artifact.download(root=root))
    except Exception as error:  # wandb raises CommError, UsageError, ValueError...
        raise RuntimeError(
            f"Could not download the W&B artifact {artifact_id!r}: {error}. Log in with "
            f"`wandb login`, check the artifact name, or download the data yourself and "
            f"pass --data.dir instead of --data.artifact_id."
        ) from error


def download_kaggle_dataset(handle, output_dir=None):
    """Downloads a Kaggle dataset (`owner/name`, optionally `/versions/N`) and returns its folder.

    kagglehub caches downloads (under ~/.cache/kagglehub, or $KAGGLEHUB_CACHE), so a second
    run does not download again; `output_dir` puts the files there instead. Credentials come
    from `kaggle.json`, KAGGLE_USERNAME/KAGGLE_KEY, or `kagglehub.login()`.
    """
    if not handle or handle.count("/") not in (1, 3):
        raise ValueError(
            f"data.kaggle_handle must look like OWNER/DATASET (e.g. adityajn105/flickr8k) or "
            f"OWNER/DATASET/versions/N, got {handle!r}."
        )
    try:
        import kagglehub
    except ImportError as error:  # kagglehub comes with keras-hub, but may be absent
        raise RuntimeError("data.kaggle_handle needs kagglehub: pip install kagglehub.") from error
    try:
        kwargs = {"output_dir": str(output_dir)} if output_dir else {}
        folder = kagglehub.dataset_download(handle, **kwargs)
    except Exception as error:  # kagglehub raises HTTP, credential and connection errors
        raise RuntimeError(
            f"Could not download the Kaggle dataset {handle!r}: {type(error).__name__}: {error}. "
            f"Check the handle on https://www.kaggle.com/datasets/{handle}, set up credentials "
            f"(~/.kaggle/kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY, see "
            f"https://github.com/Kaggle/kagglehub#authenticate) and the network, or download "
            f"and unzip the data yourself and pass --data.dir instead of --data.kaggle_handle."
        ) from error
    return find_layout_root(Path(folder))


def find_layout_root(folder):
    """`folder`, or the single sub-folder holding a known layout when the download wraps it.

    Archives often nest the data one level down (`flickr8k/Images/...`).
    """
    from kclip.data.layouts import detect_layout

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The download gave {folder}, which is not a folder.")
    for candidate in [folder, *sorted(path for path in folder.iterdir() if path.is_dir())]:
        try:
            detect_layout(candidate)
            return candidate
        except (ValueError, OSError):
            continue
    return folder  # read_captioned_images then explains what it expected


def resolve_data_dir(data_config, seed=0):
    """The folder to read: generated for the embedded set, downloaded for an artifact or handle."""
    if data_config.dataset_name == "embedded":
        data_dir = Path(data_config.dir or DEFAULT_EMBEDDED_DIR)
        return write_synthetic_dataset(
            data_dir, num_images=data_config.num_images, image_size=EMBEDDED_IMAGE_SIZE, seed=seed
        )
    if data_config.dataset_name == "emoji":
        from kclip.data.emoji import write_emoji_dataset

        return write_emoji_dataset(data_config.dir or DEFAULT_EMOJI_DIR, image_size=EMBEDDED_IMAGE_SIZE)
    if data_config.artifact_id:
        return find_layout_root(download_wandb_artifact(data_config.artifact_id, root=data_config.dir))
    kaggle_handle = data_config.kaggle_handle
    if kaggle_handle:
        return download_kaggle_dataset(kaggle_handle, output_dir=data_config.dir)
    if not data_config.dir:
        raise ValueError(
            f"data.dataset_name={data_config.dataset_name!r} needs --data.dir PATH (the folder "
            f"you downloaded), --data.artifact_id ENTITY/PROJECT/NAME:VERSION (W&B) or "
            f"--data.kaggle_handle OWNER/DATASET (Kaggle, e.g. adityajn105/flickr8k)."
        )
    data_dir = Path(os.path.expanduser(data_config.dir))
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data.dir {data_dir} is not a folder.")
    return data_dir


def load_records(data_config, report_dir, seed=0, check_images=True):
    """`DataConfig` -> `CaptionRecords`, with the skip report in `report_dir`.

    `check_images=False` skips decoding every image, for a caller that reads records a
    training run has just checked.
    """
    data_dir = resolve_data_dir(data_config, seed=seed)
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    return read_captioned_images(
        data_dir,
        split_fractions=data_config.split_fractions,
        max_bad_fraction=data_config.max_bad_fraction,
        check_images=check_images,
        report_path=Path(report_dir) / "skipped_items.txt",
        image_column=data_config.image_column,
        caption_column=data_config.caption_column,
    )


def link_split_images(records, split, folder):
    """Puts one split's images in `folder` (hard links, copies across devices).

    Gives tools that take a folder, such as `build_index`, exactly the held-out
    images. Returns {linked path: CaptionedImage}.
    """
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    linked = {}
    for image in records.for_split(split):
        target = folder / image.image_id.replace("/", "__")
        if not target.exists():
            try:
                os.link(image.image_path, target)
            except OSError:
                shutil.copy2(image.image_path, target)
        linked[target] = image
    return linked
