"""Choosing the dtype policy for the hardware a run is on, and saying why.

CPU: bfloat16 only where the CPU computes it natively (x86 `avx512_bf16` or `amx_bf16`,
ARM `bf16`); elsewhere it is emulated and 100x slower than float32 (torch 2.13's 1024²
matmul on an AVX2-only EPYC: 85 GFLOP/s float32, 0.9 GFLOP/s bfloat16), so float32.
float16 is never fast on a CPU (6-20x slower than float32 on an avx512_bf16 EPYC).

GPU: bfloat16 on cards that have it (compute capability >= 8.0: Ampere and newer), where
its tensor-core rate equals float16's and it needs no loss scaling; float16 with loss
scaling on older cards. That rule is from NVIDIA's specifications, not from a measurement
here; benchmarks/gpu.sh measures float16 against bfloat16 on the card it runs on.

The probe reads /proc/cpuinfo (or sysctl on macOS), so it is the same on every Keras
backend; on torch, oneDNN must also agree that it has bf16 kernels. `KCLIP_CPU_BF16=0|1`
overrides the probe.
"""

import contextlib
import functools
import os
import platform
import subprocess
import warnings

import keras

HALF_POLICIES = ("mixed_bfloat16", "mixed_float16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Lightning's float16 names (trainer.precision 16): mixed_float16 is for GPUs only.
LIGHTNING_FLOAT16 = ("16", "16-mixed")


@functools.lru_cache(maxsize=1)
def cpu_info():
    """{"model": str, "flags": frozenset of lower-case feature names, "arch": str}."""
    try:
        with open("/proc/cpuinfo") as file:
            model, flags = parse_cpuinfo(file.read())
    except OSError:
        model, flags = "", frozenset()
    if platform.system() == "Darwin":
        model = model or _sysctl("machdep.cpu.brand_string")
        if _sysctl("hw.optional.arm.FEAT_BF16") == "1":
            flags = flags | {"bf16"}
    return {"model": model or platform.processor() or "unknown", "flags": frozenset(flags),
            "arch": platform.machine().lower()}


def parse_cpuinfo(text):
    """/proc/cpuinfo text -> (model name, feature flags): x86 "flags", ARM "Features"."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.lower().split())
    return model, frozenset(flags)


def _sysctl(name):
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_bf16_support():
    """(native: bool, reason: str) for bfloat16 arithmetic on this CPU."""
    forced = os.environ.get("KCLIP_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1", f"KCLIP_CPU_BF16={forced}"
    info = cpu_info()
    flags = info["flags"]
    if info["arch"] in ("aarch64", "arm64"):
        found = ["bf16"] if "bf16" in flags else []
    else:
        found = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if not found:
        wanted = "bf16" if info["arch"] in ("aarch64", "arm64") else " or ".join(NATIVE_BF16_FLAGS)
        return False, f"CPU {info['model']!r} has no native bf16 ({wanted} missing)"
    if keras.config.backend() == "torch" and not _torch_onednn_bf16():
        return False, f"CPU has {'+'.join(found)} but torch's oneDNN has no bf16 kernels for it"
    return True, f"CPU {info['model']!r} has native bf16 ({'+'.join(found)})"


@functools.lru_cache(maxsize=1)
def _torch_onednn_bf16():
    import torch

    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else True
    except RuntimeError:
        return True


def gpu_compute_capability():
    """(major, minor) of the first GPU the backend sees, or None without a GPU."""
    backend = keras.config.backend()
    if backend == "torch":
        import torch

        return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0)))
    if backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        if not gpus:
            return None
        major, _, minor = str(getattr(gpus[0], "compute_capability", "0.0")).partition(".")
        return int(major), int(minor or 0)
    return None


def explain_precision(precision="auto"):
    """(policy, reason): `auto` resolved for this hardware, in words for the run's log."""
    capability = gpu_compute_capability()
    if precision in LIGHTNING_FLOAT16:
        if capability is not None:
            return "mixed_float16", f"trainer.precision={precision} on a GPU"
        # Lightning falls back to bf16 on a CPU; kclip takes the CPU's fast choice instead, which is
        # float32 where bf16 would be emulated.
        native, reason = cpu_bf16_support()
        policy = "mixed_bfloat16" if native else "float32"
        warnings.warn(f"trainer.precision={precision!r} (float16) runs only on a GPU, and none is visible: "
                      f"using {policy} on the CPU ({reason}).", stacklevel=2)
        return policy, f"trainer.precision={precision} without a GPU; {reason}"
    if precision != "auto":
        return precision, "set in the config"
    if capability is not None:
        if capability >= (8, 0):
            return "mixed_bfloat16", f"GPU compute capability {capability[0]}.{capability[1]} has bf16"
        return "mixed_float16", (f"GPU compute capability {capability[0]}.{capability[1]} has no bf16; "
                                 "float16 with loss scaling")
    native, reason = cpu_bf16_support()
    return ("mixed_bfloat16" if native else "float32"), reason


def resolve_precision(precision="auto"):
    """The dtype policy name for `precision` ("auto" or a policy name) on this hardware."""
    return explain_precision(precision)[0]


def inference_policy(saved_policy):
    """The policy to encode with, for a model saved under `saved_policy`.

    A half-precision model keeps its half precision where the hardware computes it natively
    and runs in float32 elsewhere (same weights: mixed policies keep float32 variables).
    """
    if saved_policy not in HALF_POLICIES:
        return saved_policy, "saved in full precision"
    capability = gpu_compute_capability()
    if capability is not None:
        if saved_policy == "mixed_float16" or capability >= (8, 0):
            return saved_policy, f"GPU compute capability {capability[0]}.{capability[1]}"
        return "float32", "this GPU has no bf16"
    if saved_policy == "mixed_bfloat16":
        native, reason = cpu_bf16_support()
        return ("mixed_bfloat16" if native else "float32"), reason
    return "float32", "float16 is not native on a CPU"


def _gpu_available():
    return gpu_compute_capability() is not None


def accelerator_scope(accelerator="auto"):
    """A context that runs a training on the device Lightning's `accelerator` names.

    cpu: on the CPU even when a GPU is visible. gpu/cuda: a GPU, falling back to the CPU
    with a warning when none is visible (so a Lightning command line still runs there).
    """
    if accelerator == "cpu":
        return keras.device("cpu")
    if accelerator in ("gpu", "cuda") and not _gpu_available():
        warnings.warn(f"trainer.accelerator={accelerator!r}, but no GPU is visible: training on the CPU.",
                      stacklevel=2)
    elif accelerator not in ("auto", "gpu", "cuda"):
        raise ValueError(f"trainer.accelerator must be auto, cpu, gpu or cuda, got {accelerator!r}.")
    return contextlib.nullcontext()
