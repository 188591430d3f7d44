"""A quiet start: the native libraries' known-harmless start-up lines stay off the console.

TensorFlow (imported by keras-hub and the data pipeline) writes absl and CUDA-probe lines from
C++ straight to file descriptor 2 when it loads, whatever TF_CPP_MIN_LOG_LEVEL says, so Python's
`warnings` and `logging` can't filter them. `native_stderr_filtered` catches descriptor 2 while
the libraries load and writes back every line that is not on the list below: a real error or
warning still shows.
"""

import contextlib
import os
import re
import sys
import tempfile

HARMLESS_START_UP_LINES = [re.compile(pattern) for pattern in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"oneDNN custom operations are on",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR \(303\)",
)]


def is_harmless(line):
    return any(pattern.search(line) for pattern in HARMLESS_START_UP_LINES)


@contextlib.contextmanager
def native_stderr_filtered():
    """Within the block, lines written to descriptor 2 are held back; on leaving, the ones that are
    not known-harmless start-up noise are written out. If the block raises, every line is."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to catch (an embedded interpreter): nothing to hide
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = lines if failed else [line for line in lines if not is_harmless(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def quiet_native_start_up():
    """Loads TensorFlow, where it is installed and not yet loaded, with its start-up lines filtered.

    keras-hub imports TensorFlow whenever it is installed, so loading it here first costs nothing
    and keeps its lines (printed once per native library it loads) off the console."""
    import importlib.util

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet_harmless_logs()
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    with native_stderr_filtered():
        import tensorflow  # noqa: F401


# Python-side notes that TFDS and AutoGraph log on every run of a TFDS-prepared data set: harmless,
# and about their internals, not the user's data.
HARMLESS_LOG_MESSAGES = [re.compile(pattern) for pattern in (
    r"^Using custom data configuration",
    r"^Variant folder .* has no dataset_info\.json",
    r"^AutoGraph could not transform",
)]


class _HarmlessLogFilter:
    def filter(self, record):
        return not any(pattern.search(str(record.msg)) for pattern in HARMLESS_LOG_MESSAGES)


def quiet_harmless_logs():
    """Drops the known-harmless absl (TFDS) and TensorFlow (AutoGraph) log notes; other records still show."""
    import logging

    for name in ("absl", "tensorflow"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _HarmlessLogFilter) for existing in logger.filters):
            logger.addFilter(_HarmlessLogFilter())
