"""A model saved in half precision encodes in float32 where that half precision is not native."""

import keras
import numpy as np
import pytest

import kclip
from helpers import CAPTIONS, tiny_model
from test_precision import X86_BF16, X86_NO_BF16, fake_hardware  # noqa: F401 (fixture)


def saved_under(policy, path):
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(3)
        model = tiny_model(captions=CAPTIONS)
        kclip.export_model(model, path)
    finally:
        keras.config.set_dtype_policy(previous)
    return path


def images(count=6, size=32):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (size, size, 3)).astype("uint8") for _ in range(count)]


def compute_dtypes(model):
    return {layer.dtype_policy.compute_dtype for layer in model.backbone._flatten_layers()
            if layer.dtype_policy.compute_dtype.startswith(("float", "bfloat"))}


@pytest.mark.parametrize("policy, half_eps", [("mixed_float16", 2.0**-10), ("mixed_bfloat16", 2.0**-7)])
def test_half_precision_model_encodes_in_float32_where_half_is_not_native(tmp_path, fake_hardware, policy, half_eps):
    path = saved_under(policy, tmp_path / "model.keras")
    fake_hardware(X86_NO_BF16)
    saved = kclip.load_model(path, precision="saved")
    loaded = kclip.load_model(path)
    assert saved.compute_policy == policy
    assert loaded.compute_policy == "float32"
    assert compute_dtypes(loaded) == {"float32"}
    assert compute_dtypes(saved) >= {policy.removeprefix("mixed_")}

    for encode in ("encode_text", "encode_image"):
        inputs = CAPTIONS if encode == "encode_text" else images()
        full, half = getattr(loaded, encode)(inputs), getattr(saved, encode)(inputs)
        assert full.dtype == half.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
        # Unit vectors: each half-precision component is within a few units in the last place
        # of the half type (eps) of the float32 one; measured: 0.7 eps (fp16), 0.55 eps (bf16).
        difference = np.abs(full - half).max()
        assert difference < 8 * half_eps, difference
        # And they are not the same computation: float32 differs from half in the last bits.
        assert difference > 0


def test_bfloat16_model_keeps_bfloat16_where_it_is_native(tmp_path, fake_hardware):
    path = saved_under("mixed_bfloat16", tmp_path / "model.keras")
    fake_hardware(X86_BF16)
    assert kclip.load_model(path).compute_policy == "mixed_bfloat16"
    # float16 is slow on every CPU, bf16 or not.
    path16 = saved_under("mixed_float16", tmp_path / "model16.keras")
    assert kclip.load_model(path16).compute_policy == "float32"


def test_float32_model_and_forced_precision(tmp_path, fake_hardware):
    path = saved_under("float32", tmp_path / "model.keras")
    fake_hardware(X86_BF16)
    assert kclip.load_model(path).compute_policy == "float32"
    forced = kclip.load_model(path, precision="mixed_bfloat16")
    assert forced.compute_policy == "mixed_bfloat16"
    original = kclip.load_model(path)
    assert forced.fingerprint() == original.fingerprint()
    np.testing.assert_allclose(forced.encode_text(CAPTIONS), original.encode_text(CAPTIONS), atol=8 * 2.0**-7)
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        kclip.load_model(path, precision="fp8")
