import os

# The backend must be chosen before anything imports keras; torch is what kclip ships.
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _kclip_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Folder mirrors that kclip writes (kclip.models.hf_folders) stay out of the home folder."""
    monkeypatch.setenv("KCLIP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kclip_cache"))
