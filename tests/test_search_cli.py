"""scripts/index.py and scripts/search.py, run through their main() on solid-colour photos."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_encoder import COLOURS, FakeEncoder, solid_image
from kclip.evaluation.grid import GridLayout

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"kclip_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


index_script = load_script("index")
search_script = load_script("search")

PHOTO_COLOURS = ["red", "green", "blue", "yellow", "magenta"]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    for number, colour in enumerate(PHOTO_COLOURS):
        path = folder / ("nested" if number % 2 else "") / f"{colour}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(solid_image(colour, size=(40, 60))).save(path)
    return folder


@pytest.fixture
def indexed(photos, tmp_path, capsys):
    out = tmp_path / "index"
    code = index_script.main([str(photos), "--model", "fake.keras", "--index", str(out), "--no-progress"],
                             load_model=lambda path: FakeEncoder())
    assert code == 0
    output = capsys.readouterr().out
    assert "5 image files: 5 embedded" in output and "search: exact" in output
    return out


def search(*argv, model=None):
    return search_script.main([*argv], load_model=lambda path: model or FakeEncoder())


def result_lines(output):
    return [line.split() for line in output.splitlines() if line.strip()[:1].isdigit()]


def test_text_query_prints_ranked_paths_and_scores(indexed, capsys):
    assert search("a red car", "--model", "m.keras", "--index", str(indexed), "--top-k", "3") == 0
    lines = result_lines(capsys.readouterr().out)
    assert [line[0] for line in lines] == ["1", "2", "3"]
    assert Path(lines[0][2]).name == "red.png" and float(lines[0][1]) == pytest.approx(1.0, abs=1e-3)
    scores = [float(line[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_image_query_searches_by_example(indexed, tmp_path, capsys):
    example = tmp_path / "query.png"
    Image.fromarray(solid_image("blue")).save(example)
    assert search(str(example), "--model", "m.keras", "--index", str(indexed), "--top-k", "2") == 0
    lines = result_lines(capsys.readouterr().out)
    assert Path(lines[0][2]).name == "blue.png"


def test_rerun_of_index_script_embeds_nothing_new(photos, indexed, capsys):
    encoder = FakeEncoder()
    assert index_script.main([str(photos), "--model", "m", "--index", str(indexed), "--no-progress"],
                             load_model=lambda path: encoder) == 0
    assert encoder.images_encoded == 0
    assert "0 embedded, 5 unchanged" in capsys.readouterr().out


def test_grid_png_has_one_tile_per_result_in_rank_order(indexed, tmp_path, capsys):
    grid = tmp_path / "out" / "grid.png"
    assert search("green", "--model", "m", "--index", str(indexed), "--top-k", "4", "--grid", str(grid),
                  "--tile-size", "64") == 0
    ranked = [Path(line[2]).stem for line in result_lines(capsys.readouterr().out)]
    assert ranked[0] == "green" and len(ranked) == 4

    layout = GridLayout(num_rows=1, num_columns=4, tile_size=64, caption_width=128)
    picture = np.asarray(Image.open(grid).convert("RGB"))
    assert picture.shape == (layout.height, layout.width, 3)
    centres = []
    for column in range(5):  # a fifth tile position would lie outside the picture
        left, top, right, bottom = layout.tile_box(0, column)
        if right > layout.width:
            break
        centres.append(tuple(int(v) for v in picture[(top + bottom) // 2, (left + right) // 2]))
    assert centres == [COLOURS[name] for name in ranked]


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query_exits_2_without_traceback(indexed, capsys, query):
    assert search(query, "--model", "m", "--index", str(indexed)) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: the query is empty") and "Traceback" not in error


def test_fingerprint_mismatch_exits_2_naming_both_models(indexed, capsys):
    other = FakeEncoder(name="another-model")
    assert search("red", "--model", "m", "--index", str(indexed), model=other) == 2
    error = capsys.readouterr().err
    assert FakeEncoder().fingerprint() in error and other.fingerprint() in error


def test_missing_index_exits_2(tmp_path, capsys):
    assert search("red", "--model", "m", "--index", str(tmp_path / "nowhere")) == 2
    assert "holds no kclip index" in capsys.readouterr().err


def test_missing_image_query_exits_2(indexed, capsys):
    assert search("holiday/beach.jpg", "--model", "m", "--index", str(indexed)) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_real_tiny_model_end_to_end(photos, tmp_path, capsys):
    """A saved .keras model through both scripts: searching by a photo finds that photo first."""
    import keras
    from helpers import tiny_model
    from kclip.training.export import export_model

    keras.utils.set_random_seed(0)  # a fixed random model, so no two colours tie by chance
    model_path = export_model(tiny_model(), tmp_path / "tiny.keras")
    out = tmp_path / "real-index"
    assert index_script.main([str(photos), "--model", str(model_path), "--index", str(out), "--no-progress",
                              "--backend", "ann"]) == 0
    assert "search: ann" in capsys.readouterr().out
    query = photos / "nested" / "green.png"
    assert search_script.main([str(query), "--model", str(model_path), "--index", str(out), "--top-k", "5"]) == 0
    lines = result_lines(capsys.readouterr().out)
    assert len(lines) == 5 and Path(lines[0][2]) == query.resolve()
    assert float(lines[0][1]) == pytest.approx(1.0, abs=1e-2)
    assert search_script.main(["a red circle", "--model", str(model_path), "--index", str(out)]) == 0
    assert len(result_lines(capsys.readouterr().out)) == 5


def test_ann_backend_builds_and_searches_a_faiss_index(tmp_path, capsys):
    """Enough photos for the ANN path (MIN_ANN_ROWS) that faiss really builds, saves and answers."""
    from kclip.index.ann import MIN_ANN_ROWS
    from kclip.index.index import Index

    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (MIN_ANN_ROWS + 6, 3))
    colours[7] = (255, 0, 0)  # the one pure red photo
    for number, colour in enumerate(colours):
        if number != 7 and colour[0] > 200 and colour[1] < 60 and colour[2] < 60:
            colour[0] = 120  # no other photo as red as that one
        Image.fromarray(solid_image(tuple(int(value) for value in colour), size=(4, 4))).save(folder / f"{number:05d}.png")
    out = tmp_path / "ann-index"
    assert index_script.main([str(folder), "--model", "m", "--index", str(out), "--no-progress", "--backend", "ann"],
                             load_model=lambda path: FakeEncoder()) == 0
    capsys.readouterr()
    assert len(list(out.glob("*.faiss"))) == 1  # the faiss index file beside the embeddings
    index = Index.load(out, backend="ann")
    index.prepare()
    assert index._searcher.faiss_index is not None and index._searcher.faiss_index.ntotal == len(colours)
    assert search("red", "--model", "m", "--index", str(out), "--backend", "ann", "--top-k", "3") == 0
    lines = result_lines(capsys.readouterr().out)
    assert Path(lines[0][2]).name == "00007.png"
