"""Hostile inputs to index building and loading: an index never writes into, deletes from or serves out of
a folder it does not own. Each case asserts the exact refusal and that the user's files are byte-identical."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kclip.utils.files
from fake_encoder import FakeEncoder, solid_image
from kclip.commands import index as index_command
from kclip.index import ann as ann_module
from kclip.index.ann import AnnSearcher, ann_file_stem
from kclip.index.index import Index, build_index
from kclip.index.store import FileRecord, commit, read_metadata


def tree(folder: Path) -> dict:
    """Every file under `folder` (hidden ones too) -> sha256 of its bytes: what "unchanged" is checked against."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def user_photos(folder: Path) -> Path:
    """A photo folder with files whose names look like an index's: exactly what the old clean-up deleted."""
    folder.mkdir(parents=True)
    for colour in ("red", "green", "blue"):
        Image.fromarray(solid_image(colour)).save(folder / f"{colour}.png")
    (folder / "partial").mkdir()
    Image.fromarray(solid_image("yellow")).save(folder / "partial" / "holiday.jpg")
    (folder / "thumbnails").mkdir()
    Image.fromarray(solid_image("cyan")).save(folder / "thumbnails" / "my_small_1.jpg")
    np.save(folder / "embeddings-final.npy", np.arange(6.0))
    (folder / "ann-notes.json").write_text('{"mine": true}')
    (folder / ".metadata.json.notes.tmp").write_text("my hidden notes")
    return folder


@pytest.mark.parametrize("where, message", [
    (lambda photos: photos, "is inside the image folder"),
    (lambda photos: photos / "index", "is inside the image folder"),
    (lambda photos: photos / "partial", "is inside the image folder"),
    (lambda photos: photos.parent, "is inside the index folder"),
])
def test_an_index_inside_the_photos_or_around_them_is_refused_before_writing(tmp_path, where, message):
    photos = user_photos(tmp_path / "my_photos")
    out_dir = where(photos)
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=message):
        build_index(FakeEncoder(), photos, out_dir, progress=False)
    assert tree(tmp_path) == before  # not even a lock file was written
    assert not (out_dir / "index.lock").exists()


def test_a_folder_of_the_users_files_is_refused_as_an_index_folder(tmp_path):
    photos = user_photos(tmp_path / "photos")
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "notes.txt").write_text("my notes")
    np.save(documents / "embeddings-final.npy", np.zeros(3))
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"documents is not empty and holds no kclip index \(embeddings-final.npy, "
                                         r"notes.txt\); kclip writes an index only into a new or empty folder"):
        build_index(FakeEncoder(), photos, documents, progress=False)
    (documents / "metadata.json").write_text('{"format": "someone-elses-tool"}')
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="holds a metadata.json of another kind"):
        build_index(FakeEncoder(), photos, documents, rebuild=True, progress=False)
    assert tree(tmp_path) == before


