"""Hostile caption files, config values and checkpoint files: each becomes a named skip (counted against
max_bad_fraction) or a ValueError that names what is wrong, never a traceback or a silent loss."""
import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from fake_encoder import solid_image
from kclip.commands import search as search_command
from kclip.commands import serve as serve_command
from kclip.config import parse_config
from kclip.data import report as skip
from kclip.data.layouts import read_captioned_images
from kclip.index.search import check_grid_size
from kclip.serve.server import upload_limit_bytes


def photo_folder(root: Path, count: int) -> list:
    (root / "images").mkdir(parents=True)
    names = [f"p{number:02d}.png" for number in range(count)]
    for name in names:
        Image.fromarray(solid_image("red", size=(8, 8))).save(root / "images" / name)
    return names


def entries(records, reason):
    return [(entry.item, entry.detail, entry.captions_dropped) for entry in records.skip_report.entries
            if entry.reason == reason]


def test_a_caption_over_the_csv_field_limit_is_one_named_skip(tmp_path):
    names = photo_folder(tmp_path, 4)
    rows = [f"{name},a red photo number {number}" for number, name in enumerate(names)]
    rows[2] = f'{names[2]},"{"x" * 140_000}"'
    (tmp_path / "captions.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    records = read_captioned_images(tmp_path, layout="custom", max_bad_fraction=0.5, check_images=False)
    assert sorted(image.image_id for image in records.images) == ["images/" + n for n in names if n != names[2]]
    assert entries(records, skip.MALFORMED_LINE) == [("captions.csv:4", "field larger than field limit (131072)", 1)]
    assert records.skip_report.total_captions == 4


def test_an_unbalanced_quote_counts_every_swallowed_line_as_bad(tmp_path):
    names = photo_folder(tmp_path, 20)
    rows = [f"{name},a red photo number {number}" for number, name in enumerate(names)]
    rows[14] = f'{names[14]},"the quote never closes'
    (tmp_path / "captions.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"Too much of the data set is broken: 6 of 20 captions \(30.0%\)"):
        read_captioned_images(tmp_path, layout="custom", check_images=False)
    records = read_captioned_images(tmp_path, layout="custom", max_bad_fraction=0.5, check_images=False)
    assert len(records.images) == 14
    assert entries(records, skip.MALFORMED_LINE) == [
        ("captions.csv:16", "unbalanced quote: lines 16-21 read as one field", 6)]


def test_jsonl_captions_may_hold_unicode_line_separators(tmp_path):
    names = photo_folder(tmp_path, 3)
    captions = ["a red\u2028photo", "next\x85line", "para\u2029graph \x1c sep"]
    (tmp_path / "captions.jsonl").write_text(
        "\n".join(json.dumps({"image": name, "caption": caption}, ensure_ascii=False)
                  for name, caption in zip(names, captions)) + "\r\n", encoding="utf-8")
    records = read_captioned_images(tmp_path, layout="custom", max_bad_fraction=0.0, check_images=False)
    assert [image.captions for image in records.images] == [[" ".join(c.split())] for c in captions]
    assert records.skip_report.bad_captions == 0


def test_a_deeply_nested_jsonl_line_is_a_named_skip(tmp_path):
    names = photo_folder(tmp_path, 3)
    lines = [json.dumps({"image": name, "caption": "a red photo"}) for name in names]
    lines[1] = "[" * 100_000 + "]" * 100_000
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    records = read_captioned_images(tmp_path, layout="custom", max_bad_fraction=0.5, check_images=False)
    assert entries(records, skip.MALFORMED_LINE) == [("captions.jsonl:2", "JSON nested too deeply to read", 1)]
    assert len(records.images) == 2


def test_caption_files_naming_images_outside_the_data_folder_are_refused(tmp_path):
    data = tmp_path / "data"
    names = photo_folder(data, 2)
    secret = tmp_path / "private.png"
    Image.fromarray(solid_image("blue", size=(8, 8))).save(secret)
    before = hashlib.sha256(secret.read_bytes()).hexdigest()
    inside = (data / "images" / names[1]).resolve()
    (data / "captions.csv").write_text(
        f"image,caption\n{names[0]},a red photo\n{secret},a blue photo\n../../private.png,a blue photo\n"
        f"images/../../private.png,again\n{inside},an absolute path inside the folder\n")
    records = read_captioned_images(data, layout="custom", max_bad_fraction=0.8, check_images=False)
    assert sorted(image.image_id for image in records.images) == ["images/" + name for name in names]
    refused = entries(records, skip.OUTSIDE_DATA_FOLDER)
    assert [(item, dropped) for item, _, dropped in refused] == [
        (str(secret), 1), ("../../private.png", 1), ("images/../../private.png", 1)]
    assert refused[0][1].startswith("is an absolute path outside") and refused[1][1].startswith("climbs out with '..'")
    assert records.skip_report.bad_captions == 3
    with pytest.raises(ValueError, match="Too much of the data set is broken: 3 of 5 captions"):
        read_captioned_images(data, layout="custom", check_images=False)
    assert hashlib.sha256(secret.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("flag, value, message", [
    ("--data.train_batch_size", "-5", "data.train_batch_size must be >= 1, got -5."),
    ("--data.train_batch_size", "0", "data.train_batch_size must be >= 1, got 0."),
    ("--data.val_batch_size", "0", "data.val_batch_size must be >= 1, got 0."),
    ("--trainer.max_epochs", "0", "trainer.max_epochs must be >= 1, got 0."),
    ("--trainer.max_epochs", "-3", "trainer.max_epochs must be >= 1, got -3."),
    ("--trainer.eval_every_n_epochs", "0", "trainer.eval_every_n_epochs must be >= 1, got 0."),
    ("--data.max_length", "0", "data.max_length must be >= 3 (room for [CLS], one token and [SEP]), got 0."),
    ("--model.image_size", "-48", "model.image_size must be >= 8, got -48."),
    ("--model.dropout", "1.5", "model.dropout must be from 0 to below 1, got 1.5."),
    ("--model.temperature", "0", "model.temperature must be > 0, got 0.0."),
    ("--data.max_bad_fraction", "2", "data.max_bad_fraction must be from 0 to 1, got 2.0."),
    ("--trainer.steps_per_epoch", "0", "trainer.steps_per_epoch must be None or >= 1, got 0."),
    ("--trainer.plateau_factor", "1", "trainer.plateau_factor must be above 0 and below 1, got 1.0."),
    ("--output_dir", "", "output_dir must name a folder, got ''."),
    ("--output_dir", "  ", "output_dir must name a folder, got '  '."),
])
def test_out_of_range_config_values_are_refused_at_parse_time_naming_the_key(flag, value, message):
    with pytest.raises(ValueError) as error:
        parse_config([f"{flag}={value}"])
    assert str(error.value) == message


def test_upload_and_grid_bounds_are_refused_with_clear_errors(capsys):
    assert upload_limit_bytes(20) == 20 * 2**20 and upload_limit_bytes("0.5") == 2**19
    for value in ("inf", float("nan"), 0, -1, 1025, "lots"):
        with pytest.raises(ValueError, match="the upload limit must be a number of megabytes above 0 and at most 1024"):
            upload_limit_bytes(value)
    with pytest.raises(SystemExit) as exit_info:
        serve_command.parse_args(["--model", "m", "--index", "i", "--max-upload-mb", "inf"])
    assert exit_info.value.code == 2 and "above 0 and at most 1024; got inf." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve_command.parse_args(["--model", "m", "--index", "i", "--allowed-host", "http://photos.lan"])
    assert "is not a host name or IP address" in capsys.readouterr().err
    calls = []
    assert serve_command.main(["--model", "m", "--index", "i", "--allowed-host", "Photos.lan"], load_model=lambda p: p,
                              serve=lambda model, index, **options: calls.append(options)) == 0
    assert calls[0]["allowed_hosts"] == ["photos.lan"]

    check_grid_size(128, 9)
    with pytest.raises(ValueError, match="tile size must be a whole number of pixels from 16 to 1024; got 100000"):
        check_grid_size(100_000, 9)
    with pytest.raises(ValueError, match="a grid of 200 results at 1024 pixels per tile would be 212 megapixels"):
        check_grid_size(1024, 200)
    with pytest.raises(SystemExit) as exit_info:
        search_command.parse_args(["red", "--model", "m", "--index", "i", "--grid", "g.png", "--tile-size", "100000"])
    assert exit_info.value.code == 2 and "--tile-size: the grid's tile size" in capsys.readouterr().err


@pytest.mark.torch_only
@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes), not a checkpoint; copy or download it again."),
    (bytes(range(7, 255)) * 4, "is not a PyTorch checkpoint: it is neither a zip archive (what torch.save writes) nor "
                               "a pickle (it starts with bytes 07 08 09 0a)."),
    (b"PK\x03\x04" + bytes(200), "is truncated or damaged: torch cannot read it as a checkpoint"),
])
def test_files_that_are_no_checkpoint_get_a_clear_error_and_no_unsafe_advice(tmp_path, content, message):
    from kclip.models.convert import read_lightning_checkpoint

    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_lightning_checkpoint(path)
    assert message in str(error.value) and "weights_only=False" not in str(error.value)
    assert os.path.getsize(path) == len(content)
