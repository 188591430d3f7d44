"""A W&B retrieval table: validation captions, the images the model finds for them, hit or miss.

Built on `wandb.integration.keras.WandbEvalCallback`: the validation images are logged once, as
thumbnails, in a data table; each evaluated epoch's prediction table refers to them instead of
uploading them again. Each row is one query caption with:
- its true image and whether that image is in the top `max_matches` ("hit @r" or "miss (rank r)");
- a strip picture of the top matches, the true image outlined in green (kclip.evaluation.grid.render_grid);
- each match as an image, with its score.
The prediction table is also logged to the run's history, so it shows in the run's workspace.
Offline (where `use_artifact` is not allowed) the data table is logged with `log_artifact`.
"""

import tempfile
from pathlib import Path

import numpy as np
import wandb
from PIL import Image
from wandb.integration.keras import WandbEvalCallback

from kclip.evaluation.evaluate import choose_queries, query_matches
from kclip.evaluation.grid import render_grid
from kclip.data.image_io import ImageLoadError, load_image

THUMBNAIL_SIDE = 128
STRIP_TILE = 64


def _thumbnail(path, side=THUMBNAIL_SIDE):
    try:
        return load_image(path, max_side=side)
    except (ImageLoadError, OSError):
        return np.full((side, side, 3), 200, dtype=np.uint8)


class RetrievalTableCallback(WandbEvalCallback):
    """Logs a retrieval table on every epoch that `recall` (a `RecallCallback`) evaluated.

    It reuses the recall callback's embeddings, so it costs no extra forward pass; it must come
    after that callback in the list.
    """

    def __init__(self, recall, max_sentences=20, max_matches=5, table_key="val_retrieval"):
        self.recall = recall
        self.max_matches = max(1, min(int(max_matches), len(recall.images)))
        self.table_key = table_key
        self.captions = [caption for image in recall.images for caption in image.captions]
        self.caption_owner = [i for i, image in enumerate(recall.images) for _ in image.captions]
        self.queries = choose_queries(recall.images, max_sentences)
        match_columns = [column for k in range(1, self.max_matches + 1) for column in (f"match_{k}", f"score_{k}")]
        super().__init__(
            data_table_columns=["image_index", "image", "captions"],
            pred_table_columns=["epoch", "query", "caption", "true_image", "result", "true_rank",
                                "top_matches", *match_columns],
        )
        self._strip_dir = None

    # --- WandbEvalCallback -----------------------------------------------------

    def add_ground_truth(self, logs=None):
        for index, image in enumerate(self.recall.images):
            self.data_table.add_data(index, wandb.Image(_thumbnail(image.image_path)), " | ".join(image.captions))

    def log_data_table(self, name="val", type="dataset", table_name="val_data"):
        if not wandb.run.offline:
            return super().log_data_table(name=name, type=type, table_name=table_name)
        # Offline, use_artifact raises: log the table (synced later) and refer to it in memory.
        artifact = wandb.Artifact(name, type=type)
        artifact.add(self.data_table, table_name)
        wandb.run.log_artifact(artifact)
        self.data_table_ref = self.data_table
        return None

    def on_epoch_end(self, epoch, logs=None):
        if self.recall.evaluated_epoch != epoch or self.recall.embeddings is None:
            return  # not an evaluation epoch
        super().on_epoch_end(epoch, logs)

    def add_model_predictions(self, epoch, logs=None):
        reference = self.data_table_ref.data
        matches = query_matches(self.recall.embeddings, self.queries, self.max_matches)
        for query, (true_image, indices, scores, rank) in zip(self.queries, matches):
            result = f"hit @{rank}" if rank <= self.max_matches else f"miss (rank {rank})"
            cells = []
            for index, score in zip(indices, scores):
                cells += [reference[index][1], round(float(score), 4)]
            self.pred_table.add_data(
                epoch + 1, query, self.captions[query], reference[true_image][1], result, rank,
                wandb.Image(self._strip(query, true_image, indices, scores), caption=result), *cells,
            )

    def log_pred_table(self, type="evaluation", table_name="eval_data", aliases=None):
        super().log_pred_table(type=type, table_name=table_name, aliases=aliases)
        # In the run's history too, committed with the epoch's metrics by WandbMetricsLogger.
        wandb.log({self.table_key: self.pred_table}, commit=False)

    # --- Pictures ----------------------------------------------------------------

    def _strip(self, query, true_image, indices, scores):
        """One grid row: the caption, then the top matches, the true image outlined."""
        if self._strip_dir is None:
            self._strip_dir = tempfile.TemporaryDirectory(prefix="kclip-strips-")
        images = self.recall.images
        row = (self.captions[query], [(images[i].image_path, s, i == true_image) for i, s in zip(indices, scores)])
        path = render_grid([row], Path(self._strip_dir.name) / f"{query}.png", tile_size=STRIP_TILE)
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))

    def on_train_end(self, logs=None):
        if self._strip_dir is not None:
            self._strip_dir.cleanup()
            self._strip_dir = None
