"""A quiet start: known-harmless native start-up lines and log notes are dropped, anything else shows."""
import logging
import os
import warnings

import pytest

from kclip.utils.quiet import native_stderr_filtered, quiet_harmless_logs

pytestmark = pytest.mark.backend_neutral

ABSL = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
CUDA = b"I0000 00:00:1796685194.195016    7519 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n"


def test_native_start_up_noise_is_dropped_and_other_lines_are_kept(capfd):
    with native_stderr_filtered():
        os.write(2, ABSL + CUDA)
        os.write(2, b"E0000 something really went wrong\n")
        os.write(2, CUDA)
    err = capfd.readouterr().err
    assert err == "E0000 something really went wrong\n"


def test_a_real_warning_still_shows(capfd):
    with pytest.warns(RuntimeWarning, match="a real problem"):
        with native_stderr_filtered():
            os.write(2, ABSL)
            warnings.warn("a real problem", RuntimeWarning)
    assert "absl::InitializeLog" not in capfd.readouterr().err


def test_when_the_block_fails_every_line_is_written(capfd):
    with pytest.raises(ImportError, match="no such library"):
        with native_stderr_filtered():
            os.write(2, CUDA)
            raise ImportError("no such library")
    assert capfd.readouterr().err == CUDA.decode()


def test_known_tfds_notes_are_dropped_and_other_records_kept(caplog):
    quiet_harmless_logs()
    quiet_harmless_logs()  # idempotent: one filter, not two
    assert sum(type(f).__name__ == "_HarmlessLogFilter" for f in logging.getLogger("absl").filters) == 1
    with caplog.at_level(logging.INFO):
        logging.getLogger("absl").warning("Using custom data configuration: %s", "kaggle_flickr8k_65b3")
        logging.getLogger("absl").warning("Variant folder %s has no dataset_info.json", "/tmp/x")
        logging.getLogger("absl").warning("Disk is full")
    assert [record.getMessage() for record in caplog.records] == ["Disk is full"]
