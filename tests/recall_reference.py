"""Retrieval recall and top-k written out plainly, as the tests' independent expectation.

The CLIP_benchmark protocol (STACK.md): text->image R@k is the mean over captions of [its image
is among the k best-scoring images]; image->text R@k is the mean over images of [any of its
captions is among the k best-scoring captions]. Ties count against the query (a tied wrong
item ranks first), as kclip's own metrics promise.
"""
import numpy as np

KS = (1, 5, 10)


def recall(image_embeddings, text_embeddings, text_to_image, ks=KS) -> dict:
    images = np.asarray(image_embeddings, dtype=np.float64)
    texts = np.asarray(text_embeddings, dtype=np.float64)
    owners = np.asarray(text_to_image)
    scores = texts @ images.T  # (captions, images)
    result = {}
    t2i_ranks = []
    for caption, owner in enumerate(owners):
        true_score = scores[caption, owner]
        others = np.delete(scores[caption], owner)
        t2i_ranks.append(1 + int(np.sum(others >= true_score)))
    i2t_ranks = []
    for image in range(len(images)):
        mine = owners == image
        best_own = scores[mine, image].max()
        i2t_ranks.append(1 + int(np.sum(scores[~mine, image] >= best_own)))
    for k in ks:
        result[f"t2i_r@{k}"] = float(np.mean([rank <= k for rank in t2i_ranks]))
        result[f"i2t_r@{k}"] = float(np.mean([rank <= k for rank in i2t_ranks]))
    result["rsum"] = sum(result[f"{direction}_r@{k}"] for direction in ("t2i", "i2t") for k in ks)
    return result


def top_k(query, rows, k):
    """(indices, scores) of the k rows scoring highest against `query`, best first, lower index on ties."""
    scores = np.asarray(rows, dtype=np.float64) @ np.asarray(query, dtype=np.float64)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return order, [float(scores[i]) for i in order]


def recall_of_saved_model(model_path, images, ks=KS) -> dict:
    """`recall` of the .keras model at `model_path` on a split (a list of CaptionedImage), embedded here."""
    import kclip

    model = kclip.load_model(model_path)
    captions = [caption for image in images for caption in image.captions]
    owners = [number for number, image in enumerate(images) for _ in image.captions]
    return recall(model.encode_image([image.image_path for image in images]), model.encode_text(captions), owners, ks)
