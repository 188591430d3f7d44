"""Every benchmark with a --smoke mode runs it to the end: the suite stays runnable, not a notebook.

A smoke run uses toy sizes and measures nothing; it must exit 0, print its JSON lines, and leave
benchmarks/results/ as it was. benchmarks/tables.py --check keeps the Markdown tables equal to results/.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PYTHON = [sys.executable]
# (command, whether its lines carry "smoke": true)
SMOKES = {
    "matmul_roofline": (PYTHON + ["benchmarks/matmul_roofline.py", "--smoke"], True),
    "search_benchmark": (PYTHON + ["benchmarks/search_benchmark.py", "--smoke"], True),
    "serve_load": (PYTHON + ["benchmarks/serve_load.py", "--smoke"], True),
    "backends": (PYTHON + ["benchmarks/backends.py", "--smoke"], True),
    "data_pipeline": (PYTHON + ["benchmarks/data_pipeline.py", "--smoke"], True),
    "contrastive_memory": (PYTHON + ["benchmarks/contrastive_memory.py", "--smoke"], False),
}
# benchmarks/gpu.sh --dry-run, the GPU check's smoke run, has its own tests (tests/test_gpu_check.py).

pytestmark = pytest.mark.torch_only  # the training benchmarks time torch steps


def results_listing():
    return {path.name: path.stat().st_size for path in RESULTS.iterdir()}


@pytest.mark.parametrize("name", sorted(SMOKES))
def test_smoke_run(name, tmp_path):
    command, marks_smoke = SMOKES[name]
    before = results_listing()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RESULTS": str(tmp_path / "results.jsonl"), "OUT": str(tmp_path)}
    env.pop("KCLIP_STRICT_SKIPS", None)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{name}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{name} printed no JSON line: {done.stdout[-2000:]}"
    if marks_smoke:
        assert all(line.get("smoke") is True for line in lines if "smoke" in line) and \
            any(line.get("smoke") is True for line in lines), name
    assert results_listing() == before, f"{name} --smoke wrote into benchmarks/results/"


def test_the_markdown_tables_match_results():
    done = subprocess.run(PYTHON + ["benchmarks/tables.py", "--check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
