"""The server's traced text tower (kclip.backends.torch.traced_text) must give Keras' embeddings."""

from unittest import mock

import keras
import numpy as np
import pytest

from helpers import CAPTIONS, tiny_model
from kclip.backends.torch import traced_text
from kclip.serve.state import ModelRunner

pytestmark = pytest.mark.torch_only  # torch.jit


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return tiny_model(dropout=0.1)


def test_traced_embeddings_equal_keras_for_every_batch_size(model):
    encoder = traced_text.TracedTextEncoder(model)
    for count in (1, 2, 3, 5, 8):
        texts = (CAPTIONS * 3)[:count]
        got = encoder.encode(texts)
        assert got.dtype == np.float32 and got.shape == (count, model.backbone.projection_dim)
        np.testing.assert_allclose(got, model.encode_text(texts), atol=1e-5)
    assert not encoder.failed
    # Batches are padded to powers of two, so five sizes made three traces (1, 2, 4 and 8 rows:
    # 3 and 5 reuse 4 and 8), one per caption length.
    assert {shape[0] for shape, _ in encoder._traces} == {1, 2, 4, 8}


def test_a_trace_is_reused_for_other_texts_and_padding_of_the_same_shape(model):
    encoder = traced_text.TracedTextEncoder(model)
    encoder.encode(["a red circle", "a blue square"])
    # Same padded shape (2 rows, 8 tokens), other words, and a shorter caption with more padding.
    texts = ["red", "a green triangle"]
    with mock.patch.object(encoder, "_make_trace", side_effect=AssertionError("traced again")):
        got = encoder.encode(texts)
    assert not encoder.failed and len(encoder._traces) == 1
    np.testing.assert_allclose(got, model.encode_text(texts), atol=1e-5)


def test_tracing_leaves_the_model_trainable(model):
    traced_text.TracedTextEncoder(model).encode(["a red circle"])
    assert all(variable.value.requires_grad for variable in model.trainable_variables)


def test_a_trace_that_disagrees_with_keras_falls_back_with_a_warning(model):
    encoder = traced_text.TracedTextEncoder(model)
    real_call = encoder._keras_call
    calls = {"count": 0}

    def drifting(token_ids, padding_mask):  # the check call sees different numbers than the trace
        calls["count"] += 1
        output = real_call(token_ids, padding_mask)
        return output + 1.0 if calls["count"] > 1 else output

    with mock.patch.object(encoder, "_keras_call", drifting), pytest.warns(RuntimeWarning, match="traced text tower"):
        got = encoder.encode(["a blue square"])
    assert encoder.failed
    np.testing.assert_allclose(got, model.encode_text(["a blue square"]), atol=1e-5)


def test_the_server_runner_embeds_through_the_trace(model):
    runner = ModelRunner(model)
    with mock.patch.object(model, "encode_text", side_effect=AssertionError("Keras' path was used")):
        vector = runner.encode_text("a green triangle")
    np.testing.assert_allclose(vector, model.encode_text(["a green triangle"]), atol=1e-5)
    with mock.patch.object(model, "encode_text", wraps=model.encode_text) as keras_path:
        ModelRunner(model, traced_text=False).encode_text("a yellow star")
    assert keras_path.called


def test_warm_up_traces_short_query_shapes_before_any_request(model):
    runner = ModelRunner(model)
    runner.warm_up()
    # The tiny model's captions are up to 16 tokens long: rows 1, 2, 4, 8 x tokens 8, 16.
    assert set(runner._traced._traces) >= {((rows, tokens), "torch.int32") for rows in (1, 2, 4, 8) for tokens in (8, 16)}
    with mock.patch.object(runner._traced, "_make_trace", side_effect=AssertionError("traced during a request")):
        for text in ("a red circle", "a blue square", "a yellow star"):
            runner.encode_text(text)
    assert not runner._traced.failed
