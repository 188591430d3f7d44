"""The text tower traced into a TorchScript graph, for serving (a speed lever).

A search server embeds one short query at a time. Keras runs every layer call through Python
(name scopes, dtype policies, argument checks), which for the demo's 2-layer text tower is about
6 ms against well under 1 ms of arithmetic; with the interpreter lock held, that Python is what
bounds a server on a small CPU (benchmarks/RESULTS-serve.md). `torch.jit.trace` records the ops
once per input shape and replays them without the Python: 0.74 ms against 6.19 ms for a batch of
8 (benchmarks/results/traced-text-2026-11-30.jsonl), with identical outputs.

A trace holds the weights as they were when it was made, so it serves a model that no longer
changes; `kclip.serve` is the only user. Batches are padded to a power of two so that at most a
few shapes are traced. The first trace of each shape is checked against Keras' own output, and any
failure (an op that cannot be traced, a mismatch, an untested torch) falls back to Keras' path
with one warning.
"""

import threading
import warnings

import keras
import numpy as np

from kclip.utils.versions import patch_supported, warn_once

# [minimum, below): the torch releases this was tested with.
TESTED_TORCH = ("2.11", "2.16")
LEVER_NAME = "traced text tower (kclip.backends.torch.traced_text)"
TOLERANCE = 1e-4


def _padded_size(count):
    return 1 << max(0, int(count) - 1).bit_length()


class TracedTextEncoder:
    """`encode(texts)` -> (N, dim) float32, as `model.encode_text(texts)` gives, from traced graphs."""

    def __init__(self, model, max_traces=64):
        self.model = model
        self.max_traces = max_traces
        self._traces = {}
        self._lock = threading.Lock()
        self.failed = keras.config.backend() != "torch" or not patch_supported(
            LEVER_NAME, "torch", *TESTED_TORCH
        )

    def encode(self, texts):
        texts = list(texts)
        if self.failed or not texts:
            return self.model.encode_text(texts)
        if any(not str(text).strip() for text in texts):
            return self.model.encode_text(texts)  # Keras' path words the error
        import torch

        packed = self.model.preprocessor({"captions": texts})
        token_ids, padding_mask = packed["token_ids"], packed["padding_mask"]
        rows = _padded_size(len(texts))
        if rows > len(texts):  # repeat the last row: padding rows are computed and dropped
            extra = rows - len(texts)
            token_ids = torch.cat([token_ids, token_ids[-1:].expand(extra, -1)])
            padding_mask = torch.cat([padding_mask, padding_mask[-1:].expand(extra, -1)])
        traced = self._trace_for(token_ids, padding_mask)
        if traced is None:
            return self.model.encode_text(texts)
        with torch.inference_mode():
            embeddings = traced(token_ids, padding_mask)[: len(texts)]
        return np.asarray(embeddings.float().cpu().numpy(), dtype="float32")

    def warm_up(self, max_rows=8, max_tokens=32):
        """Trace the shapes short queries arrive in (rows 1, 2, 4, ... max_rows; tokens 8, 16, ...
        max_tokens, within the model's sequence length) now, so that no request waits for a trace."""
        if self.failed:
            return 0
        import torch

        sample = self.model.preprocessor({"captions": ["a"]})
        longest = min(int(max_tokens), int(self.model.preprocessor.sequence_length))
        rows = 1
        while rows <= max_rows and not self.failed:
            for tokens in range(8, longest + 1, 8):
                token_ids = torch.zeros((rows, tokens), dtype=sample["token_ids"].dtype)
                self._trace_for(token_ids, torch.ones((rows, tokens), dtype=sample["padding_mask"].dtype))
            rows *= 2
        return len(self._traces)

    def _keras_call(self, token_ids, padding_mask):
        encoder = self.model._encoder("text")
        return encoder({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)

    def _trace_for(self, token_ids, padding_mask):
        key = (tuple(token_ids.shape), str(token_ids.dtype))
        with self._lock:
            if key in self._traces or self.failed:
                return self._traces.get(key)
            try:
                traced = self._make_trace(token_ids, padding_mask)
            except Exception as error:  # noqa: BLE001 - any failure means Keras' path, said once
                self.failed = True
                warn_once((LEVER_NAME, "failed"), f"kclip: the {LEVER_NAME} is off ({type(error).__name__}: "
                          f"{error}); text queries run through Keras, correct but slower.")
                return None
            if len(self._traces) >= self.max_traces:
                self._traces.pop(next(iter(self._traces)))
            self._traces[key] = traced
            return traced

    def _make_trace(self, token_ids, padding_mask):
        import torch

        weights = [variable.value for variable in self.model.variables]
        needs_grad = [weight.requires_grad for weight in weights]
        try:
            # A trace keeps the weights as constants, which torch allows only without autograd.
            for weight in weights:
                weight.requires_grad_(False)
            with torch.no_grad(), warnings.catch_warnings():
                # Keras reads shapes as Python values while tracing; each trace is for one shape.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(self._keras_call, (token_ids, padding_mask), check_trace=False)
        finally:
            for weight, flag in zip(weights, needs_grad):
                weight.requires_grad_(flag)
        with torch.inference_mode():
            expected = self._keras_call(token_ids, padding_mask)
            got = traced(token_ids, padding_mask)
        difference = float((got.float() - expected.float()).abs().max())
        if not difference <= TOLERANCE:
            raise ValueError(f"the traced text tower differs from Keras' by {difference:.2e}")
        return traced
