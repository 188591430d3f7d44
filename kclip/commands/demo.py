"""A demo: train, index the held-out images, report recall, search.

    kclip demo [--config configs/emoji.yaml] [overrides, e.g. --trainer.max_epochs 5]

The default config is the embedded demo (configs/demo.yaml); its free-text searches
come from the config's `demo_queries`.
"""

import os
import re
import sys
from pathlib import Path

DEFAULT_CONFIG = "configs/demo.yaml"


def default_config():
    """configs/demo.yaml from the working folder, else the one beside the kclip package (a source checkout)."""
    if os.path.isfile(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    beside = Path(__file__).resolve().parents[2] / DEFAULT_CONFIG
    return str(beside) if beside.is_file() else DEFAULT_CONFIG


def split_config_option(argv):
    """(config file, the other arguments): `--config PATH` or `--config=PATH`, default configs/demo.yaml."""
    argv = list(argv)
    for i, argument in enumerate(argv):
        if argument == "--config" and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if argument.startswith("--config="):
            return argument.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return default_config(), argv


def unseen_words(query, train_images):
    """The words of `query` that no training caption contains."""
    seen = {word for image in train_images for caption in image.captions
            for word in re.findall(r"\w+", caption.lower())}
    return [word for word in re.findall(r"\w+", query.lower()) if word not in seen]


def main(argv=None, prog=None):
    """Runs the demo; returns 0. `--help` shows the config's flags (every one can be overridden)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip() + "\n\nEvery config flag can be overridden; they are:\n")
        from kclip.config import build_parser

        parser = build_parser(description=__doc__.split("\n\n")[0])
        parser.prog = prog or parser.prog
        parser.print_help()
        return 0

    import kclip
    from kclip.data.sources import link_split_images, load_records
    from kclip.evaluation.grid import render_grid

    config_path, overrides = split_config_option(argv)
    try:
        config = kclip.parse_config(["--config", config_path, *overrides])
    except ValueError as error:
        sys.exit(f"error: {error}")
    model, _, test_metrics = kclip.train(config)

    # Training has just decoded and checked every image; only the split lists are needed.
    records = load_records(config.data, config.output_dir, seed=config.trainer.seed, check_images=False)
    held_out = link_split_images(records, "test", os.path.join(config.output_dir, "held_out_images"))
    photos = {}
    if config.data.dataset_name == "emoji":
        from kclip.data.emoji import write_sample_photos

        # Real photos indexed beside the held-out emoji: the grid ends with free-text searches for them.
        photos = write_sample_photos(os.path.join(config.output_dir, "held_out_images"))
    index = kclip.build_index(model, os.path.join(config.output_dir, "held_out_images"),
                              os.path.join(config.output_dir, "index"))
    print(f"Indexed {len(index)} held-out images in {config.output_dir}/index")

    # Captions of held-out images have a known answer; free queries show open search.
    samples = [(image.captions[0], path) for path, image in list(held_out.items())[:4]]
    samples += [(query, None) for query in config.demo_queries]
    samples += list(photos.items())
    train_images = records.for_split("train")
    rows = []
    for query, truth in samples:
        results = kclip.search(query, model=model, index=index, top_k=5)
        note = f"  (true image: {truth.name})" if truth else ""
        if truth is None:
            unseen = unseen_words(query, train_images)
            note = f"  (words in no training caption: {', '.join(unseen) or 'none'})"
        print(f"\n{query!r}{note}")
        for result in results:
            mark = "  <- true image" if truth and result.path.name == truth.name else ""
            print(f"  {result.score:.3f}  {result.path.name}{mark}")
        rows.append((query, [(r.path, r.score, None if truth is None else r.path.name == truth.name)
                             for r in results]))
    grid = render_grid(rows, os.path.join(config.output_dir, "search_grid.png"), tile_size=96)
    print(f"\nSearch results grid: {grid}")
    print(f"Test text->image R@5: {test_metrics['t2i_r@5']:.3f}  (model: {config.output_dir}/model.keras)")
    return 0
