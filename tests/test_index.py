"""Building, updating, loading and searching an on-disk image index, with a fake colour encoder."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kclip.index.store
import kclip.utils.files
from fake_encoder import COLOURS, FakeEncoder, solid_image
from kclip.index.index import Index, SearchResult, build_index
from kclip.index.search import classify, search


def write_image(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(solid_image(colour)).save(path)
    return path


def bump_mtime(path: Path) -> None:
    # Filesystems with coarse timestamps could leave a rewritten file's mtime unchanged.
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 5_000_000_000))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    write_image(folder / "red.png", "red")
    write_image(folder / "green.png", "green")
    write_image(folder / "blue.png", "blue")
    write_image(folder / "more" / "yellow.png", "yellow")
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "notes.txt").write_text("not an image, not even looked at")
    return folder


def colour_names(encoder: FakeEncoder) -> set:
    by_rgb = {rgb: name for name, rgb in COLOURS.items()}
    return {by_rgb[rgb] for rgb in encoder.encoded_colours}


def snapshot(out_dir: Path):
    index = Index.load(out_dir)
    return [str(p) for p in index.paths], index.embeddings.copy(), (out_dir / "metadata.json").read_text()


def test_build_writes_documented_format_and_reports_bad_images(photos, tmp_path):
    encoder = FakeEncoder()
    out_dir = tmp_path / "index"
    index = build_index(encoder, photos, out_dir, batch_size=2, progress=False)

    assert encoder.images_encoded == 4 and colour_names(encoder) == {"red", "green", "blue", "yellow"}
    assert [p.relative_to(photos).as_posix() for p in index.paths] == ["blue.png", "green.png", "more/yellow.png", "red.png"]
    assert all(p.is_absolute() for p in index.paths)
    assert index.report.num_embedded == 4 and [path for path, _ in index.report.skipped] == ["broken.jpg"]
    assert "broken.jpg" in index.report.summary()

    metadata = json.loads((out_dir / "metadata.json").read_text())
    assert metadata["format"] == "kclip-image-index" and metadata["format_version"] == 1
    assert metadata["model_fingerprint"] == encoder.fingerprint()
    assert (metadata["dtype"], metadata["embedding_dim"], metadata["count"], metadata["normalized"]) == ("float16", 4, 4, True)
    assert metadata["image_dir"] == str(photos.resolve())
    assert metadata["files"][0]["path"] == "blue.png" and metadata["files"][0]["size"] == (photos / "blue.png").stat().st_size
    assert metadata["num_skipped"] == 1 and metadata["skipped"][0]["path"] == "broken.jpg"
    assert metadata["skipped"][0]["reason"]
    stored = np.load(out_dir / metadata["embeddings_file"], allow_pickle=False)
    assert stored.dtype == np.float16 and stored.shape == (4, 4)
    np.testing.assert_allclose(np.linalg.norm(stored.astype(np.float32), axis=1), 1.0, atol=1e-3)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["index.lock", "metadata.json", metadata["embeddings_file"]])


def test_float32_on_request(photos, tmp_path):
    index = build_index(FakeEncoder(), photos, tmp_path / "index", dtype="float32", progress=False)
    assert index.embeddings.dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        build_index(FakeEncoder(), photos, tmp_path / "other", dtype="int8", progress=False)


def test_incremental_build_embeds_only_new_and_changed_files(photos, tmp_path):
    out_dir = tmp_path / "index"
    build_index(FakeEncoder(), photos, out_dir, progress=False)
    before = json.loads((out_dir / "metadata.json").read_text())

    untouched = FakeEncoder()
    index = build_index(untouched, photos, out_dir, progress=False)
    assert untouched.images_encoded == 0 and index.report.num_reused == 4
    assert json.loads((out_dir / "metadata.json").read_text()) == before  # nothing rewritten

    write_image(photos / "more" / "cyan.png", "cyan")  # added
    write_image(photos / "blue.png", "magenta")  # changed content
    bump_mtime(photos / "blue.png")
    (photos / "green.png").unlink()  # deleted
    encoder = FakeEncoder()
    index = build_index(encoder, photos, out_dir, progress=False)

    assert colour_names(encoder) == {"cyan", "magenta"} and encoder.images_encoded == 2
    assert (index.report.num_embedded, index.report.num_reused, index.report.num_removed) == (2, 2, 1)
    assert [p.name for p in index.paths] == ["blue.png", "cyan.png", "yellow.png", "red.png"]
    assert search("magenta", encoder, index, top_k=1)[0].path.name == "blue.png"
    assert search("cyan", encoder, index, top_k=1)[0].path.name == "cyan.png"
    assert len(list(out_dir.glob("embeddings-*.npy"))) == 1  # the replaced embeddings are gone


def test_fingerprint_mismatch_is_refused_naming_both(photos, tmp_path):
    out_dir = tmp_path / "index"
    built_by = FakeEncoder("model-a")
    build_index(built_by, photos, out_dir, progress=False)
    other = FakeEncoder("model-b")
    with pytest.raises(ValueError) as error:
        build_index(other, photos, out_dir, progress=False)
    message = str(error.value)
    assert built_by.fingerprint() in message and other.fingerprint() in message and "rebuild=True" in message
    with pytest.raises(ValueError) as error:
        search("red", other, out_dir)
    assert built_by.fingerprint() in str(error.value) and other.fingerprint() in str(error.value)

    index = build_index(other, photos, out_dir, rebuild=True, progress=False)
    assert index.fingerprint == other.fingerprint() and other.images_encoded == 4


def test_text_and_image_queries_find_the_expected_image(photos, tmp_path):
    encoder = FakeEncoder()
    out_dir = tmp_path / "index"
    build_index(encoder, photos, out_dir, progress=False)

    results = search("a bright red thing", encoder, out_dir, top_k=3)
    assert [type(r) for r in results] == [SearchResult] * 3
    assert results[0].path == (photos / "red.png").resolve() and results[0].rank == 1
    assert results[0].score == pytest.approx(1.0, abs=1e-3)
    assert results[0].score >= results[1].score >= results[2].score

    index = Index.load(out_dir)
    assert search(photos / "green.png", encoder, index)[0].path.name == "green.png"  # Path: by example
    assert search(str(photos / "more" / "yellow.png"), encoder, index)[0].path.name == "yellow.png"
    assert search(solid_image("blue"), encoder, index, top_k=10)[0].path.name == "blue.png"
    assert len(search(solid_image("blue"), encoder, index, top_k=10)) == 4  # capped at the index size


def test_a_missing_image_path_is_an_error_not_a_text_search(photos, tmp_path):
    encoder = FakeEncoder()
    index = build_index(encoder, photos, tmp_path / "index", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        search(str(photos / "holidy" / "red.png"), encoder, index)
    assert encoder.text_calls == 0


@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_empty_query_is_refused(photos, tmp_path, query):
    encoder = FakeEncoder()
    index = build_index(encoder, photos, tmp_path / "index", progress=False)
    with pytest.raises(ValueError, match="empty"):
        search(query, encoder, index)


def test_failure_during_embedding_keeps_old_index_and_rerun_resumes(photos, tmp_path):
    out_dir = tmp_path / "index"
    build_index(FakeEncoder(), photos, out_dir, progress=False)
    before = snapshot(out_dir)
    for number in range(5):
        write_image(photos / "new" / f"{number}.png", (40 * number, 200, 90))

    crashing = FakeEncoder(fail_after_images=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(crashing, photos, out_dir, batch_size=1, checkpoint_every=2, progress=False)
    after = snapshot(out_dir)
    assert after[0] == before[0] and np.array_equal(after[1], before[1]) and after[2] == before[2]
    assert list((out_dir / "partial").glob("part-*.json"))  # two new embeddings were checkpointed

    encoder = FakeEncoder()
    index = build_index(encoder, photos, out_dir, batch_size=1, checkpoint_every=2, progress=False)
    assert encoder.images_encoded == 3 and index.report.num_reused == 6
    assert len(index) == 9 and not (out_dir / "partial").exists()


def test_kill_between_embeddings_and_metadata_keeps_old_pairing(photos, tmp_path, monkeypatch):
    out_dir = tmp_path / "index"
    build_index(FakeEncoder(), photos, out_dir, progress=False)
    before = snapshot(out_dir)
    write_image(photos / "blue.png", "white")
    bump_mtime(photos / "blue.png")

    real_replace = os.replace

    def replace_but_die_on_metadata(source, destination):
        if Path(destination).name == "metadata.json":
            raise KeyboardInterrupt("killed")
        real_replace(source, destination)

    monkeypatch.setattr(kclip.utils.files.os, "replace", replace_but_die_on_metadata)
    with pytest.raises(KeyboardInterrupt):
        build_index(FakeEncoder(), photos, out_dir, progress=False)
    monkeypatch.setattr(kclip.utils.files.os, "replace", real_replace)

    after = snapshot(out_dir)
    assert after[0] == before[0] and np.array_equal(after[1], before[1]) and after[2] == before[2]
    assert len(list(out_dir.glob("embeddings-*.npy"))) == 2  # the orphan exists, but nothing points at it

    encoder = FakeEncoder()
    index = build_index(encoder, photos, out_dir, progress=False)
    assert encoder.images_encoded == 1 and search("white", encoder, index, top_k=1)[0].path.name == "blue.png"
    assert len(list(out_dir.glob("embeddings-*.npy"))) == 1 and not list(out_dir.glob(".*.tmp"))


def test_folders_without_usable_images_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        build_index(FakeEncoder(), empty, tmp_path / "index", progress=False)
    (empty / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="could be read"):
        build_index(FakeEncoder(), empty, tmp_path / "index", progress=False)
    assert not (tmp_path / "index" / "metadata.json").exists()


def test_index_load_reports_missing_or_damaged_index(photos, tmp_path):
    with pytest.raises(FileNotFoundError, match="no kclip index"):
        Index.load(tmp_path / "nowhere")
    out_dir = tmp_path / "index"
    build_index(FakeEncoder(), photos, out_dir, progress=False)
    metadata = json.loads((out_dir / "metadata.json").read_text())
    metadata["count"] = 7
    (out_dir / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="damaged"):
        Index.load(out_dir)


def test_classify_ranks_the_right_label(photos):
    labels = ["green", "red", "blue", "yellow"]
    results = classify([solid_image("red"), photos / "blue.png"], labels, FakeEncoder(), template="a {} object")
    assert [result.label for result in results] == ["red", "blue"]
    for result in results:
        assert sorted(label for label, _ in result.ranking) == sorted(labels)
        assert sum(p for _, p in result.ranking) == pytest.approx(1.0)
        assert result.probability > 0.9
    single = classify(str(photos / "green.png"), labels, FakeEncoder())
    assert len(single) == 1 and single[0].label == "green"
    with pytest.raises(ValueError, match="template"):
        classify(solid_image("red"), labels, FakeEncoder(), template="no slot")
    with pytest.raises(ValueError, match="distinct"):
        classify(solid_image("red"), ["red", "red"], FakeEncoder())


def test_index_search_answers_each_query_row_best_first(tmp_path):
    paths = [tmp_path / f"{number}.png" for number in range(4)]
    index = Index(paths, np.eye(4, dtype=np.float16), "fingerprint")
    results = index.search(np.array([[0, 0, 1, 0], [0.5, 0, 0, 1]], np.float32), top_k=2)
    assert [[r.path.name for r in row] for row in results] == [["2.png", "0.png"], ["3.png", "0.png"]]
    assert [[r.rank for r in row] for row in results] == [[1, 2], [1, 2]]
    assert results[1][1].score == 0.5
    with pytest.raises(ValueError, match="width 4"):
        index.search(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="unknown search backend"):
        Index(paths, np.eye(4), "fingerprint", backend="annoy")


def test_unnormalized_model_output_is_refused(photos, tmp_path):
    class Unnormalized(FakeEncoder):
        def encode_image(self, images, batch_size=32):
            return 3 * super().encode_image(images, batch_size)

    with pytest.raises(ValueError, match="L2-normalized"):
        build_index(Unnormalized(), photos, tmp_path / "index", progress=False)
    assert not (tmp_path / "index" / "metadata.json").exists()
