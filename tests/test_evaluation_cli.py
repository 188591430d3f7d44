"""scripts/evaluate.py: recall table, JSON and grid for a saved model; evaluation helpers."""

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """An untrained tiny model saved as training saves it, with the YAML config it came from."""
    from kclip.data.sources import load_records
    from kclip.training.export import export_model
    from kclip.training.run import build_model_for_data

    root = tmp_path_factory.mktemp("cli")
    config = tiny_config(root / "run", root / "data")
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(asdict(config)))
    records = load_records(config.data, root / "run", seed=config.trainer.seed)
    model = build_model_for_data(config, records.for_split("train"))
    return export_model(model, root / "run" / "model.keras"), config_path, records


def test_evaluate_script_prints_table_writes_json_and_grid(saved_model, tmp_path, capsys):
    from kclip.evaluation.grid import GridLayout

    model_path, config_path, records = saved_model
    grid_path = tmp_path / "grid.png"
    metrics = _load_script().main([
        "--model", str(model_path), "--config", str(config_path), "--split", "val",
        "--json", str(tmp_path / "val.json"), "--grid", str(grid_path), "--grid_rows", "3", "--grid_columns", "4",
    ])
    output = capsys.readouterr().out
    assert "text->image" in output and "image->text" in output and "rsum" in output

    written = json.loads((tmp_path / "val.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["split"] == "validation"
    assert written["num_images"] == len(records.for_split("validation"))
    for key in ("t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_r@1", "i2t_r@5", "i2t_r@10", "rsum",
                "t2i_mean_rank", "t2i_median_rank", "i2t_mean_rank", "i2t_median_rank"):
        assert key in written

    layout = GridLayout(3, 4, 96, 192)
    grid = np.asarray(Image.open(grid_path).convert("RGB"))
    assert grid.shape == (layout.height, layout.width, 3)
    tiles = [grid[top:bottom, left:right] for row in range(3) for column in range(4)
             for left, top, right, bottom in [layout.tile_box(row, column)]]
    assert len(tiles) == 12 and all(tile.std() > 0 for tile in tiles)


class KnownEmbeddings:
    """Stands in for a loaded model: image i of the split is the unit vector e_i; caption 0 of image i
    is e_i too, every other caption of image i leans towards image i+1 (score 0.8 against 0.6).

    So, by hand: text->image R@1 = images / captions, R@5 = 1; image->text R@1 = 1.
    """

    def __init__(self, images):
        self.row_of = {str(image.image_path): number for number, image in enumerate(images)}
        size = len(images)
        basis = np.eye(size, dtype="float32")
        self.texts = np.stack([basis[number] if k == 0 else 0.6 * basis[number] + 0.8 * basis[(number + 1) % size]
                               for number, image in enumerate(images) for k in range(len(image.captions))])
        self.basis, self.position = basis, 0

    def encode_image(self, paths, batch_size=64):
        return self.basis[[self.row_of[str(path)] for path in paths]]

    def encode_text(self, captions, batch_size=256):
        rows = self.texts[self.position:self.position + len(captions)]
        self.position += len(captions)
        return rows


def test_evaluate_script_numbers_match_retrieval_metrics_on_known_embeddings(saved_model, tmp_path, monkeypatch):
    import kclip
    from recall_reference import recall

    model_path, config_path, records = saved_model
    images = records.for_split("validation")
    fake = KnownEmbeddings(images)
    monkeypatch.setattr(kclip, "load_model", lambda path: fake)
    _load_script().main(["--model", str(model_path), "--config", str(config_path), "--split", "val",
                         "--json", str(tmp_path / "known.json")])
    written = json.loads((tmp_path / "known.json").read_text())

    owners = np.asarray([number for number, image in enumerate(images) for _ in image.captions])
    # The plain reference (tests/recall_reference.py), not kclip's own retrieval_metrics.
    expected = recall(fake.basis, fake.texts, owners)
    assert set(expected) == {"t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_r@1", "i2t_r@5", "i2t_r@10", "rsum"}
    for key, value in expected.items():
        assert written[key] == pytest.approx(value, abs=1e-12), key
    assert written["t2i_r@1"] == pytest.approx(len(images) / len(owners))
    assert written["t2i_r@5"] == 1.0 and written["i2t_r@1"] == 1.0
    assert written["t2i_median_rank"] == 2.0  # 4 of each image's 5 captions rank their image second
    assert written["num_images"] == len(images) and written["num_captions"] == len(owners)


def test_evaluate_script_default_json_next_to_model(saved_model, capsys):
    model_path, config_path, _ = saved_model
    _load_script().main(["--model", str(model_path), "--config", str(config_path)])
    assert json.loads((model_path.parent / "test_metrics.json").read_text())["split"] == "test"


def test_evaluate_script_rejects_missing_model(saved_model, tmp_path):
    _, config_path, _ = saved_model
    with pytest.raises(SystemExit, match="no model file"):
        _load_script().main(["--model", str(tmp_path / "nope.keras"), "--config", str(config_path)])


def test_query_matches_and_grid_rows_mark_the_true_image():
    from kclip.data.layouts import CaptionedImage
    from kclip.evaluation.evaluate import choose_queries, grid_rows, query_matches

    images = [CaptionedImage(image_path=Path(f"{i}.png"), image_id=str(i), captions=[f"c{i}a", f"c{i}b"], split="test")
              for i in range(4)]
    image_embeddings = np.eye(4, dtype="float32")
    # Caption 2*i points at image i, except caption 6 (image 3's first) which points at image 0.
    text_embeddings = np.repeat(np.eye(4, dtype="float32"), 2, axis=0)
    text_embeddings[6] = [1, 0, 0, 0]
    text_to_image = np.repeat(np.arange(4), 2)
    embeddings = (image_embeddings, text_embeddings, text_to_image)

    assert choose_queries(images, 2) == [0, 6]
    assert choose_queries(images, 10) == [0, 2, 4, 6]
    matches = query_matches(embeddings, [0, 6], k=2)
    assert matches[0][0] == 0 and matches[0][1][0] == 0 and matches[0][3] == 1
    assert matches[1][0] == 3 and matches[1][1][0] == 0 and matches[1][3] > 1
    rows = grid_rows(images, embeddings, num_queries=2, k=2)
    assert rows[0][0] == "c0a" and rows[0][1][0][2] is True
    assert rows[1][0] == "c3a" and not any(is_true for _, _, is_true in rows[1][1])
