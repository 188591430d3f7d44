"""The GPU check (benchmarks/gpu.sh) stays runnable: its CPU dry run (tiny sizes, no CUDA,
TensorFlow made unimportable) runs every step and writes the lines the real run writes."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.torch_only  # the check measures the torch backend


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("gpu_check") / "gpu-check.jsonl"
    env = {**os.environ, "RESULTS": str(results), "PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    if not Path(env["PYTHON"]).exists():
        env["PYTHON"] = "python3"
    run = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1200)
    lines = [json.loads(text) for text in results.read_text().splitlines()] if results.exists() else []
    return run, lines


def by_name(lines, name):
    return [line for line in lines if line["benchmark"] == name]


def test_every_step_ran_and_none_failed(dry_run):
    run, lines = dry_run
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert by_name(lines, "gpu_check_step") == [], run.stdout[-4000:]
    assert len(by_name(lines, "gpu_check_done")) == 1


def test_it_ran_as_on_the_gpu_machine_without_tensorflow(dry_run):
    _, lines = dry_run
    (environment,) = by_name(lines, "gpu_check_environment")
    assert environment["tensorflow_installed"] is False and environment["cuda_available"] is False


def test_fit_lines_cover_levers_on_and_off_and_the_reference(dry_run):
    # The dry run measures fp16 only (with loss scaling); the GPU run adds bf16 through the same lines.
    _, lines = dry_run
    kclip, reference = by_name(lines, "kclip_fit_step"), by_name(lines, "torch_reference_step")
    assert sorted((line["precision"], line["levers"]) for line in kclip) == [
        ("mixed_float16", "off"), ("mixed_float16", "on")]
    assert [line["precision"] for line in reference] == ["fp16"]
    off = next(line for line in kclip if line["levers"] == "off")
    assert {off[key] for key in ("fused_batch_norm", "release_intermediates", "fused_adam")} == {"off"}
    for line in kclip + reference:
        assert line["batch_size"] == 8 and line["steps"] == 2
        assert line["pairs_per_s"] == pytest.approx(8 / line["median_step_s"], rel=1e-2)


def test_end_to_end_trains_indexes_every_image_and_searches(dry_run):
    _, lines = dry_run
    (fit,) = by_name(lines, "gpu_check_fit_end_to_end")
    (index,) = by_name(lines, "gpu_check_index")
    (search,) = by_name(lines, "gpu_check_search")
    assert len(fit["loss"]) == len(fit["val_loss"]) == 1  # one epoch, validated
    assert index["indexed"] == 40  # every generated image
    assert search["results"] == 5
    (pipeline, *_) = by_name(lines, "input_pipeline")
    assert pipeline["source"] == "pydataset" and pipeline["images"] == 16


def test_data_parallel_on_one_device_trains_as_no_distribution(dry_run):
    _, lines = dry_run
    (line,) = by_name(lines, "gpu_check_data_parallel")
    # "not available" only while this kclip has no torch data parallel; it must never differ.
    assert line["status"] in ("same", "not available"), line
    if line["status"] == "same":
        assert len(line["loss_none"]) == len(line["loss_data_parallel"]) == 1
