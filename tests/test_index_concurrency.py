"""Two builds and a reader on one index folder at once: nothing lost, nothing crashes, no torn reads."""
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kclip.index.store
from fake_encoder import FakeEncoder, colour_embedding
from kclip.index.index import Index, build_index
from kclip.index.store import IndexLockTimeout, index_lock

ROUNDS = 4


def colour_of(name: str) -> tuple:
    """The colour drawn into the image called `name`: distinct per image, so rows can be told apart."""
    builder, number = name[0], int(name[1:].split(".")[0])
    return (40 + 50 * number, 200 if builder == "a" else 30, 90)


def write_png(folder: Path, name: str) -> None:
    # Written under a temporary name and renamed, like a camera upload: a scan never sees half a file.
    array = np.broadcast_to(np.asarray(colour_of(name), dtype=np.uint8), (12, 12, 3))
    temporary = folder / f".{name}.part"
    Image.fromarray(array.copy()).save(temporary, format="PNG")
    os.replace(temporary, folder / name)


def check_consistent(index: Index) -> None:
    """Every row belongs to the file it is listed with, and metadata agrees with the array."""
    assert len(index.paths) == len(index.embeddings) == index.metadata["count"]
    for path, row in zip(index.paths, index.embeddings.astype(np.float32)):
        np.testing.assert_allclose(row, colour_embedding(colour_of(path.name)), atol=2e-3)


def test_two_builds_and_a_reader_at_once(tmp_path):
    photos, out_dir = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    write_png(photos, "a0.png")
    build_index(FakeEncoder(), photos, out_dir, progress=False)
    done = threading.Event()
    errors, loads = [], []

    def builder(prefix: str, dtypes: tuple):
        try:
            for number in range(1, ROUNDS + 1):
                write_png(photos, f"{prefix}{number}.png")
                # Alternating dtypes make every build re-embed and commit, and delete the old files.
                dtype = dtypes[number % 2]
                index = build_index(FakeEncoder(), photos, out_dir, progress=False, dtype=dtype,
                                    checkpoint_every=2, batch_size=2)
                assert f"{prefix}{number}.png" in {path.name for path in index.paths}
                check_consistent(index)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    def reader():
        try:
            while not done.is_set():
                index = Index.load(out_dir, verify_checksum=True)
                check_consistent(index)
                loads.append(len(index))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=builder, args=("a", ("float16", "float32"))),
               threading.Thread(target=builder, args=("b", ("float32", "float16")))]
    reading = threading.Thread(target=reader)
    reading.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    reading.join(timeout=30)
    assert not errors, errors
    assert loads, "the reader never completed a load"

    # The last commit scanned after every image was written, so none is lost.
    final = Index.load(out_dir)
    expected = {"a0.png"} | {f"{prefix}{n}.png" for prefix in "ab" for n in range(1, ROUNDS + 1)}
    assert {path.name for path in final.paths} == expected
    check_consistent(final)
    embeddings = [path.name for path in out_dir.glob("embeddings-*.npy")]
    assert embeddings == [final.metadata["embeddings_file"]]  # stale files removed, the current one kept
    assert not (out_dir / "partial").exists() and not list(out_dir.glob(".*tmp*"))


def test_second_writer_times_out_naming_the_lock_file(tmp_path):
    photos, out_dir = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    write_png(photos, "a1.png")
    holding, release = threading.Event(), threading.Event()

    def hold():
        with index_lock(out_dir):
            holding.set()
            release.wait(30)

    other = threading.Thread(target=hold)
    other.start()
    holding.wait(10)
    try:
        start = time.perf_counter()
        with pytest.raises(IndexLockTimeout, match=str(out_dir / "index.lock")):
            build_index(FakeEncoder(), photos, out_dir, progress=False, lock_timeout=0.3)
        assert time.perf_counter() - start >= 0.3
        assert not (out_dir / "metadata.json").exists()  # nothing was written while waiting
    finally:
        release.set()
        other.join()
    index = build_index(FakeEncoder(), photos, out_dir, progress=False, lock_timeout=5)
    assert [path.name for path in index.paths] == ["a1.png"]


def test_reader_rereads_metadata_when_a_commit_removes_its_embeddings(tmp_path, monkeypatch):
    photos, out_dir = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    write_png(photos, "a1.png")
    build_index(FakeEncoder(), photos, out_dir, progress=False, dtype="float16")
    old_file = kclip.index.store.read_metadata(out_dir)["embeddings_file"]
    real_load = kclip.index.store.load_embeddings
    calls = []

    def commit_in_between(directory, metadata, verify_checksum=False):
        calls.append(metadata["embeddings_file"])
        if len(calls) == 1:  # a build lands after the reader read metadata.json, before np.load
            write_png(photos, "b1.png")
            build_index(FakeEncoder(), photos, out_dir, progress=False, dtype="float32")
            assert not (out_dir / old_file).exists()
        return real_load(directory, metadata, verify_checksum)

    monkeypatch.setattr(kclip.index.store, "load_embeddings", commit_in_between)
    index = Index.load(out_dir)
    assert calls[0] == old_file and calls[-1] != old_file  # (the build in between loads too)
    assert {path.name for path in index.paths} == {"a1.png", "b1.png"} and index.embeddings.dtype == np.float32
    check_consistent(index)


def test_index_script_exits_2_naming_the_lock_file(tmp_path, capsys):
    from test_no_abbreviations import load_script

    photos, out_dir = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    write_png(photos, "a1.png")
    script = load_script("index")
    with index_lock(out_dir):
        code = script.main([str(photos), "--model", "m.keras", "--index", str(out_dir), "--lock-timeout", "0.2",
                            "--no-progress"], load_model=lambda path: FakeEncoder())
    assert code == 2 and str(out_dir / "index.lock") in capsys.readouterr().err
    assert script.main([str(photos), "--model", "m.keras", "--index", str(out_dir), "--no-progress"],
                       load_model=lambda path: FakeEncoder()) == 0
