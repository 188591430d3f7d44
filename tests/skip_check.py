"""Skips that say why, and fail CI unless allowed: the pytest hooks tests/conftest.py takes in.

Every skip is collected with its reason. With KCLIP_STRICT_SKIPS=1 (.ci/run sets it), a skip that
tests/skip_allowlist.txt does not list for this KERAS_BACKEND turns the run's exit status into a
failure, and the summary names it; `-rs` (.ci/run passes it) lists every skip's reason.
"""
import fnmatch
import os
from pathlib import Path

ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")
_MARKERS: dict[str, set[str]] = {}  # test id -> its markers, from collection
_SKIPS: list[tuple[str, str]] = []  # (test id, reason) of every skipped test
_UNLISTED: list[tuple[str, str]] = []


def read_skip_allowlist(path=None):
    """[(test glob or @marker, backends, why)] from the allow-list file; a malformed line is a ValueError."""
    path = path or ALLOWLIST
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [field.strip() for field in line.split("|", 2)]
        if len(fields) != 3 or not all(fields):
            raise ValueError(f"{path}:{number}: expected 'TEST | BACKENDS | WHY', got {line!r}")
        test, backends, why = fields
        entries.append((test, {backend.strip() for backend in backends.split(",")}, why))
    return entries


def skip_is_allowed(test_id, markers, backend, entries):
    for test, backends, _ in entries:
        if "*" not in backends and backend not in backends:
            continue
        if test.startswith("@") and test[1:] in markers:
            return True
        if not test.startswith("@") and (test_id == test or fnmatch.fnmatchcase(test_id, test)):
            return True
    return False


def record_markers(items):
    _MARKERS.update({item.nodeid: {marker.name for marker in item.iter_markers()} for item in items})


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPS.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("KCLIP_STRICT_SKIPS") != "1" or not _SKIPS:
        return
    backend = os.environ.get("KERAS_BACKEND", "torch")
    entries = read_skip_allowlist()
    _UNLISTED[:] = [(test_id, reason) for test_id, reason in _SKIPS
                    if not skip_is_allowed(test_id, _MARKERS.get(test_id, set()), backend, entries)]
    if _UNLISTED and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if not _UNLISTED:
        return
    terminalreporter.section("skips not on tests/skip_allowlist.txt (KCLIP_STRICT_SKIPS=1 fails the run)", red=True)
    for test_id, reason in _UNLISTED:
        terminalreporter.line(f"{test_id}: {reason}")
    terminalreporter.line("Make the test run here, or list it in tests/skip_allowlist.txt with why it may skip.")
