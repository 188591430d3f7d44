import numpy as np
import pytest
from keras import ops

from kclip.models import losses

# Also run on JAX and TensorFlow by .ci/run (KCLIP_TEST_BACKEND).
pytestmark = pytest.mark.backend_neutral


def unit_rows(array):
    array = np.asarray(array, dtype="float64")
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


IMAGES = unit_rows([[1.0, 0.0, 0.2], [0.1, 1.0, 0.0], [0.3, 0.2, 1.0]])
TEXTS = unit_rows([[0.9, 0.1, 0.0], [0.0, 0.8, 0.4], [0.5, 0.0, 0.7]])


def test_clip_loss_matches_hand_computation_for_distinct_images():
    scale = 1 / 0.07
    logits = scale * TEXTS @ IMAGES.T
    # One-hot targets: caption i belongs to image i.
    text_to_image = -np.mean(np.diag(log_softmax(logits)))
    image_to_text = -np.mean(np.diag(log_softmax(logits.T)))
    expected = (text_to_image + image_to_text) / 2
    loss = losses.clip_loss(ops.convert_to_tensor(logits.astype("float32")), np.array([0, 1, 2]))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_clip_loss_counts_captions_of_the_same_image_as_positives():
    logits = np.array([[2.0, 1.0, 0.0], [1.5, 0.2, 0.5], [0.1, 0.3, 3.0]])
    image_ids = np.array([7, 7, 9])  # rows 0 and 1 show the same image
    targets = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    text_to_image = -np.mean(np.sum(targets * log_softmax(logits), axis=1))
    image_to_text = -np.mean(np.sum(targets * log_softmax(logits.T), axis=1))
    loss = losses.clip_loss(logits.astype("float32"), image_ids)
    assert float(loss) == pytest.approx((text_to_image + image_to_text) / 2, rel=1e-5)
    # With distinct ids the same logits give a different (one-hot) loss.
    assert float(losses.clip_loss(logits.astype("float32"), np.array([0, 1, 2]))) != pytest.approx(
        float(loss), rel=1e-3
    )


def seed_soft_targets_loss(images, texts, temperature):
    """The keras-io dual encoder's loss, written out in numpy from its text:
    logits = texts @ images.T / T; targets = softmax((images_sim + texts_sim) / (2 * T))."""
    logits = texts @ images.T / temperature
    similarity = (images @ images.T + texts @ texts.T) / (2 * temperature)
    targets = np.exp(similarity) / np.exp(similarity).sum(axis=1, keepdims=True)
    texts_loss = np.mean(-(targets * log_softmax(logits)).sum(axis=1))
    images_loss = np.mean(-(targets.T * log_softmax(logits.T)).sum(axis=1))
    return (texts_loss + images_loss) / 2


@pytest.mark.parametrize("temperature", [1.0, 0.05, 0.5, 2.0])
def test_soft_targets_loss_matches_the_seed_formula(temperature):
    expected = seed_soft_targets_loss(IMAGES, TEXTS, temperature)
    loss = losses.soft_targets_loss(IMAGES.astype("float32"), TEXTS.astype("float32"), temperature)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    via_name = losses.contrastive_loss(
        "soft_targets", {"image_embeddings": IMAGES.astype("float32"), "text_embeddings": TEXTS.astype("float32")},
        np.arange(3), temperature)
    assert float(via_name) == pytest.approx(expected, rel=1e-5)


def test_soft_targets_temperature_divides_the_targets_similarity():
    # At T != 1, "/ 2 * T" (the old code) and "/ (2 * T)" give different losses: the test above would catch it.
    temperature = 0.5
    logits = TEXTS @ IMAGES.T / temperature
    wrong_targets = np.exp((IMAGES @ IMAGES.T + TEXTS @ TEXTS.T) / 2 * temperature)
    wrong_targets /= wrong_targets.sum(axis=1, keepdims=True)
    wrong = (np.mean(-(wrong_targets * log_softmax(logits)).sum(axis=1))
             + np.mean(-(wrong_targets.T * log_softmax(logits.T)).sum(axis=1))) / 2
    right = seed_soft_targets_loss(IMAGES, TEXTS, temperature)
    assert wrong != pytest.approx(right, rel=1e-3)
    # ... and kclip's loss is the right one of the two.
    kclip_loss = float(losses.soft_targets_loss(IMAGES.astype("float32"), TEXTS.astype("float32"), temperature))
    assert kclip_loss == pytest.approx(right, rel=1e-5)
    assert kclip_loss != pytest.approx(wrong, rel=1e-3)


@pytest.mark.parametrize("scale", [1.0, 3.0, 1 / 0.07])
def test_clip_loss_at_several_logit_scales(scale):
    # The CLIP loss takes logits already multiplied by the learned scale (1 / temperature).
    logits = scale * TEXTS @ IMAGES.T
    expected = (-np.mean(np.diag(log_softmax(logits))) - np.mean(np.diag(log_softmax(logits.T)))) / 2
    assert float(losses.contrastive_loss("clip", {"logits": logits.astype("float32")}, np.arange(3))) == \
        pytest.approx(expected, rel=1e-5)


def test_in_batch_accuracy_both_ways():
    logits = np.array([[3.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0]], dtype="float32")
    text_to_image, image_to_text = losses.in_batch_accuracy(logits, np.array([0, 1, 2]))
    # Rows: captions 0 and 2 pick their image, caption 1 picks image 0.
    assert float(text_to_image) == pytest.approx(2 / 3)
    # Columns: image 0 picks caption 0, image 1 picks caption 0 (tie broken to the first), image 2 caption 2.
    assert float(image_to_text) == pytest.approx(2 / 3)


def test_unknown_loss_name_is_rejected():
    with pytest.raises(ValueError, match="Unknown loss 'triplet'"):
        losses.contrastive_loss("triplet", {}, np.array([0]))
