"""kclip.utils.files: whole file or nothing, fsync before the rename, and the folder after it."""
import os
import stat

import numpy as np
import pytest

import kclip.utils.files as files


def no_temporaries(folder):
    return [path.name for path in folder.iterdir() if files.is_temporary(path)] == []


def test_every_form_round_trips(tmp_path):
    files.write_text(tmp_path / "a.txt", "héllo\n")
    files.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    files.write_json(tmp_path / "sub" / "c.json", {"r@5": 0.5, "name": "ünï"})
    files.write_numpy(tmp_path / "d.npy", np.arange(6, dtype=np.float16).reshape(2, 3))
    files.write_file_atomic(tmp_path / "e.csv", lambda path: path.write_text("x,y\n"))
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "c.json").read_text(encoding="utf-8") == '{\n  "r@5": 0.5,\n  "name": "ünï"\n}\n'
    loaded = np.load(tmp_path / "d.npy", allow_pickle=False)
    assert loaded.dtype == np.float16 and loaded.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert (tmp_path / "e.csv").read_text() == "x,y\n"
    # Permissions as a plain open() gives (mkstemp's 0600 would hide results from other users).
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert no_temporaries(tmp_path)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"old": 1})

    def fail_halfway(handle):
        handle.write("{\"new\": ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.write_atomic(path, fail_halfway, mode="w")
    with pytest.raises(RuntimeError, match="model too big"):
        files.write_file_atomic(tmp_path / "model.keras", lambda p: (_ for _ in ()).throw(RuntimeError("model too big")))
    assert path.read_text() == '{\n  "old": 1\n}\n' and not (tmp_path / "model.keras").exists()
    assert no_temporaries(tmp_path)


def test_fsync_file_before_rename_and_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "fsync-file")
        real_fsync(descriptor)

    def replace(source, destination):
        events.append("replace")
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.write_text(tmp_path / "x.txt", "x")
    assert events == ["fsync-file", "replace", "fsync-dir"]
    events.clear()
    files.write_file_atomic(tmp_path / "y.png", lambda path: path.write_bytes(b"png"))
    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_writers_that_need_a_name_see_the_extension(tmp_path):
    seen = []
    files.write_file_atomic(tmp_path / "model.keras", lambda path: (seen.append(path), path.write_text("m")))
    assert seen[0].name.endswith(".keras") and seen[0].parent == tmp_path and seen[0] != tmp_path / "model.keras"
    assert files.is_temporary(seen[0]) and not files.is_temporary(tmp_path / "model.keras")


def test_a_folder_is_built_aside_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "old.txt").write_text("old")
    building = files.temporary_directory(target)
    (building / "Images").mkdir()
    (building / "Images" / "a.jpg").write_bytes(b"jpg")
    assert files.is_temporary(building) and (target / "old.txt").exists()
    files.commit_directory(building, target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["Images", "Images/a.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
