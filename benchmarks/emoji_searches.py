"""The real-picture demo's searches and zero-shot labels, written as the README quotes them.

    python scripts/demo.py --config configs/emoji.yaml          # trains runs/emoji/model.keras first
    python benchmarks/emoji_searches.py --out docs/emoji_searches.json

For each of the config's `demo_queries`: the words no training caption has, and the five held-out
pictures found, by their CLDR names, with scores. Then `kclip.classify` with ten labels used as they
are, on the first held-out picture whose name contains each label (a label no held-out name contains
is left out). Reads the model and the index that scripts/demo.py wrote.
"""

import argparse
import json
import os
import re
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))

import kclip  # noqa: E402
from demo import unseen_words  # noqa: E402
from kclip.data.sources import load_records  # noqa: E402

LABELS = ["cat", "dog", "car", "flag", "heart", "clock", "tree", "fish", "face", "hand"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/emoji.yaml")
    parser.add_argument("--out", default="docs/emoji_searches.json")
    args = parser.parse_args()
    config = kclip.parse_config(["--config", args.config])
    run = config.output_dir
    if not os.path.exists(os.path.join(run, "model.keras")):
        raise SystemExit(f"{run}/model.keras is missing: run `python scripts/demo.py --config {args.config}` first.")
    model = kclip.load_model(os.path.join(run, "model.keras"))
    index = os.path.join(run, "index")
    records = load_records(config.data, run, seed=config.trainer.seed, check_images=False)
    held_out, train_images = records.for_split("test"), records.for_split("train")
    name_of = {os.path.basename(image.image_path): image.captions[0] for image in held_out}

    queries = []
    for query in config.demo_queries:
        results = kclip.search(query, model=model, index=index, top_k=5)
        queries.append({"query": query, "unseen_words": unseen_words(query, train_images),
                        "top5": [[name_of[result.path.name], round(float(result.score), 3)] for result in results]})

    pictures = []
    for label in LABELS:
        image = next((image for image in held_out if label in re.findall(r"\w+", image.captions[0].lower())), None)
        if image is not None:
            pictures.append(image)
    found = kclip.classify([os.path.join(run, "held_out_images", os.path.basename(image.image_path)) for image in pictures],
                           LABELS, model=model, template="{}")
    classify = [{"caption": image.captions[0], "image": os.path.basename(image.image_path),
                 "top3": [[label, round(probability, 3)] for label, probability in result.ranking[:3]]}
                for image, result in zip(pictures, found)]
    with open(args.out, "w") as file:
        json.dump({"queries": queries, "classify": classify}, file, indent=1)
    print(json.dumps({"queries": queries, "classify": classify}, indent=1))


if __name__ == "__main__":
    main()
