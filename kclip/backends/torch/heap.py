"""Freed memory kept in the process between training steps (a speed lever; glibc only).

An eager torch step allocates its activations and gradients afresh and frees most of them
by its end. glibc's malloc serves each block above its mmap threshold (128 KiB, rising with
use to at most 32 MiB) from fresh mmap'd pages and returns them to the kernel on free, and
it trims the heap's top whenever more than twice that threshold lies free there. So every
step faults its big buffers in again, page by page, and the kernel zero-fills each page
first: tens of thousands of minor faults per step even at the demo's size. With mmap off and
trimming off, freed blocks stay in the heap and the next step reuses them: no faults once the
heap has grown to fit a step, and a shorter step (benchmarks/train_throughput.py
--keep-freed-memory on|off measures it).

The price is fragmentation: torch asks for 64-byte-aligned blocks, which glibc carves with
remainders that keep some freed blocks from merging. At the demo's size the heap settles within
a few percent of the peak without the lever; at the full size (ResNet50 + DistilBERT base) it
keeps growing, where glibc's defaults stay flat. So `kclip.train` leaves
it off unless `trainer.keep_freed_memory` is true, which configs/demo.yaml sets; turn it on
for a small model only after watching its memory settle. On exit the lever hands all free heap
memory back with `malloc_trim`. malloc's settings are process-wide and cannot be read back, so
once a training run has used the lever they stay set for the rest of the process (later
allocations come from the heap, and each run's exit trims it again).

It lives with the torch levers because it was measured on torch only. Where the C library
is not glibc (macOS, Windows, musl) it changes nothing.
"""

import contextlib
import ctypes
import os

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied = False


def _glibc():
    """The C library's handle where it is glibc, else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        return ctypes.CDLL(None)
    except (AttributeError, ValueError, OSError):  # no confstr name, or not glibc
        return None


def applied():
    """True once the lever has set malloc's options in this process."""
    return _applied


def keep_freed_memory():
    """Turns off mmap for big blocks and trimming of the heap's top; True where it took effect."""
    global _applied
    libc = _glibc()
    if libc is None:
        return False
    # -1 disables trimming altogether (mallopt(3)); mmap count 0 sends every block to the heap.
    if libc.mallopt(M_TRIM_THRESHOLD, -1) != 1 or libc.mallopt(M_MMAP_MAX, 0) != 1:
        return False
    _applied = True
    return True


def release_free_memory():
    """Hands the heap's free pages back to the kernel (no-op where the C library is not glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def enabled(flag=True):
    if not flag:
        yield
        return
    keep_freed_memory()
    try:
        yield
    finally:
        if _applied:
            release_free_memory()
