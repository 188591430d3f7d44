"""Retrieval recall of a trained model on one split, as a table and JSON, and optionally a picture.

    kclip evaluate --model runs/demo/model.keras --config configs/demo.yaml \\
        [--split test] [--json out.json] [--grid out.png] [--data.dir ...]

The split is the one training used: the same data config gives the same split. Other dotted
options (--data.dir, --data.val_batch_size, ...) override the config as in `kclip train`.
"""

import argparse
import sys
from pathlib import Path

SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def parse_arguments(argv=None, prog=None):
    """(this command's arguments, the config overrides left over)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--model", required=True, help="A .keras file written by kclip.")
    parser.add_argument("--config", required=True, help="The YAML config the model was trained with.")
    parser.add_argument("--split", default="test", choices=sorted(SPLITS))
    parser.add_argument("--json", help="Where to write the metrics (default: next to the model, SPLIT_metrics.json).")
    parser.add_argument("--grid", help="Also write a PNG of query captions and their top images here.")
    parser.add_argument("--grid_rows", type=int, default=None, help="Queries in the grid (default: log_prediction_callback.max_sentences, at most 12).")
    parser.add_argument("--grid_columns", type=int, default=None, help="Images per query (default: log_prediction_callback.max_matches).")
    parser.add_argument("--batch_size", type=int, default=None, help="Images per batch (default: data.val_batch_size).")
    return parser.parse_known_args(argv)


def main(argv=None, prog=None):
    arguments, overrides = parse_arguments(argv, prog=prog)
    from kclip import load_model
    from kclip.config import parse_config
    from kclip.data.sources import load_records
    from kclip.evaluation.evaluate import evaluate, format_metrics_table, write_grid
    from kclip.training.run import GRID_MAX_ROWS
    from kclip.utils.files import write_json

    try:
        config = parse_config(["--config", arguments.config, *overrides])
    except ValueError as error:
        sys.exit(f"error: {error}")
    model_path = Path(arguments.model)
    if not model_path.is_file():
        sys.exit(f"error: no model file at {model_path}")
    split = SPLITS[arguments.split]
    records = load_records(config.data, model_path.parent, seed=config.trainer.seed)
    images = records.for_split(split)
    if not images:
        sys.exit(f"error: the {split} split is empty ({records.summary()})")

    model = load_model(model_path)
    batch_size = arguments.batch_size or config.data.val_batch_size
    metrics, embeddings = evaluate(model, images, batch_size=batch_size, return_embeddings=True)
    metrics["split"] = split
    metrics["model"] = str(model_path)
    print(f"{split} split of {records.summary()}")
    print(format_metrics_table(metrics))

    json_path = Path(arguments.json) if arguments.json else model_path.parent / f"{split}_metrics.json"
    write_json(json_path, metrics)
    print(f"Wrote {json_path}")
    if arguments.grid:
        rows = arguments.grid_rows or min(config.log_prediction_callback.max_sentences, GRID_MAX_ROWS)
        columns = arguments.grid_columns or config.log_prediction_callback.max_matches
        print(f"Wrote {write_grid(images, embeddings, arguments.grid, num_queries=rows, k=columns)}")
    return metrics
