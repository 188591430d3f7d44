"""tests/skip_check.py: an unlisted skip fails a strict run and is named; listed ones pass."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skip_check import read_skip_allowlist, skip_is_allowed

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SUITE = '''
import pytest

def test_runs():
    assert 1 + 1 == 2

def test_listed_skip():
    pytest.skip("listed: the allow-list names this test")

@pytest.mark.slow_thing
def test_listed_by_marker():
    pytest.skip("listed through its marker")

def test_unlisted_skip():
    pytest.skip("nobody listed this one")
'''


def run_suite(tmp_path, strict, allowlist):
    (tmp_path / "allow.txt").write_text(allowlist)
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "import skip_check\n"
        f"skip_check.ALLOWLIST = {str(tmp_path / 'allow.txt')!r}\n"
        "from skip_check import pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary\n"
        "def pytest_collection_modifyitems(items):\n"
        "    skip_check.record_markers(items)\n")
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    env.pop("KCLIP_STRICT_SKIPS", None)
    if strict:
        env["KCLIP_STRICT_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "-W",
                           "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


ALLOWED = ("test_suite.py::test_listed_skip | torch | the test says so\n"
           "@slow_thing | * | a marker's tests may skip\n")


def test_an_unlisted_skip_fails_a_strict_run_and_is_named(tmp_path):
    done = run_suite(tmp_path, strict=True, allowlist=ALLOWED)
    assert done.returncode == 1, done.stdout
    assert "1 passed, 3 skipped" in done.stdout
    section = done.stdout.split("skips not on tests/skip_allowlist.txt", 1)[1]
    assert "test_suite.py::test_unlisted_skip: nobody listed this one" in section
    assert "test_listed_skip" not in section and "test_listed_by_marker" not in section
    assert "SKIPPED [1] test_suite.py:8: listed: the allow-list names this test" in done.stdout  # -rs


def test_listed_skips_pass_and_a_lax_run_only_reports(tmp_path):
    listed = ALLOWED + "test_suite.py::test_unlisted_* | torch | listed after all\n"
    assert run_suite(tmp_path, strict=True, allowlist=listed).returncode == 0
    lax = run_suite(tmp_path, strict=False, allowlist=ALLOWED)
    assert lax.returncode == 0 and "SKIPPED [1] test_suite.py:15: nobody listed this one" in lax.stdout


def test_an_entry_holds_only_for_its_backends():
    entries = [("tests/test_a.py::test_b", {"jax"}, "why"), ("@torch_only", {"jax", "tensorflow"}, "why")]
    assert skip_is_allowed("tests/test_a.py::test_b", set(), "jax", entries)
    assert not skip_is_allowed("tests/test_a.py::test_b", set(), "torch", entries)
    assert skip_is_allowed("tests/test_c.py::test_d", {"torch_only"}, "tensorflow", entries)
    assert not skip_is_allowed("tests/test_c.py::test_d", {"torch_only"}, "torch", entries)


def test_the_repository_allowlist_names_real_tests_with_reasons(tmp_path):
    entries = read_skip_allowlist()
    assert entries, "tests/skip_allowlist.txt is empty"
    markers = {"torch_only", "backend_neutral", "cross_backend"}
    for test, backends, why in entries:
        assert backends <= {"torch", "jax", "tensorflow", "*"}, test
        assert len(why.split()) >= 4, f"{test}: say why it may skip"
        if test.startswith("@"):
            assert test[1:] in markers, test
            continue
        path, _, name = test.partition("::")
        source = (ROOT / path).read_text()
        assert f"def {name.split('[')[0]}(" in source, test
    (tmp_path / "bad.txt").write_text("tests/test_x.py::test_y | torch\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 'TEST | BACKENDS | WHY'"):
        read_skip_allowlist(tmp_path / "bad.txt")


def test_a_parametrized_id_matches_its_entry_literally():
    # "[timm]" is a character class to fnmatch: the exact id must still match its own entry.
    entries = [("tests/t.py::case[timm]", ("torch",), "why")]
    assert skip_is_allowed("tests/t.py::case[timm]", set(), "torch", entries)
    assert not skip_is_allowed("tests/t.py::case[other]", set(), "torch", entries)
