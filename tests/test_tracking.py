"""Training-time tracking: recall in the logs, best model, grid picture, W&B offline and off."""

import csv
import glob
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import recall_reference
from helpers import tiny_config

RECALL_KEYS = ["val_t2i_r@1", "val_t2i_r@5", "val_t2i_r@10", "val_i2t_r@1", "val_i2t_r@5", "val_i2t_r@10", "val_rsum"]


def _wandb_env(monkeypatch, tmp_path, mode):
    folders = {name: tmp_path / name.lower() for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
    for name, folder in folders.items():
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return folders


def test_logger_none_recall_best_model_and_grid(tmp_path, monkeypatch, capsys):
    from kclip.evaluation.grid import PADDING, GridLayout
    from kclip.training.run import GRID_MAX_ROWS, train

    folders = _wandb_env(monkeypatch, tmp_path, "offline")  # logger none must win over the environment
    config = tiny_config(tmp_path / "run", tmp_path / "data", max_epochs=3, steps_per_epoch=2,
                         eval_every_n_epochs=2, logger="none")
    config.log_prediction_callback.max_sentences = 4
    config.log_prediction_callback.max_matches = 3
    model, history, test_metrics = train(config, verbose=0)

    # Recall, and fit's own validation loss, every 2 epochs and after the last one; NaN in between,
    # so columns stay aligned.
    for key in [*RECALL_KEYS, "val_loss", "val_t2i_accuracy"]:
        values = history.history[key]
        assert len(values) == 3
        assert math.isnan(values[0]) and all(np.isfinite(values[1:])), key
    # The last evaluation saw the returned (final) weights: recompute its recall independently.
    embeddings, _ = _validation_embeddings(model, config)
    expected = recall_reference.recall(*embeddings)
    for key in RECALL_KEYS:
        assert history.history[key][-1] == pytest.approx(expected[key[len("val_"):]], abs=1e-9), key
    assert "learning_rate" in history.history
    with open(tmp_path / "run" / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert {*RECALL_KEYS, "val_loss"} <= set(rows[0])
    assert rows[0]["val_loss"] == "nan" and float(rows[1]["val_loss"]) > 0

    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["val_rsum"] == max(history.history["val_rsum"][1:])
    assert (tmp_path / "run" / "best.keras").stat().st_size > 0
    assert test_metrics["num_images"] > 0

    # No W&B at all.
    assert not any(folder.exists() for folder in folders.values())
    assert not list(tmp_path.rglob("*wandb*"))
    assert "wandb sync" not in capsys.readouterr().out

    # The grid: one row per query, max_matches tiles per row, the exact documented geometry.
    grid = Image.open(tmp_path / "run" / "retrieval_grid.png").convert("RGB")
    num_rows = min(config.log_prediction_callback.max_sentences, GRID_MAX_ROWS)
    layout = GridLayout(num_rows, 3, 96, 2 * 96)
    assert grid.size == (layout.width, layout.height)
    pixels = np.asarray(grid)
    for row in range(num_rows):
        for column in range(3):
            left, top, right, bottom = layout.tile_box(row, column)
            assert pixels[top:bottom, left:right].std() > 0, f"tile {row},{column} is blank"
    # Nothing right of the last column: exactly 3 tiles per row.
    assert (pixels[:, layout.tile_box(0, 2)[2] + PADDING:] == 255).all()


def _validation_embeddings(model, config):
    """The validation split's (image, text, owner) embeddings, embedded by the model directly."""
    from kclip.data.sources import load_records

    images = load_records(config.data, config.output_dir, seed=config.trainer.seed).for_split("validation")
    owners = [index for index, image in enumerate(images) for _ in image.captions]
    captions = [caption for image in images for caption in image.captions]
    return (model.encode_image([image.image_path for image in images], batch_size=config.data.val_batch_size),
            model.encode_text(captions), np.asarray(owners)), images


def _staged_files(data_dir):
    staged = {}
    for path in glob.glob(str(Path(data_dir) / "artifacts" / "staging" / "*")):
        content = Path(path).read_bytes()
        staged[hashlib.sha256(content).hexdigest()] = content
    return staged


def test_wandb_offline_run_has_metrics_and_retrieval_table(tmp_path, monkeypatch, capsys):
    from kclip.training.run import train

    folders = _wandb_env(monkeypatch, tmp_path, "offline")
    config = tiny_config(tmp_path / "run", tmp_path / "data", max_epochs=2, steps_per_epoch=2,
                         logger="wandb", lr_schedule="cosine", warmup_epochs=0.5)
    config.log_prediction_callback.max_sentences = 4
    config.log_prediction_callback.max_matches = 3
    model, history, _ = train(config, verbose=0)

    output = capsys.readouterr().out
    run_dirs = glob.glob(str(folders["WANDB_DIR"] / "wandb" / "offline-run-*"))
    assert len(run_dirs) == 1
    assert f"wandb sync {run_dirs[0]}" in output
    # Cosine schedule: warmup then decay, below the peak by the end.
    rates = history.history["learning_rate"]
    assert rates[-1] < config.model.head_lr

    # Metrics, config and git commit are in the run's log.
    log = Path(glob.glob(f"{run_dirs[0]}/run-*.wandb")[0]).read_bytes()
    for key in (b"epoch/val_rsum", b"epoch/val_t2i_r@1", b"epoch/learning_rate", b"projection_dims"):
        assert key in log, key

    # The retrieval tables: staged for sync under WANDB_DATA_DIR with every image file they name.
    staged = _staged_files(folders["WANDB_DATA_DIR"])
    tables = [json.loads(content) for content in staged.values() if content.startswith(b"{")]
    tables = [table for table in tables if "columns" in table]
    predictions = [table for table in tables if "match_1" in table["columns"]]
    assert predictions, [table["columns"] for table in tables]
    for table in predictions:
        columns = table["columns"]
        assert {"caption", "true_image", "result", "true_rank", "top_matches", "match_3", "score_3"} <= set(columns)
        assert len(table["data"]) == 4
        for row in table["data"]:
            values = dict(zip(columns, row))
            rank = values["true_rank"]
            assert values["result"] == (f"hit @{rank}" if rank <= 3 else f"miss (rank {rank})")
            assert values["score_1"] >= values["score_2"] >= values["score_3"]
            images = [value for value in row if isinstance(value, dict) and value.get("_type") == "image-file"]
            assert len(images) == 5  # true image, strip, 3 matches
            for image in images:
                assert image["sha256"] in staged, f"missing image file {image['path']}"
    data_tables = [table for table in tables if table["columns"][:2] == ["image_index", "image"]]
    assert data_tables and len(data_tables[0]["data"]) > 0

    # The last epoch's rows against an independent top-k of the returned (final) model's embeddings.
    (image_embeddings, _, owners), images = _validation_embeddings(model, config)
    index_of = {row[1]["sha256"]: row[0] for row in data_tables[0]["data"]}
    assert len(index_of) == len(images)  # every thumbnail names one image
    last = [table for table in predictions if table["data"][0][0] == config.trainer.max_epochs]
    assert len(last) >= 1
    for row in last[0]["data"]:
        values = dict(zip(last[0]["columns"], row))
        query = model.encode_text([values["caption"]])[0]
        want_indices, want_scores = recall_reference.top_k(query, image_embeddings, 3)
        got_indices = [index_of[values[f"match_{k}"]["sha256"]] for k in (1, 2, 3)]
        assert got_indices == want_indices, values["caption"]
        assert [values[f"score_{k}"] for k in (1, 2, 3)] == pytest.approx(want_scores, abs=2e-4)
        true_image = index_of[values["true_image"]["sha256"]]
        assert values["caption"] in images[true_image].captions
        all_scores = image_embeddings.astype(np.float64) @ query.astype(np.float64)
        others = np.delete(all_scores, true_image)
        assert values["true_rank"] == 1 + int(np.sum(others >= all_scores[true_image]))
    # Run media (the workspace table and the test grid) are in the run folder.
    assert glob.glob(f"{run_dirs[0]}/files/media/table/val_retrieval_*.table.json")
    assert glob.glob(f"{run_dirs[0]}/files/media/images/test/retrieval_grid_*.png")


def test_warmup_cosine_curve():
    from kclip.training.callbacks import warmup_cosine

    assert warmup_cosine(0.5, 1.0, 1.0, 10) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 1.0, 1.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(5.5, 1.0, 1.0, 10) == pytest.approx(0.5)
    assert warmup_cosine(10, 1.0, 1.0, 10) == pytest.approx(0.0)
    assert warmup_cosine(3, 1.0, 2.0, 2) == pytest.approx(1.0)
    assert warmup_cosine(0.5, 2.0, 0.0, 1) == pytest.approx(1.0)


def test_wandb_mode_offline_without_login(monkeypatch, tmp_path):
    from kclip.training.tracking import wandb_mode

    _wandb_env(monkeypatch, tmp_path, "offline")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_validation_epochs_follow_the_recall_cadence():
    from kclip.training.run import validation_epochs

    assert validation_epochs(2, 5) == [2, 4, 5]
    assert validation_epochs(1, 3) == [1, 2, 3]
    assert validation_epochs(6, 6) == [6]
    assert validation_epochs(10, 3) == [3]


def test_a_split_embedded_from_its_tokenized_captions_matches_tokenizing_anew(tmp_path):
    # The recall callback tokenizes the validation captions once and reuses them every evaluation.
    from helpers import tiny_model
    from kclip.data.sources import load_records
    from kclip.evaluation.evaluate import embed_split, tokenize_split

    config = tiny_config(tmp_path / "run", tmp_path / "data")
    images = load_records(config.data, config.output_dir, seed=0).for_split("validation")
    model = tiny_model()
    plain = embed_split(model, images, batch_size=2)
    tokenized = tokenize_split(model, images, batch_size=2)
    assert len(tokenized) > 1  # several batches of 8 captions
    for _ in range(2):
        reused = embed_split(model, images, batch_size=2, tokenized=tokenized)
        for want, got in zip(plain, reused):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="tokenize_split with the same images"):
        embed_split(model, images, batch_size=2, tokenized=tokenize_split(model, images[:1], batch_size=2))
