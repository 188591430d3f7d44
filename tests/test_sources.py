"""Getting the data: kagglehub and W&B downloads, with the download itself replaced."""

from pathlib import Path

import pytest

from data_fixtures import make_kaggle_flickr8k
from kclip.config import DataConfig
from kclip.data import sources


def _config(**overrides):
    values = dict(dataset_name="flickr8k", dir=None, artifact_id=None, kaggle_handle=None,
                  split_fractions=[0.8, 0.1, 0.1], max_bad_fraction=0.9, num_images=10)
    return DataConfig(**{**values, **overrides})


def test_kaggle_handle_downloads_through_kagglehub_and_finds_the_nested_layout(tmp_path, monkeypatch):
    import kagglehub

    calls = []

    def fake_download(handle, **kwargs):
        calls.append((handle, kwargs))
        root = tmp_path / "kagglehub" / handle / "versions" / "1"
        make_kaggle_flickr8k(root)  # the archive wraps the layout one folder down: kaggle8k/
        return str(root)

    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    config = _config(kaggle_handle="adityajn105/flickr8k")
    folder = sources.resolve_data_dir(config)
    assert calls == [("adityajn105/flickr8k", {})]
    assert (folder / "captions.txt").is_file() and folder.name == "kaggle8k"
    records = sources.load_records(config, tmp_path / "run")
    assert records.layout == "kaggle_flickr8k" and len(records.images) == 4
    assert (tmp_path / "run" / "skipped_items.txt").is_file()

    sources.resolve_data_dir(_config(kaggle_handle="adityajn105/flickr8k", dir=str(tmp_path / "here")))
    assert calls[-1] == ("adityajn105/flickr8k", {"output_dir": str(tmp_path / "here")})


def test_kaggle_failure_explains_what_to_do(monkeypatch):
    import kagglehub

    def failing(handle, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(kagglehub, "dataset_download", failing)
    with pytest.raises(RuntimeError, match="adityajn105/flickr8k.*no route to host.*KAGGLE_USERNAME.*--data.dir"):
        sources.resolve_data_dir(_config(kaggle_handle="adityajn105/flickr8k"))
    with pytest.raises(ValueError, match="OWNER/DATASET"):
        sources.resolve_data_dir(_config(kaggle_handle="flickr8k"))


def test_wandb_artifact_downloads_into_data_dir(tmp_path, monkeypatch):
    import wandb

    class FakeArtifact:
        def download(self, root=None):
            make_kaggle_flickr8k(Path(root))
            return root

    class FakeApi:
        def artifact(self, name, type=None):
            assert (name, type) == ("wandb/clip.lightning/flickr-8k:latest", "dataset")
            return FakeArtifact()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    folder = sources.resolve_data_dir(_config(artifact_id="wandb/clip.lightning/flickr-8k:latest",
                                              dir=str(tmp_path / "artifact")))
    assert folder == tmp_path / "artifact" / "kaggle8k"


def test_wandb_failure_explains_what_to_do(monkeypatch):
    import wandb

    class FailingApi:
        def artifact(self, name, type=None):
            raise ValueError("not logged in")

    monkeypatch.setattr(wandb, "Api", FailingApi)
    with pytest.raises(RuntimeError, match="wandb login.*--data.dir"):
        sources.resolve_data_dir(_config(artifact_id="me/proj/data:v0"))


def test_no_folder_and_no_download_names_every_way_to_give_data():
    with pytest.raises(ValueError, match="--data.dir.*--data.artifact_id.*--data.kaggle_handle"):
        sources.resolve_data_dir(_config())
