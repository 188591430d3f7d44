import json

import pytest

from data_fixtures import (NON_ASCII_CAPTION, NON_ASCII_NAME, make_custom, make_flickr8k_original,
                           make_kaggle_flickr8k, make_kaggle_flickr30k, make_karpathy, write_image,
                           write_karpathy_json)
from kclip.data import report as skip
from kclip.data.layouts import LAYOUTS, detect_layout, read_captioned_images
from kclip.data.splits import SPLITS, check_split_fractions, hash_split


def _captions_by_id(records):
    return {image.image_id: image.captions for image in records.images}


def _assert_splits_disjoint(records):
    ids_by_split = {name: {image.image_id for image in records.for_split(name)} for name in SPLITS}
    assert sum(len(ids) for ids in ids_by_split.values()) == len(records.images)
    assert len(set().union(*ids_by_split.values())) == len(records.images)


def test_detects_every_layout(tmp_path):
    assert detect_layout(make_kaggle_flickr8k(tmp_path).data_dir) == "kaggle_flickr8k"
    assert detect_layout(make_flickr8k_original(tmp_path).data_dir) == "flickr8k"
    assert detect_layout(make_kaggle_flickr30k(tmp_path).data_dir) == "kaggle_flickr30k"
    assert detect_layout(make_karpathy(tmp_path).data_dir) == "karpathy"
    assert detect_layout(make_custom(tmp_path, "csv").data_dir) == "custom"
    assert detect_layout(make_custom(tmp_path, "jsonl").data_dir) == "custom"


def test_unknown_layout_error_lists_every_layout_and_its_files(tmp_path):
    (tmp_path / "holiday_photos").mkdir()
    write_image(tmp_path / "holiday_photos" / "beach.jpg")
    with pytest.raises(ValueError) as caught:
        detect_layout(tmp_path)
    message = str(caught.value)
    for layout in LAYOUTS:
        assert layout in message
    for expected_file in ("captions.txt", "Flickr8k.token.txt", "Flicker8k_Dataset", "results.csv",
                          "dataset_flickr8k.json", ".jsonl", "holiday_photos/"):
        assert expected_file in message
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "absent")


def test_kaggle_flickr8k_recovers_captions_and_reports_every_bad_item(tmp_path):
    fixture = make_kaggle_flickr8k(tmp_path)
    report_path = tmp_path / "reports" / "skipped.txt"
    records = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0, report_path=report_path)
    assert records.layout == "kaggle_flickr8k" and records.split_source == "hash"
    assert _captions_by_id(records) == fixture.captions
    assert NON_ASCII_CAPTION in _captions_by_id(records)[NON_ASCII_NAME]
    assert records.images[0].image_path.is_file()
    _assert_splits_disjoint(records)

    report = records.skip_report
    assert sorted(name.rsplit("/", 1)[-1] for name in report.items_for(skip.UNREADABLE_IMAGE)) == sorted(fixture.bad_files)
    assert report.items_for(skip.MISSING_IMAGE) == fixture.missing_images
    assert report.counts_by_reason()[skip.MALFORMED_LINE] == fixture.malformed_lines
    assert report.counts_by_reason()[skip.EMPTY_CAPTION] == fixture.empty_captions
    assert report.items_for(skip.IMAGE_WITHOUT_CAPTIONS) == ["stray_without_captions.png"]
    assert report.bad_captions == 3 + 1 + fixture.malformed_lines + fixture.empty_captions
    assert report.total_captions == sum(map(len, fixture.captions.values())) + report.bad_captions

    assert records.report_path == report_path
    text = report_path.read_text(encoding="utf-8")
    for name in fixture.bad_files + fixture.missing_images + ["captions.txt:9"]:
        assert name in text
    saved = json.loads(report_path.with_suffix(".json").read_text(encoding="utf-8"))
    assert saved["bad_captions"] == report.bad_captions


def test_too_many_bad_items_raise_with_count_report_path_and_remedy(tmp_path):
    fixture = make_kaggle_flickr8k(tmp_path)
    with pytest.raises(ValueError) as caught:
        read_captioned_images(fixture.data_dir)  # default limit 5%; this fixture is ~25% broken
    message = str(caught.value)
    default_report = fixture.data_dir / "kclip_skip_report.txt"
    assert str(default_report) in message and default_report.is_file()
    assert "6 of 26 captions" in message and "max_bad_fraction" in message


def test_check_images_false_skips_decoding_but_still_catches_empty_files(tmp_path):
    fixture = make_kaggle_flickr8k(tmp_path)
    records = read_captioned_images(fixture.data_dir, check_images=False, max_bad_fraction=1.0)
    unreadable = [name.rsplit("/", 1)[-1] for name in records.skip_report.items_for(skip.UNREADABLE_IMAGE)]
    assert unreadable == ["empty.jpg"]
    assert {"truncated.jpg", "text_not_image.jpg"} <= set(_captions_by_id(records))


