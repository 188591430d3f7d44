"""Run by tests/test_no_tensorflow.py in a process where TensorFlow is unimportable
(tests/no_tensorflow_site): trains one tiny epoch, exports, indexes and searches, then prints
one JSON line of what it saw for the test to check."""

import json
import sys
from pathlib import Path

import numpy as np

import kclip
from helpers import tiny_config
from kclip.data.pipeline import resolve_loader
from kclip.index.index import Index


def main(work):
    work = Path(work)
    config = tiny_config(work / "run", work / "data", max_epochs=1)
    config.data.loader_workers = 2
    model, history, test_metrics = kclip.train(config, verbose=0)
    reloaded = kclip.load_model(work / "run" / "model.keras")
    images = sorted((work / "data" / "Images").glob("*.jpg"))[:24]
    folder = work / "to_index"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    index = kclip.build_index(reloaded, folder, work / "index", progress=False)
    query = "a red circle"
    results = kclip.search(query, model=reloaded, index=Index.load(work / "index"), top_k=3)
    # Brute force over the files, for the test to compare the index's answer with.
    files = sorted(folder.iterdir())
    scores = reloaded.encode_image(files) @ reloaded.encode_text([query])[0]
    print(json.dumps({
        "loader": resolve_loader("auto"),
        "tensorflow_loaded": sorted(name for name in sys.modules if name.startswith("tensorflow")),
        "epochs": len(history.history["loss"]),
        "loss": [float(value) for value in history.history["loss"]],
        "val_loss": [float(value) for value in history.history.get("val_loss", [])],
        "test_metrics": test_metrics,
        "model_file": (work / "run" / "model.keras").is_file(),
        "index_size": len(index),
        "files": len(files),
        "results": [result.path.name for result in results],
        "brute_force": [files[i].name for i in np.argsort(-scores, kind="stable")[:3]],
        "same_embeddings": bool(np.array_equal(model.encode_text([query]), reloaded.encode_text([query]))),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
