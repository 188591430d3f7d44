"""Mixed precision must not change what is learned."""

import keras
import numpy as np
import pytest

from helpers import CAPTIONS, tiny_model
from kclip.utils.precision import explain_precision, parse_cpuinfo, resolve_precision

# Also run on JAX and TensorFlow by .ci/run (KCLIP_TEST_BACKEND).
pytestmark = pytest.mark.backend_neutral

# The colours of helpers.CAPTIONS: red, blue, green, yellow.
COLOURS = [(230, 30, 30), (30, 30, 230), (30, 200, 30), (240, 230, 30)]


def loss_curve(policy, steps=50):
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(7)
        model = tiny_model(captions=CAPTIONS)
        # A learnable sequence: each batch shows the four colours in a new order, with noise.
        rng = np.random.default_rng(0)
        batches = []
        for _ in range(5):
            order = rng.permutation(4)
            images = np.stack([np.full((32, 32, 3), COLOURS[i], dtype="float32") for i in order])
            images = np.clip(images + rng.normal(0, 20, images.shape), 0, 255).astype("uint8")
            batches.append(({"images": images, "captions": np.array(CAPTIONS)[order]}, np.arange(4)))
        return np.array(
            [float(model.train_on_batch(*batches[step % 5], return_dict=True)["loss"]) for step in range(steps)]
        )
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.xfail(
    keras.config.backend() == "tensorflow", strict=False,
    reason="open: on TensorFlow (XLA, CPU) the bf16 curve's first steps stray further from float32 "
    "(mean gap 0.19 against the 0.1 bound) before both converge; not yet explained",
)
def test_bfloat16_loss_curve_matches_float32_within_bfloat16_tolerance():
    float32 = loss_curve("float32")
    bfloat16 = loss_curve("mixed_bfloat16")
    assert float32[-5:].mean() < 0.5 * float32[:5].mean()  # it does learn
    # bfloat16 keeps 8 bits of mantissa (relative error ~0.4% per op); over 50 steps the curves
    # may drift apart a little but must tell the same story.
    assert np.abs(bfloat16 - float32).mean() < 0.1 * float32.mean()
    assert bfloat16[-5:].mean() == pytest.approx(float32[-5:].mean(), rel=0.25, abs=0.05)


X86_NO_BF16 = {"model": "AMD EPYC 7B13 64-Core Processor", "arch": "x86_64",
               "flags": frozenset({"sse4_2", "avx", "avx2", "fma"})}
X86_BF16 = {"model": "AMD EPYC 9B14", "arch": "x86_64",
            "flags": frozenset({"avx2", "avx512f", "avx512_bf16"})}


@pytest.fixture
def fake_hardware(monkeypatch):
    """Sets what the probe sees: a CPU (model, flags, arch), a GPU compute capability or None.

    The test machine's own CPU and GPU never decide the outcome.
    """
    from kclip.utils import precision

    monkeypatch.delenv("KCLIP_CPU_BF16", raising=False)

    def fake(cpu=X86_NO_BF16, gpu=None, onednn_bf16=True):
        monkeypatch.setattr(precision, "cpu_info", lambda: cpu)
        monkeypatch.setattr(precision, "gpu_compute_capability", lambda: gpu)
        monkeypatch.setattr(precision, "_torch_onednn_bf16", lambda: onednn_bf16)

    return fake


def test_auto_is_float32_on_a_cpu_without_native_bf16(fake_hardware):
    fake_hardware(X86_NO_BF16)
    policy, why = explain_precision("auto")
    assert policy == "float32"
    assert "avx512_bf16" in why and "AMD EPYC 7B13" in why


def test_auto_is_bfloat16_on_a_cpu_with_native_bf16(fake_hardware):
    fake_hardware(X86_BF16)
    assert explain_precision("auto") == ("mixed_bfloat16", "CPU 'AMD EPYC 9B14' has native bf16 (avx512_bf16)")
    fake_hardware({**X86_NO_BF16, "flags": frozenset({"avx2", "amx_bf16"})})
    assert resolve_precision("auto") == "mixed_bfloat16"


def test_auto_on_arm_reads_the_bf16_feature(fake_hardware):
    fake_hardware({"model": "Neoverse-V1", "arch": "aarch64", "flags": frozenset({"fp", "asimd", "bf16"})})
    assert resolve_precision("auto") == "mixed_bfloat16"
    fake_hardware({"model": "Cortex-A72", "arch": "aarch64", "flags": frozenset({"fp", "asimd"})})
    assert resolve_precision("auto") == "float32"


def test_auto_needs_torch_bf16_kernels_too(fake_hardware):
    if keras.config.backend() != "torch":
        pytest.skip("oneDNN's bf16 probe is torch's")
    fake_hardware(X86_BF16, onednn_bf16=False)
    policy, why = explain_precision("auto")
    assert policy == "float32" and "oneDNN" in why


def test_auto_on_a_gpu_is_bfloat16_from_ampere_and_float16_before(fake_hardware):
    fake_hardware(X86_NO_BF16, gpu=(8, 0))
    assert resolve_precision("auto") == "mixed_bfloat16"
    fake_hardware(X86_BF16, gpu=(7, 5))
    policy, why = explain_precision("auto")
    assert policy == "mixed_float16" and "loss scaling" in why


def test_an_explicit_precision_is_kept(fake_hardware):
    fake_hardware(X86_NO_BF16)
    assert explain_precision("mixed_bfloat16") == ("mixed_bfloat16", "set in the config")
    assert resolve_precision("float32") == "float32"


def test_environment_overrides_the_cpu_probe(fake_hardware, monkeypatch):
    fake_hardware(X86_BF16)
    monkeypatch.setenv("KCLIP_CPU_BF16", "0")
    assert explain_precision("auto") == ("float32", "KCLIP_CPU_BF16=0")


def test_cpuinfo_parsing_reads_x86_flags_and_arm_features():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n" * 2
    assert parse_cpuinfo(x86) == ("AMD EPYC 9B14", frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n"
    assert parse_cpuinfo(arm) == ("", frozenset({"fp", "asimd", "bf16", "i8mm"}))


@pytest.mark.skipif(
    keras.config.backend() == "jax",
    reason="XLA on the CPU has no float16 matmul with float32 accumulation; "
    "tests/test_loss_scaling.py checks JAX's loss scaling in float32",
)
def test_float16_with_loss_scaling_learns_like_float32():
    # mixed_float16 is the GPU default: Keras wraps the optimizer in LossScaleOptimizer, whose
    # first steps overflow and are skipped while the scale comes down.
    float32 = loss_curve("float32")
    float16 = loss_curve("mixed_float16")
    assert np.isfinite(float16).all()
    assert float16[-5:].mean() < 0.5 * float16[:5].mean()
    assert float16[-5:].mean() == pytest.approx(float32[-5:].mean(), rel=0.25, abs=0.05)
