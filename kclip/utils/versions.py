"""Version guards for patches of private Keras and torch internals.

A patch of a library's private code is only as good as the versions it was read against. Each
patch names the range it was tested on; outside it, kclip uses the library's own code path and
says so once per process, because a silently wrong patch costs more than a slower step.
"""

import importlib.metadata
import warnings

from packaging.version import InvalidVersion, Version

_warned = set()


def installed_version(package):
    """The installed version of `package` without local build tags (`2.13.0+cpu` -> 2.13.0), or None."""
    try:
        return Version(Version(importlib.metadata.version(package)).base_version)
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


def warn_once(key, message):
    """Emits `message` as a RuntimeWarning the first time `key` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def patch_supported(name, package, minimum, below):
    """True when `package` is in [minimum, below), the range the patch `name` was tested on.

    Outside that range it warns once, naming the patch, the range and the version found, and
    returns False so that the caller falls back to the library's own path.
    """
    version = installed_version(package)
    if version is not None and Version(minimum) <= version < Version(below):
        return True
    found = "not installed" if version is None else str(version)
    warn_once(
        (name, package),
        f"kclip: the {name} patch was tested with {package} >={minimum},<{below}, and {package} "
        f"{found} is installed, so kclip uses {package}'s own code path instead (correct, but slower). "
        f"Pin {package} inside that range to get the patch back.",
    )
    return False


def torch_patch_applies(name, active, tested_keras, tested_torch):
    """True when a torch-only patch of Keras should be switched on: asked for, on the torch
    backend, and with Keras and torch inside the ranges it was tested on (else one warning)."""
    import keras

    return bool(active) and keras.config.backend() == "torch" and (
        patch_supported(name, "keras", *tested_keras) and patch_supported(name, "torch", *tested_torch)
    )
