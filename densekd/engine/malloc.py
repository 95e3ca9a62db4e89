"""Keep freed memory in the process on a CPU (``train.malloc_keep``; docs/methods.md, "The CPU allocator").

glibc's malloc serves every block of 32 MiB or more (and, by default, smaller ones too, until its threshold
adapts) with a fresh ``mmap`` and gives it back to the system with ``munmap`` when it is freed. PyTorch's CPU
allocator has no cache of its own, so a training step whose activations are such blocks maps, faults in (the
kernel zeroes every 4 KiB page on first touch) and unmaps them again at every step. Measured with
``benchmarks/real_size.py rest``: a distilled DeepLabV3 R101 → R18 step at 512×1024 faults in about 17 GB a
step, and runs 3–4 s (60–80 % of the student step) longer than its two networks apart.

:func:`keep_freed_memory` turns ``mmap`` off for malloc (every block then comes from the heap) and stops
malloc from trimming the heap's top, so a freed block is reused by the next step instead of being refaulted.
The peak is the same; the process keeps its peak after a step instead of giving it back. :func:`restore`
undoes both (and trims what it can). Outside Linux/glibc both do nothing and say so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Callable

# mallopt parameters (glibc malloc.h) and their defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
#: the trim threshold while memory is kept: mallopt takes an int and glibc stores the threshold as a size_t, so
#: -1 is the largest size there is (never trim). The largest positive int, 2 GiB, is not enough: a step that frees
#: more than 2 GiB at the heap's top would give it all back and fault it in again (seen in a throwaway check:
#: rounds of four 1 GiB tensors were faulted in again every round with 2**31 - 1, not with -1)
KEEP_TRIM_THRESHOLD = -1


def _libc():
    """glibc's C library, or None where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


#: how many keep_freed_memory() calls no restore() has undone yet (two Trainers alive: the first to close must
#: not take the setting from the other)
_holders = 0


def keep_freed_memory() -> bool:
    """Ask malloc to keep freed memory for reuse (see the module docstring). True if it took effect; each such
    call is undone by one :func:`restore`."""
    global _holders
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD) == 1
    _holders += ok
    return ok


def restore() -> bool:
    """Undo one :func:`keep_freed_memory`; with none left, malloc's defaults again (blocks of 32 MiB or more
    mapped apart and returned when freed) and the heap's free top given back. True if it took effect."""
    global _holders
    libc = _libc()
    if libc is None:
        return False
    _holders = max(_holders - 1, 0)
    if _holders:
        return True
    ok = libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX) == 1 and libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD) == 1
    libc.malloc_trim(0)
    return ok


class Hold:
    """One :func:`keep_freed_memory` taken at construction and given back once, by whichever comes first: its
    owner's ``close()``, a :class:`GrowthWatch` that saw the heap grow, or the owner's garbage collection (the
    Trainer registers :meth:`release` with ``weakref.finalize``, so a run never closed does not keep the setting
    for the rest of the process). ``held``: taken and not yet given back."""

    def __init__(self) -> None:
        self.held = keep_freed_memory()

    def release(self) -> bool:
        """Give the hold back (:func:`restore`) if still held; True if this call gave it back."""
        if not self.held:
            return False
        self.held = False
        restore()
        return True


def resident_bytes() -> int:
    """This process's resident memory (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class GrowthWatch:
    """Watches the resident memory of a process that keeps freed memory, step by step, and gives malloc's
    defaults back once if it grows past ``factor`` × what it was after ``settle`` steps: a kept heap fragments
    when the blocks a step asks for keep changing size (multi-scale inputs; ``benchmarks/malloc_keep.py``: a
    ResNet-50 on sizes drawn every step went from 5.0 to 11.1 GB resident in 40 steps, against 7.2 GB at most
    with malloc's defaults). :meth:`step` returns the warning to show when it gave up, else None; giving up calls
    ``release`` (a :meth:`Hold.release`; default :func:`restore`)."""

    def __init__(self, settle: int = 5, factor: float = 1.5, release: Callable[[], object] | None = None) -> None:
        self.settle, self.factor, self.release = settle, factor, release
        self.steps, self.base, self.done = 0, 0, False

    def step(self, resident: int | None = None) -> str | None:
        if self.done:
            return None
        self.steps += 1
        now = resident_bytes() if resident is None else resident
        if self.steps <= self.settle:
            self.base = now
            return None
        if self.base and now > self.factor * self.base:
            self.done = True
            (self.release or restore)()
            back = ("malloc's defaults are back for the rest of this run (slower steps, bounded memory)"
                    if not _holders else
                    f"this run gave up its hold, but malloc's defaults come back only when the {_holders} other "
                    f"run(s) in this process that keep freed memory close")
            return (f"train.malloc_keep: resident memory grew from {self.base / 1e9:.2f} GB after step "
                    f"{self.settle} to {now / 1e9:.2f} GB after step {self.steps} (more than {self.factor:g}x): a "
                    f"kept heap fragments when the steps' tensors keep changing size (e.g. multi-scale inputs); "
                    f"{back}. Set train.malloc_keep=false to start so")
        return None

