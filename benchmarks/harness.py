"""Shared timing harness for the training benchmarks.

Each benchmark runs warm-up steps, then times `steps` steps one by one and prints
one JSON line: median and spread of the step time, pairs/s at the median, peak RSS.
Benchmarks state their sizes in the line, because a full-size step and a tiny one
differ by 100x.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import time

# Sizes shared by the kclip benchmark and the plain-torch reference.
SIZES = {
    # ResNet50 (23.6M) + DistilBERT base (66.4M), as resnet_50_imagenet + distil_bert_base_en_uncased.
    "full": {
        "image_size": 224,
        "resnet": {
            "input_conv_filters": [64],
            "input_conv_kernel_sizes": [7],
            "stackwise_num_filters": [64, 128, 256, 512],
            "stackwise_num_blocks": [3, 4, 6, 3],
            "stackwise_num_strides": [1, 2, 2, 2],
            "block_type": "bottleneck_block",
        },
        "bert": {"vocabulary_size": 30522, "num_layers": 6, "num_heads": 12, "hidden_dim": 768,
                 "intermediate_dim": 3072, "max_sequence_length": 512},
        "sequence_length": 32,
        "projection_dim": 256,
    },
    # ResNet18-sized + a 2-layer, 256-wide BERT.
    "small": {
        "image_size": 128,
        "resnet": {
            "input_conv_filters": [64],
            "input_conv_kernel_sizes": [7],
            "stackwise_num_filters": [64, 128, 256, 512],
            "stackwise_num_blocks": [2, 2, 2, 2],
            "stackwise_num_strides": [1, 2, 2, 2],
            "block_type": "basic_block",
        },
        "bert": {"vocabulary_size": 30522, "num_layers": 2, "num_heads": 4, "hidden_dim": 256,
                 "intermediate_dim": 1024, "max_sequence_length": 512},
        "sequence_length": 32,
        "projection_dim": 256,
    },
    # The GPU check's CPU dry run (benchmarks/gpu.sh --dry-run): seconds, not a measurement.
    "tiny": {
        "image_size": 32,
        "resnet": {
            "input_conv_filters": [64],
            "input_conv_kernel_sizes": [3],
            "stackwise_num_filters": [64, 64],
            "stackwise_num_blocks": [1, 1],
            "stackwise_num_strides": [1, 2],
            "block_type": "basic_block",
        },
        "bert": {"vocabulary_size": 200, "num_layers": 1, "num_heads": 2, "hidden_dim": 32,
                 "intermediate_dim": 64, "max_sequence_length": 32},
        "sequence_length": 16,
        "projection_dim": 16,
    },
}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine():
    try:
        model = subprocess.run(
            ["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        model = platform.processor()
    return model or platform.processor()


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_family_and_model():
    """{"cpu_family": int, "cpu_model_number": int} from /proc/cpuinfo (x86 Linux), else {}."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model") and value.strip().isdigit():
                    fields.setdefault("cpu_family" if key == "cpu family" else "cpu_model_number", int(value))
                if not line.strip() and fields:
                    break  # the first processor's block is enough
    except OSError:
        pass
    return fields


def cpu_fields():
    """The CPU kind and how busy the shared machine was: every JSON line carries them.

    Speed on one CPU kind says little about another (bf16 is 2x faster than float32 on a
    CPU with avx512_bf16 and 100x slower on one without), so no number travels without them.
    """
    from kclip.utils.precision import cpu_info

    info = cpu_info()
    return {
        "cpu_model": info["model"],
        # VMs name every AMD kind "AMD EPYC": family and model tell Zen 3 (25, 1) from the bf16 kind (26, 2).
        **cpu_family_and_model(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in info["flags"]],
        "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def minor_faults():
    """Minor page faults of this process so far (pages the kernel mapped in, zero-filled when fresh)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(step, warmup, steps, synchronize=lambda: None, faults=None):
    """Calls `step()` warmup + steps times; returns the timed steps' seconds.

    With a list as `faults`, appends each timed step's minor page faults to it.
    """
    for _ in range(warmup):
        step()
    synchronize()
    times = []
    for _ in range(steps):
        faults_before, started = minor_faults(), time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - started)
        if faults is not None:
            faults.append(minor_faults() - faults_before)
    return times


def emit(line, out=None):
    """Prints one result line as JSON and, with `out`, appends it to that file."""
    print(json.dumps(line), flush=True)
    if out:
        with open(out, "a") as file:
            file.write(json.dumps(line) + "\n")


def peak_gpu_mb():
    """Peak GPU memory torch allocated in this process (MB), or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def gpu_fields():
    """The GPU kind, for lines measured on one (empty on a CPU run)."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": list(torch.cuda.get_device_capability(0)),
            "torch": torch.__version__, "peak_gpu_mb": peak_gpu_mb()}


def report(name, times, batch_size, **fields):
    median = statistics.median(times)
    line = {
        "benchmark": name,
        "median_step_s": round(median, 4),
        "min_step_s": round(min(times), 4),
        "max_step_s": round(max(times), 4),
        "steps": len(times),
        "batch_size": batch_size,
        "pairs_per_s": round(batch_size / median, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        **cpu_fields(),
        **gpu_fields(),
        **fields,
    }
    print(json.dumps(line), flush=True)
    return line
