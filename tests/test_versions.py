"""Version guards: a patch outside its tested range falls back and warns once."""

import warnings

import pytest

from kclip.utils import versions


def test_patch_supported_inside_and_outside_the_tested_range(monkeypatch):
    monkeypatch.setattr(versions, "_warned", set())
    monkeypatch.setattr(versions, "installed_version", lambda package: versions.Version("3.15.1"))
    assert versions.patch_supported("demo", "keras", "3.15", "3.16")
    with pytest.warns(RuntimeWarning, match=r"demo patch was tested with keras >=3.16,<3.17.*3.15.1"):
        assert not versions.patch_supported("demo", "keras", "3.16", "3.17")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        assert not versions.patch_supported("demo", "keras", "3.16", "3.17")


def test_installed_version_drops_the_local_build_tag():
    assert versions.installed_version("torch").local is None
    assert versions.installed_version("no-such-package-kclip") is None
