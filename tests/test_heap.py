"""kclip.backends.torch.heap: freed memory stays in the process while training, and goes back after."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kclip.backends.torch import heap

pytestmark = [
    pytest.mark.torch_only,  # torch's CPU buffers; measured and used on torch only
    pytest.mark.skipif(heap._glibc() is None, reason="malloc settings apply where the C library is glibc"),
]

# A conv layer's activations at this size are 37.7 MB, above glibc's largest mmap threshold
# (32 MiB): by default each one comes from fresh pages, returned to the kernel when freed.
ACTIVATION_PAGES = 64 * 64 * 48 * 48 * 4 // os.sysconf("SC_PAGE_SIZE")
STEPS = 10

# A fresh process, so glibc's default settings hold until the lever changes them.
FAULTS_SCRIPT = f"""
import resource, sys
import torch
from kclip.backends.torch import heap

if sys.argv[1] == "on" and not heap.keep_freed_memory():
    sys.exit("the lever did not take effect")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.manual_seed(0)
conv = torch.nn.Conv2d(64, 64, 3, padding=1)
images = torch.randn(64, 64, 48, 48)
def step():
    conv(images).relu().square().mean().backward()
for _ in range(3):
    step()
before = faults()
for _ in range({STEPS}):
    step()
print(faults() - before)
"""


def page_faults_of_training_steps(lever):
    output = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, lever], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1])
    return int(output.stdout.split()[-1])


def test_freed_activations_are_reused_instead_of_faulted_in_again():
    # Off: every step faults its activations in afresh (several per step). On: the heap hands
    # freed blocks back; the few faults left are the heap growing to fit the step's pattern
    # (at most 3 activations' worth over 5 steps in 20 runs), not one per step.
    faults_off = page_faults_of_training_steps("off")
    assert faults_off >= STEPS * ACTIVATION_PAGES
    assert page_faults_of_training_steps("on") < faults_off / 10


def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_memory_kept_while_training_goes_back_to_the_kernel_on_exit():
    import torch

    heap.release_free_memory()  # free pages an earlier test left resident would be reused unseen
    before = resident_mib()
    with heap.enabled(True):
        buffer = torch.ones(64 << 20)  # 256 MiB
        del buffer
        kept = resident_mib() - before
    returned = resident_mib() - before
    assert heap.applied()
    assert kept > 200  # freed, but still the process's while the lever is on
    assert returned < 50


def test_elsewhere_than_glibc_the_lever_changes_nothing(monkeypatch):
    monkeypatch.setattr(heap.os, "confstr", lambda name: "musl 1.2")
    assert heap._glibc() is None
    assert heap.keep_freed_memory() is False
    with heap.enabled(True):  # no error, nothing to hand back
        pass
