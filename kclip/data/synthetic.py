"""An embedded, procedurally drawn caption data set, for demos and tests that cannot download Flickr.

Each image shows 1-3 coloured shapes on a grey background, and gets several captions in varied
wording ("a small red circle to the left of a big blue square", "blue box, red disc on its
left", "two shapes: ..."), some mentioning only part of the scene. Every caption is generated from
a structured claim (`Claim`) about the scene, and `caption_matches` checks a claim against any
scene, so tests can prove captions true and measure how many images each caption fits.

Design, so that a tiny model on a 2-core CPU can learn retrieval in minutes yet must learn colour,
shape and spatial relations to do it:
- 8 colours x 4 shapes x 2 sizes, placed in distinct cells of a 3x3 grid; relations ("left of",
  "above") and positions ("top left") come from the cells, so they are unambiguous in pixels.
- Full captions fit about one image in 500; partial ones still name position or count, so few
  captions fit more than a handful of images.
- A fraction of scenes are mirror images of their predecessor: the same objects with left and
  right swapped, so only a model that reads relations can tell the pair apart.
Generation is deterministic: image i depends only on (seed, i), so a smaller set is a prefix of a
larger one, and the same seed writes byte-identical files.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kclip.utils.files import commit_directory, temporary_directory

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230), "yellow": (240, 215, 30),
    "purple": (150, 60, 190), "orange": (250, 140, 20), "white": (245, 245, 245), "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 0.075, "large": 0.125}  # radius as a fraction of the image side
_COLOUR_WORDS = {name: [name] for name in COLOURS} | {"purple": ["purple", "violet"]}
_SHAPE_WORDS = {"circle": ["circle", "disc"], "square": ["square", "box"], "triangle": ["triangle"], "star": ["star"]}
_SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big"]}
_RELATION_WORDS = {
    "left": ["to the left of", "left of", "on the left of"], "right": ["to the right of", "right of"],
    "above": ["above", "over", "higher than"], "below": ["below", "under", "beneath"],
}
_RELATIVE_TO_IT = {"left": "on its left", "right": "on its right", "above": "above it", "below": "below it"}
_OBJECT_COUNT_WEIGHTS = {1: 0.2, 2: 0.45, 3: 0.35}
_MIRROR_FRACTION = 0.1
_VERSION = 1  # bump when the drawing or captions change, so cached folders are rebuilt
MARKER_FILE = ".kclip_synthetic.json"


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    row: int  # grid cell: row 0 is the top, column 0 the left
    col: int
    centre_x: float  # fractions of the image side, so scenes render at any size
    centre_y: float
    angle: float  # degrees; small, so squares never turn into diamonds
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: int  # grey level
    noise: float  # standard deviation of the background noise, in grey levels
    noise_seed: int
    mirror_of: int | None = None  # index of the scene this one mirrors left-right


@dataclass(frozen=True)
class Mention:
    """An object as a caption describes it; None means the caption does not say."""

    colour: str
    shape: str
    size: str | None = None
    row: int | None = None
    col: int | None = None


@dataclass(frozen=True)
class Claim:
    """Everything a caption asserts: objects, relations between them ((i, "left", j) means
    mention i is left of mention j) and, optionally, how many shapes there are in total."""

    mentions: tuple[Mention, ...]
    relations: tuple[tuple[int, str, int], ...] = ()
    count: int | None = None


@dataclass
class SyntheticExample:
    name: str
    scene: Scene
    captions: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)


def _relation_holds(first: SceneObject, relation: str, second: SceneObject) -> bool:
    return {"left": first.col < second.col, "right": first.col > second.col,
            "above": first.row < second.row, "below": first.row > second.row}[relation]


def caption_matches(claim: Claim, scene: Scene) -> bool:
    """True when `claim` is true of `scene` (some distinct objects fit the mentions and relations)."""
    if claim.count is not None and claim.count != len(scene.objects):
        return False
    for chosen in itertools.permutations(scene.objects, len(claim.mentions)):
        fits = all(
            obj.colour == m.colour and obj.shape == m.shape and m.size in (None, obj.size)
            and m.row in (None, obj.row) and m.col in (None, obj.col)
            for obj, m in zip(chosen, claim.mentions)
        )
        if fits and all(_relation_holds(chosen[i], relation, chosen[j]) for i, relation, j in claim.relations):
            return True
    return False


def _make_scene(rng: np.random.Generator) -> Scene:
    count = int(rng.choice(list(_OBJECT_COUNT_WEIGHTS), p=list(_OBJECT_COUNT_WEIGHTS.values())))
    cells = rng.choice(9, size=count, replace=False)
    # Distinct (colour, shape) pairs, so every mention names exactly one object of its scene.
    kinds = rng.choice(len(COLOURS) * len(SHAPES), size=count, replace=False)
    objects = []
    for cell, kind in zip(cells, kinds):
        colour, shape = list(COLOURS)[kind // len(SHAPES)], SHAPES[kind % len(SHAPES)]
        size = "small" if rng.random() < 0.5 else "large"
        # Stay inside the cell: a star's points reach 1.2 radii from its centre.
        slack = 1 / 6 - 1.2 * SIZES[size] - 0.01
        row, col = int(cell) // 3, int(cell) % 3
        x, y = (col + 0.5) / 3 + rng.uniform(-slack, slack), (row + 0.5) / 3 + rng.uniform(-slack, slack)
        jitter = rng.integers(-12, 13, size=3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
        objects.append(SceneObject(colour, shape, size, row, col, float(x), float(y), float(rng.uniform(-12, 12)), rgb))
    noise = 0.0 if rng.random() < 0.5 else float(rng.uniform(1.5, 4.0))
    return Scene(tuple(objects), int(rng.integers(95, 166)), noise, int(rng.integers(2**31)))


def _mirror(scene: Scene, index: int, rng: np.random.Generator) -> Scene:
    objects = tuple(replace(obj, col=2 - obj.col, centre_x=1 - obj.centre_x, angle=-obj.angle) for obj in scene.objects)
    return Scene(objects, scene.background, scene.noise, int(rng.integers(2**31)), mirror_of=index)


def render_scene(scene: Scene, image_size: int = 96) -> np.ndarray:
    """Draw `scene` as an (image_size, image_size, 3) uint8 array."""
    supersample = 2  # draw at twice the size and shrink, which anti-aliases the edges cheaply
    side = image_size * supersample
    image = Image.new("RGB", (side, side), (scene.background,) * 3)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy, radius = obj.centre_x * side, obj.centre_y * side, SIZES[obj.size] * side
        if obj.shape == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=obj.rgb)
            continue
        if obj.shape == "square":
            corners = [(radius * 1.25, a) for a in (45, 135, 225, 315)]
        elif obj.shape == "triangle":
            corners = [(radius * 1.2, a) for a in (-90, 30, 150)]
        else:  # star: alternate outer and inner points
            corners = [(radius * (1.2 if k % 2 == 0 else 0.5), -90 + 36 * k) for k in range(10)]
        draw.polygon([(cx + r * np.cos(np.radians(a + obj.angle)), cy + r * np.sin(np.radians(a + obj.angle)))
                      for r, a in corners], fill=obj.rgb)
    pixels = np.asarray(image.reduce(supersample), dtype=np.float32)
    if scene.noise > 0:
        noise = np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise, size=pixels.shape[:2])
        pixels = pixels + noise[:, :, None]
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


class _Captioner:
    """Turns a scene into (caption, claim) pairs; all random choices come from one generator."""

    _POSITION = {(0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
                 (1, 0): "on the left", (1, 1): "in the centre", (1, 2): "on the right",
                 (2, 0): "in the bottom left corner", (2, 1): "at the bottom", (2, 2): "in the bottom right corner"}
    _ROW_ONLY = {0: "near the top", 2: "near the bottom"}
    _COL_ONLY = {0: "on the left side", 2: "on the right side"}

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def phrase(self, obj: SceneObject, with_size: bool, article: bool = True) -> tuple[str, Mention]:
        words = [self.pick(_SIZE_WORDS[obj.size])] if with_size else []
        words += [self.pick(_COLOUR_WORDS[obj.colour]), self.pick(_SHAPE_WORDS[obj.shape])]
        text = " ".join(words)
        if article:
            text = ("an " if text[0] in "aeiou" else "a ") + text
        return text, Mention(obj.colour, obj.shape, obj.size if with_size else None)

    def position(self, obj: SceneObject, mention: Mention) -> tuple[str, Mention]:
        """A true position phrase: the exact cell, or only its row or column when that is an edge."""
        options = [(self._POSITION[(obj.row, obj.col)], obj.row, obj.col)]
        if obj.row != 1 and obj.col != 1:
            options += [(self._ROW_ONLY[obj.row], obj.row, None), (self._COL_ONLY[obj.col], None, obj.col)]
        text, row, col = self.pick(options)
        return text, replace(mention, row=row, col=col)

    def relation(self, first: SceneObject, second: SceneObject) -> str:
        return self.pick([r for r in _RELATION_WORDS if _relation_holds(first, r, second)])

    def single(self, obj: SceneObject, count: int | None, template: int) -> tuple[str, Claim]:
        described, mention = self.phrase(obj, with_size=template != 1)
        where, placed = self.position(obj, mention)
        bare = described.split(" ", 1)[1]
        texts = [f"{described} {where}", f"a single {bare} {where}", f"one {bare}, {where}",
                 f"{described} alone on a grey background", f"only one shape: {described}", f"{bare} {where}"]
        text = texts[template]
        unplaced = template in (3, 4)
        if template in (1, 2, 3, 4):
            count = 1
        return text, Claim((mention if unplaced else placed,), (), count)

    def pair(self, a: SceneObject, b: SceneObject, template: int, count: int | None) -> tuple[str, Claim]:
        sized = [self.rng.random() < 0.7, self.rng.random() < 0.7]
        (a_text, a_mention), (b_text, b_mention) = self.phrase(a, sized[0]), self.phrase(b, sized[1])
        relation = self.relation(a, b)
        words = self.pick(_RELATION_WORDS[relation])
        a_short, b_short = a_text.split(" ", 1)[1], b_text.split(" ", 1)[1]
        related = ((0, relation, 1),)
        if template == 0:
            return f"{a_text} {words} {b_text}", Claim((a_mention, b_mention), related, count)
        if template == 1:
            return f"{b_short}, {a_short} {_RELATIVE_TO_IT[relation]}", Claim((b_mention, a_mention), ((1, relation, 0),), count)
        if template == 2:
            return f"{b_text} with {a_text} {_RELATIVE_TO_IT[relation]}", Claim((b_mention, a_mention), ((1, relation, 0),), count)
        if template == 3:
            return f"there is {a_text} {words} {b_text}", Claim((a_mention, b_mention), related, count)
        return f"{a_text} and {b_text}", Claim((a_mention, b_mention), (), count)

    def caption(self, scene: Scene, template: int) -> tuple[str, Claim]:
        objects = list(scene.objects)
        order = [objects[i] for i in self.rng.permutation(len(objects))]
        if len(objects) == 1:
            return self.single(objects[0], 1, template % 6)
        if template == 5:  # partial: one object and where it is
            return self.single(order[0], None, self.pick([0, 5]))
        text, claim = self.pair(order[0], order[1], template, None)
        if len(objects) == 2:
            if template == 4:
                return f"two shapes: {text}", replace(claim, count=2)
            return text, claim
        third, third_mention = self.phrase(order[2], self.rng.random() < 0.7)
        if template == 4:
            first, second = text.split(" and ", 1)
            return f"three shapes: {first}, {second} and {third}", Claim(claim.mentions + (third_mention,), (), 3)
        if template in (0, 3):
            return f"{text}, and {third}", Claim(claim.mentions + (third_mention,), claim.relations, None)
        return text, claim  # partial: two of the three objects


def _make_example(seed: int, index: int, captions_per_image: int, previous: Scene | None) -> SyntheticExample:
    rng = np.random.default_rng([seed, index])
    mirrorable = previous is not None and previous.mirror_of is None and len({o.col for o in previous.objects}) > 1
    if mirrorable and rng.random() < _MIRROR_FRACTION:
        scene = _mirror(previous, index - 1, rng)
    else:
        scene = _make_scene(rng)
    example = SyntheticExample(f"synthetic_{index:06d}.jpg", scene)
    captioner = _Captioner(rng)
    templates = list(rng.permutation(6))
    attempts = 0
    while len(example.captions) < captions_per_image:
        text, claim = captioner.caption(scene, int(templates[attempts % 6]))
        attempts += 1
        if text not in example.captions or attempts > 60:
            example.captions.append(text)
            example.claims.append(claim)
    return example


def generate_examples(num_images: int, seed: int = 0, captions_per_image: int = 5) -> list[SyntheticExample]:
    """Scenes with their captions and claims, without drawing them."""
    if num_images < 1 or captions_per_image < 1:
        raise ValueError(f"num_images and captions_per_image must be positive, got {num_images}, {captions_per_image}.")
    examples: list[SyntheticExample] = []
    for index in range(num_images):
        previous = examples[-1].scene if examples else None
        examples.append(_make_example(seed, index, captions_per_image, previous))
    return examples


def write_synthetic_dataset(out_dir: str | os.PathLike, num_images: int = 3000, image_size: int = 96,
                            seed: int = 0, captions_per_image: int = 5) -> Path:
    """Write the data set in the Kaggle Flickr8k layout (Images/*.jpg + captions.txt); return out_dir.

    Cheap when `out_dir` already holds a complete set made with the same parameters (a marker file
    records them). The set is built in a temporary sibling folder, fsync'ed and renamed into place
    (kclip.utils.files.commit_directory), so an interrupted write leaves no half-finished folder that
    would be mistaken for a complete one.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels to draw shapes, got {image_size}.")
    out_dir = Path(out_dir)
    parameters = {"version": _VERSION, "num_images": num_images, "image_size": image_size,
                  "seed": seed, "captions_per_image": captions_per_image}
    if _is_complete(out_dir, parameters):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER_FILE).is_file():
        raise ValueError(f"{out_dir} exists and is not a kclip synthetic data set; choose an empty or new "
                         "folder so that nothing of yours is overwritten.")
    examples = generate_examples(num_images, seed, captions_per_image)
    building = temporary_directory(out_dir)
    try:
        _write_files(building, examples, image_size, parameters)
        if _is_complete(out_dir, parameters):  # another process finished the same set meanwhile
            return out_dir
        commit_directory(building, out_dir)  # an earlier set of ours with other parameters is replaced
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out_dir


def _write_files(building: Path, examples: list, image_size: int, parameters: dict) -> None:
    # Plain writes: the folder is private until commit_directory fsyncs it and renames it into place.
    (building / "Images").mkdir(parents=True)
    for example in examples:
        buffer = io.BytesIO()
        Image.fromarray(render_scene(example.scene, image_size)).save(buffer, format="JPEG", quality=95)
        (building / "Images" / example.name).write_bytes(buffer.getvalue())
    with open(building / "captions.txt", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows((example.name, caption) for example in examples for caption in example.captions)
    with open(building / "scenes.jsonl", "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps({"image": example.name, "scene": asdict(example.scene),
                                     "claims": [asdict(claim) for claim in example.claims]}) + "\n")
    (building / MARKER_FILE).write_text(json.dumps(parameters, sort_keys=True), encoding="utf-8")


def _is_complete(out_dir: Path, parameters: dict) -> bool:
    try:
        recorded = json.loads((out_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == parameters and (out_dir / "captions.txt").is_file()