def test_the_cli_refuses_an_index_inside_the_photos_and_changes_nothing(tmp_path, capsys):
    photos = user_photos(tmp_path / "photos")
    before = tree(tmp_path)
    code = index_command.main([str(photos), "--model", "m.keras", "--index", str(photos / "index"), "--no-progress"],
                              load_model=lambda path: FakeEncoder())
    assert code == 2
    assert "error: the index folder" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_rebuilds_delete_only_the_files_the_index_wrote(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for colour in ("red", "green"):
        Image.fromarray(solid_image(colour)).save(photos / f"{colour}.png")
    out_dir = tmp_path / "index"
    first = build_index(FakeEncoder(), photos, out_dir, progress=False).metadata["embeddings_file"]
    # The user keeps their own files in the index folder, some with names like kclip's.
    mine = {"embeddings-final.npy": b"mine", "ann-notes.json": b"{}", "notes.txt": b"notes",
            "partial/holiday.jpg": b"jpeg", "thumbnails/my_small_1.jpg": b"jpeg"}
    for name, data in mine.items():
        (out_dir / name).parent.mkdir(exist_ok=True)
        (out_dir / name).write_bytes(data)
    Image.fromarray(solid_image("blue")).save(photos / "blue.png")
    index = build_index(FakeEncoder(), photos, out_dir, progress=False)
    assert len(index) == 3 and not (out_dir / first).exists()  # kclip's replaced file went
    for name, data in mine.items():
        assert (out_dir / name).read_bytes() == data, name


def test_a_commit_killed_half_way_leaves_an_orphan_the_next_commit_removes(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(solid_image("red")).save(photos / "red.png")
    out_dir = tmp_path / "index"
    build_index(FakeEncoder(), photos, out_dir, progress=False)
    Image.fromarray(solid_image("green")).save(photos / "green.png")
    real_replace = os.replace

    def die_on_metadata(source, destination):
        if Path(destination).name == "metadata.json":
            raise KeyboardInterrupt("killed")
        real_replace(source, destination)

    monkeypatch.setattr(kclip.utils.files.os, "replace", die_on_metadata)
    with pytest.raises(KeyboardInterrupt):
        build_index(FakeEncoder(), photos, out_dir, progress=False)
    monkeypatch.setattr(kclip.utils.files.os, "replace", real_replace)
    assert len(list(out_dir.glob("embeddings-*.npy"))) == 2 and (out_dir / "cleanup.json").exists()
    index = build_index(FakeEncoder(), photos, out_dir, progress=False)
    assert sorted(path.name for path in out_dir.iterdir()) == sorted(
        ["index.lock", "metadata.json", index.metadata["embeddings_file"]])


def tampered(out_dir: Path, change) -> None:
    metadata = json.loads((out_dir / "metadata.json").read_text())
    change(metadata)
    (out_dir / "metadata.json").write_text(json.dumps(metadata))


@pytest.fixture
def built(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for colour in ("red", "green", "blue"):
        Image.fromarray(solid_image(colour)).save(photos / f"{colour}.png")
    out_dir = tmp_path / "index"
    build_index(FakeEncoder(), photos, out_dir, progress=False)
    return out_dir


@pytest.mark.parametrize("change, message", [
    (lambda m: m["files"][0].update(path="/etc/hostname"), r"files\[0\].path is an absolute path \('/etc/hostname'\)"),
    (lambda m: m["files"][1].update(path="../../../../etc/passwd"), r"files\[1\].path has an empty, '.' or '..' part"),
    (lambda m: m["files"][1].update(path="a/./b.png"), r"files\[1\].path has an empty, '.' or '..' part"),
    (lambda m: m.update(files=5), "files must be a list, not int"),
    (lambda m: m.update(format_version="2"), "format_version must be a whole number >= 1, not '2'"),
    (lambda m: m.update(image_dir="photos"), "image_dir must be an absolute folder path"),
    (lambda m: m.update(embeddings_file="../../secret.npy"), "embeddings_file must name an embeddings-"),
    (lambda m: m.update(count=99), r"count must equal the number of files \(3\), not 99"),
    (lambda m: m["files"][2].update(size="big"), r"files\[2\] needs whole-number size and mtime_ns"),
    (lambda m: m.update(files=m["files"] + m["files"][:1], count=4), r"files\[3\].path repeats"),
    (lambda m: m.update(skipped={"a": 1}), "skipped must be a list"),
])
def test_tampered_metadata_is_refused_on_load_naming_the_key(built, change, message):
    tampered(built, change)
    with pytest.raises(ValueError, match=r"is damaged or was edited by hand: " + message):
        Index.load(built)


def test_a_faiss_file_that_does_not_match_its_checksum_is_never_deserialized(tmp_path, monkeypatch):
    previous_threads = ann_module.limit_search_threads(1)  # OpenMP threads spin on a busy 2-core machine
    rows = np.random.default_rng(0).normal(size=(1024, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    header = {"format": "kclip-image-index", "model_fingerprint": "f" * 16, "image_dir": "/photos", "dtype": "float32"}
    commit(tmp_path, header, rows, [FileRecord(f"{i:05d}.jpg", 1, i) for i in range(len(rows))], [])
    metadata = read_metadata(tmp_path)
    AnnSearcher.build(rows).save(tmp_path, metadata)
    assert AnnSearcher.load(tmp_path, metadata, rows).faiss_index is not None  # the untouched file loads
    faiss_file = tmp_path / f"{ann_file_stem(metadata)}.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))

    def never(*args):
        raise AssertionError("faiss parsed a file its checksum does not vouch for")

    monkeypatch.setattr(ann_module._faiss(), "deserialize_index", never)
    assert AnnSearcher.load(tmp_path, metadata, rows) is None
    ann_module.limit_search_threads(previous_threads)
