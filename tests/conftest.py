import os

import pytest

# Every skip is reported with its reason, and under KCLIP_STRICT_SKIPS=1 one not on
# tests/skip_allowlist.txt fails the run (tests/skip_check.py).
from skip_check import pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary  # noqa: F401
from skip_check import record_markers

# The backend must be chosen before anything imports keras; torch is what kclip ships.
# KCLIP_TEST_BACKEND=jax|tensorflow runs the suite on another backend (scripts/test.sh).
if os.environ.get("KCLIP_TEST_BACKEND"):
    os.environ["KERAS_BACKEND"] = os.environ["KCLIP_TEST_BACKEND"]
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_collection_modifyitems(config, items):
    """`torch_only` tests (torch kernels, torch levers) skip on the other backends."""
    record_markers(items)
    backend = os.environ["KERAS_BACKEND"]
    if backend == "torch":
        return
    skip = pytest.mark.skip(reason=f"torch-only test; this run uses KERAS_BACKEND={backend}")
    for item in items:
        if "torch_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _kclip_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Folder mirrors that kclip writes (kclip.models.hf_folders) stay out of the home folder."""
    monkeypatch.setenv("KCLIP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kclip_cache"))


@pytest.fixture(autouse=True)
def _float32_policy_for_each_test():
    """Each test starts from Keras' default policy, whatever an earlier test set globally."""
    import keras

    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
