"""Makes TensorFlow unimportable in a Python process that has this folder on PYTHONPATH.

tests/test_no_tensorflow.py runs kclip in such a process: the environment of a GPU machine
whose torch came with it and which has no TensorFlow. Every `tensorflow*` module (tensorflow,
tensorflow_text, tensorflow_datasets, ...) and `tf_keras` look absent, as where they are not
installed: `importlib.util.find_spec` returns None and `import` raises ModuleNotFoundError.
"""

import importlib.abc
import sys

BLOCKED = ("tensorflow", "tf_keras")


def _blocked(name):
    return name.partition(".")[0].startswith(BLOCKED)


class _Hiding(importlib.abc.MetaPathFinder):
    """One of the interpreter's finders, blind to the blocked packages (returning None from a
    finder placed first would only pass the search on to the real ones)."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            return None
        find_spec = getattr(self.finder, "find_spec", None)
        return find_spec(name, path, target) if find_spec else None

    def find_distributions(self, *args, **kwargs):
        # importlib.metadata asks the finders too: the blocked packages have no metadata either.
        find = getattr(self.finder, "find_distributions", None)
        if find is None:
            return iter(())
        return (dist for dist in find(*args, **kwargs)
                if not _blocked((dist.metadata["Name"] or "").lower().replace("-", "_")))

    def invalidate_caches(self):
        if hasattr(self.finder, "invalidate_caches"):
            self.finder.invalidate_caches()


for _name in [name for name in sys.modules if _blocked(name)]:
    del sys.modules[_name]
sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