def test_original_flickr8k_uses_the_official_split_lists(tmp_path):
    fixture = make_flickr8k_original(tmp_path)
    records = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0)
    assert records.split_source == "official lists"
    assert _captions_by_id(records) == fixture.captions
    assert {image.image_id: image.split for image in records.images} == {
        name: split for name, split in fixture.splits.items() if name in fixture.captions}
    assert records.split_counts() == {"train": 4, "validation": 2, "test": 2}
    report = records.skip_report
    assert report.items_for(skip.NOT_IN_SPLIT_LISTS) == ["unlisted.jpg"]
    assert report.items_for(skip.MISSING_IMAGE) == fixture.missing_images
    assert report.counts_by_reason()[skip.MALFORMED_LINE] == 1
    # Unlisted images are reported but are not errors in the data.
    assert report.bad_captions == 2


def test_karpathy_json_gives_captions_and_splits(tmp_path):
    fixture = make_karpathy(tmp_path)
    records = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0)
    assert records.layout == "karpathy" and records.split_source == "karpathy json"
    assert _captions_by_id(records) == fixture.captions
    assert {image.image_id: image.split for image in records.images} == fixture.splits
    assert records.skip_report.counts_by_reason() == {skip.EMPTY_CAPTION: 1}


def test_karpathy_json_next_to_kaggle_layout_sets_the_splits(tmp_path):
    fixture = make_kaggle_flickr8k(tmp_path)
    assigned = {"1000_a.jpg": "test", "1001_b.jpg": "val", "1002_c.jpg": "restval", NON_ASCII_NAME: "train"}
    write_karpathy_json(fixture.data_dir / "dataset_flickr8k.json",
                        [(name, split, ["json caption"]) for name, split in assigned.items()])
    records = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0)
    assert records.layout == "kaggle_flickr8k" and records.split_source == "karpathy json"
    assert _captions_by_id(records) == fixture.captions  # captions still from captions.txt
    assert {image.image_id: image.split for image in records.images} == {
        "1000_a.jpg": "test", "1001_b.jpg": "validation", "1002_c.jpg": "train", NON_ASCII_NAME: "train"}
    forced = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0, split_method="hash")
    assert forced.split_source == "hash"


def test_kaggle_flickr30k_nested_folder_pipes_and_quotes(tmp_path):
    fixture = make_kaggle_flickr30k(tmp_path)
    records = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0)
    assert records.layout == "kaggle_flickr30k"
    assert _captions_by_id(records) == fixture.captions
    assert records.skip_report.counts_by_reason() == {skip.MALFORMED_LINE: 1}


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_custom_caption_file_with_configured_columns(tmp_path, kind):
    fixture = make_custom(tmp_path, kind)
    records = read_captioned_images(fixture.data_dir, image_column="file", caption_column="text",
                                    max_bad_fraction=1.0)
    assert records.layout == "custom"
    assert _captions_by_id(records) == fixture.captions
    assert records.skip_report.counts_by_reason().get(skip.MALFORMED_LINE, 0) == fixture.malformed_lines


def test_custom_csv_with_wrong_column_names_says_how_to_fix_it(tmp_path):
    fixture = make_custom(tmp_path, "csv")
    with pytest.raises(ValueError, match="image_column=/caption_column="):
        read_captioned_images(fixture.data_dir)


def test_hash_split_is_deterministic_by_image_and_follows_fractions(tmp_path):
    ids = [f"{index}_photo.jpg" for index in range(3000)]
    first = [hash_split(image_id, (0.8, 0.1, 0.1)) for image_id in ids]
    assert first == [hash_split(image_id, (0.8, 0.1, 0.1)) for image_id in ids]
    assert 0.77 < first.count("train") / len(ids) < 0.83 and 0.08 < first.count("test") / len(ids) < 0.12
    # Fixed by SHA-1 of the id (its first 8 bytes, big-endian, over 2**64: a.jpg 0.339, b.jpg 0.701,
    # f.jpg 0.018, g.jpg 0.813, h.jpg 0.957), so it is the same on every machine and Python version.
    names = ("a.jpg", "b.jpg", "f.jpg", "g.jpg", "h.jpg")
    assert [hash_split(name) for name in names] == ["train", "train", "train", "validation", "test"]
    assert [hash_split(name, (0.3, 0.4, 0.3)) for name in names] == ["validation", "test", "train", "test", "test"]
    assert hash_split("anything", (1.0, 0.0, 0.0)) == "train"
    assert hash_split("anything", (0.0, 0.0, 1.0)) == "test"
    with pytest.raises(ValueError, match="sum to 1"):
        check_split_fractions((0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="three numbers"):
        check_split_fractions((0.9, 0.1))
    fixture = make_kaggle_flickr8k(tmp_path)
    once = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0, split_fractions=(0.5, 0.25, 0.25))
    again = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0, split_fractions=(0.5, 0.25, 0.25))
    assert [(i.image_id, i.split) for i in once.images] == [(i.image_id, i.split) for i in again.images]
    assert all(image.split == hash_split(image.image_id, (0.5, 0.25, 0.25)) for image in once.images)


def test_caption_pairs_flatten_by_split(tmp_path):
    fixture = make_flickr8k_original(tmp_path)
    records = read_captioned_images(fixture.data_dir, max_bad_fraction=1.0)
    pairs = records.caption_pairs("train")
    assert len(pairs) == 4 * 3
    assert {image_id for _, _, image_id in pairs} == {n for n, s in fixture.splits.items() if s == "train"}
    assert "official lists" in records.summary()
