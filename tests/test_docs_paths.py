"""Every repository path a Markdown file cites exists: README.md, docs/, benchmarks/ and the rest.

A cited path is a Markdown link target, or any word that starts with one of the repository's top
folders (kclip/, tests/, scripts/, benchmarks/, configs/, docs/, .ci/). A `*` in it is a glob that
must match something; a `:LINE` or `#anchor` after it is dropped.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("kclip/", "tests/", "scripts/", "benchmarks/", "configs/", "docs/", ".ci/")
SKIP_DIRS = {".venv", ".git", "runs", "data", "node_modules", ".pytest_cache"}
WORD = re.compile(r"(?<![\w./~-])((?:" + "|".join(re.escape(top) for top in TOP) + r")[\w./*{}-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files():
    return sorted(path for path in ROOT.rglob("*.md")
                  if not SKIP_DIRS & set(path.relative_to(ROOT).parts) and "egg-info" not in str(path))


def cited_paths(path):
    text = path.read_text(encoding="utf-8")
    cited = set()
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the same page
        cited.add((path.parent / target.split("#")[0]).resolve())
    for word in WORD.findall(text):
        word = re.sub(r"[:#].*$", "", word).rstrip(".,;")
        if "{" in word:
            continue  # a template such as benchmarks/results/<name>.jsonl written with braces
        cited.add(ROOT / word)
    return cited


def exists(path):
    if "*" in str(path):
        relative = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        return any(ROOT.glob(str(relative)))
    return path.exists()


@pytest.mark.backend_neutral
@pytest.mark.parametrize("markdown", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_cited_path_exists(markdown):
    missing = sorted(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
                     for path in cited_paths(markdown) if not exists(path))
    assert not missing, f"{markdown.relative_to(ROOT)} cites paths that do not exist: {missing}"


def test_the_checker_finds_citations(tmp_path):
    page = ROOT / "README.md"
    cited = {str(path.relative_to(ROOT)) for path in cited_paths(page)}
    assert {"scripts/demo.sh", "tests/skip_allowlist.txt", "docs/usage.md"} <= cited
