import csv
import re

import numpy as np
import pytest
from PIL import Image

from kclip.data import synthetic
from kclip.data.layouts import detect_layout, read_captioned_images
from kclip.data.synthetic import caption_matches, generate_examples, render_scene, write_synthetic_dataset

_SHAPE = {"circle": "circle", "disc": "circle", "square": "square", "box": "square", "triangle": "triangle", "star": "star"}
_COLOUR = {name: name for name in synthetic.COLOURS} | {"violet": "purple"}
_RELATION = {"to the left of": "left", "left of": "left", "on the left of": "left", "to the right of": "right",
             "right of": "right", "above": "above", "over": "above", "higher than": "above",
             "below": "below", "under": "below", "beneath": "below"}
_RELATION_CAPTION = re.compile(
    r"^(?:there is )?an? (?:\w+ )?(\w+) (\w+) (" + "|".join(sorted(_RELATION, key=len, reverse=True))
    + r") an? (?:\w+ )?(\w+) (\w+)(?:, and .*)?$")


def _files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_same_seed_writes_byte_identical_files_and_other_seeds_differ(tmp_path):
    first = write_synthetic_dataset(tmp_path / "a", num_images=40, seed=3)
    second = write_synthetic_dataset(tmp_path / "b", num_images=40, seed=3)
    other = write_synthetic_dataset(tmp_path / "c", num_images=40, seed=4)
    assert _files(first) == _files(second)
    assert _files(first)["captions.txt"] != _files(other)["captions.txt"]
    assert len(list((first / "Images").iterdir())) == 40
    # Image i depends only on (seed, i): a smaller set is a prefix of a larger one.
    small = generate_examples(10, seed=3)
    assert [e.captions for e in small] == [e.captions for e in generate_examples(40, seed=3)[:10]]


def test_every_caption_is_true_of_its_scene_and_relations_match_pixels():
    checked_relations = 0
    for example in generate_examples(300, seed=0):
        assert len(example.captions) == 5 and len(set(example.captions)) == 5
        assert all(caption_matches(claim, example.scene) for claim in example.claims)
        pixels = render_scene(example.scene, 96).astype(int)
        by_kind = {(obj.colour, obj.shape): obj for obj in example.scene.objects}
        for obj in example.scene.objects:
            # The object's colour really is drawn at its recorded centre.
            centre = pixels[int(obj.centre_y * 96), int(obj.centre_x * 96)]
            assert np.abs(centre - obj.rgb).max() <= 20
        for caption in example.captions:
            match = _RELATION_CAPTION.match(caption)
            if not match:
                continue
            colour_a, shape_a, relation, colour_b, shape_b = match.groups()
            a = by_kind[(_COLOUR[colour_a], _SHAPE[shape_a])]
            b = by_kind[(_COLOUR[colour_b], _SHAPE[shape_b])]
            dx, dy = (b.centre_x - a.centre_x) * 96, (b.centre_y - a.centre_y) * 96
            expected = {"left": dx > 10, "right": dx < -10, "above": dy > 10, "below": dy < -10}[_RELATION[relation]]
            assert expected, (caption, a, b)
            checked_relations += 1
    assert checked_relations > 200


def test_captions_are_specific_enough_for_retrieval():
    # An ideal model ranks images that fit a caption first; with ties broken at random its
    # Recall@5 is the mean of min(1, 5 / images that fit). Variety must keep that near 1.
    examples = generate_examples(150, seed=1)
    recall = [min(1.0, 5 / sum(caption_matches(claim, other.scene) for other in examples))
              for example in examples for claim in example.claims]
    assert np.mean(recall) > 0.95
    counts = [len(example.scene.objects) for example in examples]
    assert {1, 2, 3} <= set(counts)
    assert any(example.scene.mirror_of is not None for example in generate_examples(300, seed=0))


def test_written_set_reads_back_through_the_kaggle_layout(tmp_path):
    out = write_synthetic_dataset(tmp_path / "synthetic", num_images=60, image_size=48, seed=0)
    assert detect_layout(out) == "kaggle_flickr8k"
    records = read_captioned_images(out)
    assert len(records.images) == 60 and records.skip_report.entries == []
    assert all(len(image.captions) == 5 for image in records.images)
    assert Image.open(records.images[0].image_path).size == (48, 48)
    with open(out / "captions.txt", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "caption"] and len(rows) == 1 + 60 * 5
    examples = generate_examples(60, seed=0)
    assert {image.image_id: image.captions for image in records.images} == {e.name: e.captions for e in examples}


def test_rewrite_is_skipped_when_complete_and_redone_when_not(tmp_path):
    out = write_synthetic_dataset(tmp_path / "set", num_images=20, image_size=32)
    captions_time = (out / "captions.txt").stat().st_mtime_ns
    write_synthetic_dataset(out, num_images=20, image_size=32)
    assert (out / "captions.txt").stat().st_mtime_ns == captions_time
    # Other parameters replace our own earlier set.
    write_synthetic_dataset(out, num_images=25, image_size=32)
    assert len(list((out / "Images").iterdir())) == 25
    # A set without its marker (an interrupted copy) is rebuilt.
    (out / synthetic.MARKER_FILE).write_text("{}", encoding="utf-8")
    (out / "captions.txt").unlink()
    write_synthetic_dataset(out, num_images=25, image_size=32)
    assert (out / "captions.txt").is_file()
    assert not [path for path in tmp_path.iterdir() if ".partial-" in path.name]
    # A folder that is not ours is never overwritten.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(ValueError, match="not a kclip synthetic data set"):
        write_synthetic_dataset(tmp_path / "mine", num_images=5)
    with pytest.raises(ValueError, match="image_size"):
        write_synthetic_dataset(tmp_path / "tiny", num_images=5, image_size=8)
