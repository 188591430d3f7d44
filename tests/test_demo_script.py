"""scripts/demo.py, the README's main command, as a user runs it: one short run, its outputs checked.

The run is configs/demo.yaml shrunk to one epoch of 60 images. It also checks the quiet start:
the first line on the console (stdout and stderr together) is kclip's own, not TensorFlow's,
absl's or a Keras warning.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recall_reference import recall

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    overrides = ["--trainer.max_epochs", "1", "--data.num_images", "60", "--data.train_batch_size", "16",
                 "--data.val_batch_size", "16", "--model.image_size", "32", "--output_dir", str(root / "run"),
                 "--data.dir", str(root / "data")]
    # A user's console: no pytest filters, no TF_CPP_MIN_LOG_LEVEL set beforehand.
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), *overrides], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    return root / "run", overrides, done.stdout


def test_the_first_line_is_kclips_own(demo_run):
    _, _, output = demo_run
    first = next(line for line in output.splitlines() if line.strip())
    assert first.startswith("Precision: "), output[:2000]
    for noise in ("absl::InitializeLog", "cudart_stub", "oneDNN custom operations", "`shuffle=True` was passed"):
        assert noise not in output


def test_the_index_holds_the_test_split_and_the_printed_recall_is_the_reference(demo_run):
    import kclip
    from kclip.config import parse_config
    from kclip.data.sources import load_records
    from kclip.index.index import Index

    run, overrides, output = demo_run
    config = parse_config(["--config", str(ROOT / "configs" / "demo.yaml"), *overrides])
    test_images = load_records(config.data, run, seed=config.trainer.seed).for_split("test")
    index = Index.load(run / "index")
    assert sorted(Path(path).name for path in index.paths) == sorted(image.image_path.name for image in test_images)

    model = kclip.load_model(run / "model.keras")
    image_embeddings = model.encode_image([image.image_path for image in test_images])
    captions = [caption for image in test_images for caption in image.captions]
    owners = [number for number, image in enumerate(test_images) for _ in image.captions]
    expected = recall(image_embeddings, model.encode_text(captions), owners)
    printed = float(re.search(r"Test text->image R@5: ([0-9.]+)", output).group(1))
    assert printed == pytest.approx(expected["t2i_r@5"], abs=5e-4)
    assert json.loads((run / "test_metrics.json").read_text())["t2i_r@5"] == pytest.approx(expected["t2i_r@5"])
    assert (run / "search_grid.png").is_file()


def test_each_printed_search_is_the_best_five_by_cosine(demo_run):
    import kclip

    run, _, output = demo_run
    model = kclip.load_model(run / "model.keras")
    held_out = sorted((run / "held_out_images").iterdir())
    embeddings = model.encode_image(held_out)
    blocks = re.findall(r"^'(.+)'  \(.*\)\n((?:  -?[0-9.]+  \S+.*\n)+)", output, flags=re.MULTILINE)
    assert len(blocks) == min(4, len(held_out)) + 2  # up to four held-out captions, the config's two demo_queries
    for query, lines in blocks:
        scores = dict(zip((path.name for path in held_out), embeddings @ model.encode_text([query])[0]))
        shown = [(line.split()[1], float(line.split()[0])) for line in lines.splitlines()]
        assert len(shown) == min(5, len(held_out))
        for name, score in shown:  # the index keeps float16 embeddings: 3 decimals agree to about 1e-3
            assert score == pytest.approx(scores[name], abs=2e-3), (query, name)
        rest = [score for name, score in scores.items() if name not in dict(shown)]
        assert not rest or min(score for _, score in shown) >= max(rest) - 2e-3, query
        assert np.all(np.diff([score for _, score in shown]) <= 0)
