"""The real-picture demo's data: Noto Color Emoji named by Unicode CLDR (Debian packages)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kclip.data import emoji
from kclip.data.layouts import read_captioned_images

pytestmark = pytest.mark.skipif(
    not (Path(emoji.FONT_PATH).is_file() and Path(emoji.CLDR_DIR).is_dir()),
    reason=f"the real-picture demo's system packages are missing ({emoji.FONT_PATH}, {emoji.CLDR_DIR}): "
    "run `sudo bash scripts/system_packages.sh` (or sudo apt-get install fonts-noto-color-emoji unicode-cldr-core); "
    "a CI run (KCLIP_STRICT_SKIPS=1) fails on this skip",
)


def test_cldr_names_and_keywords():
    annotations = emoji.read_cldr_annotations()
    name, keywords = annotations["\U0001F600"]
    assert name == "grinning face"
    assert {"face", "grin"} <= set(keywords)
    # Derived annotations add skin-tone sequences.
    assert annotations["\U0001F44B\U0001F3FD"][0] == "waving hand: medium skin tone"
    assert emoji.emoji_captions("grinning face", ["face", "grin", "grinning face"]) == [
        "grinning face", "grinning face: face, grin"]


def test_renderer_draws_emoji_and_skips_what_the_font_lacks():
    renderer = emoji.EmojiRenderer(image_size=48)
    picture = np.asarray(renderer.render("\U0001F600"))
    assert picture.shape == (48, 48, 3)
    # The grinning face is mostly yellow: strong red and green, little blue.
    yellow = (picture[..., 0] > 180) & (picture[..., 1] > 150) & (picture[..., 2] < 100)
    assert yellow.mean() > 0.3
    assert renderer.render("\U000E0001") is None  # a tag character: no glyph


def test_missing_packages_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
        emoji.EmojiRenderer(font_path=tmp_path / "none.ttf")
    with pytest.raises(FileNotFoundError, match="unicode-cldr-core"):
        emoji.read_cldr_annotations(cldr_dir=tmp_path)


def test_written_set_reads_as_a_captioned_image_folder(tmp_path):
    folder = emoji.write_emoji_dataset(tmp_path / "emoji", image_size=32, max_images=12)
    records = read_captioned_images(folder, split_fractions=[0.5, 0.25, 0.25])
    images = [image for split in ("train", "validation", "test") for image in records.for_split(split)]
    assert len(images) == 12
    for image in images:
        assert Image.open(image.image_path).size == (32, 32)
        assert image.captions and all(caption.strip() for caption in image.captions)
    marker = folder / emoji.MARKER_FILE
    stamp = marker.stat().st_mtime_ns
    assert emoji.write_emoji_dataset(folder, image_size=32, max_images=12) == folder
    assert marker.stat().st_mtime_ns == stamp  # the second call reuses the set
    with pytest.raises(ValueError, match="not a kclip emoji data set"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
        emoji.write_emoji_dataset(tmp_path / "mine")


def test_emoji_demo_queries_use_words_no_caption_has():
    import re

    from kclip.config import parse_config

    config = parse_config(["--config", str(Path(__file__).resolve().parent.parent / "configs" / "emoji.yaml")])
    assert config.data.dataset_name == "emoji" and config.model.text_encoder == "all_minilm_l6_v2_en"
    words = {word for name, keywords in emoji.read_cldr_annotations().values()
             for caption in emoji.emoji_captions(name, keywords) for word in re.findall(r"\w+", caption.lower())}
    assert len(config.demo_queries) >= 6
    for query in config.demo_queries:
        # Not one caption of the whole set (training or held-out) uses these words.
        assert not set(re.findall(r"\w+", query.lower())) & words, query
