"""Finds the captioned images a config names: generates, downloads or reads them."""

import os
from pathlib import Path

from kclip.data.layouts import read_captioned_images
from kclip.data.synthetic import write_synthetic_dataset

DEFAULT_EMBEDDED_DIR = "data/embedded"
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


def resolve_data_dir(data_config, seed=0):
    """The folder to read: generated for the embedded set, downloaded for an artifact."""
    if data_config.dataset_name == "embedded":
        data_dir = Path(data_config.dir or DEFAULT_EMBEDDED_DIR)
        return write_synthetic_dataset(
            data_dir, num_images=data_config.num_images, image_size=EMBEDDED_IMAGE_SIZE, seed=seed
        )
    if data_config.artifact_id:
        return download_wandb_artifact(data_config.artifact_id, root=data_config.dir)
    if not data_config.dir:
        raise ValueError(
            f"data.dataset_name={data_config.dataset_name!r} needs --data.dir PATH (the folder "
            f"you downloaded) or --data.artifact_id ENTITY/PROJECT/NAME:VERSION."
        )
    data_dir = Path(os.path.expanduser(data_config.dir))
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data.dir {data_dir} is not a folder.")
    return data_dir


def load_records(data_config, report_dir, seed=0):
    """`DataConfig` -> `CaptionRecords`, with the skip report in `report_dir`."""
    data_dir = resolve_data_dir(data_config, seed=seed)
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    return read_captioned_images(
        data_dir,
        split_fractions=data_config.split_fractions,
        max_bad_fraction=data_config.max_bad_fraction,
        report_path=Path(report_dir) / "skipped_items.txt",
    )
