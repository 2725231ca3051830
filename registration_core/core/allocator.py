"""Keep freed memory in the process: glibc's allocator tuned for torch's large, short-lived tensors.

A 3D NODEO iteration allocates and frees dozens of full-size tensors (17-53 MB each at
160x192x144). glibc serves each from fresh ``mmap`` pages above its threshold and gives freed heap
back to the system, so every iteration pays the kernel to zero the same pages again: measured
4.4 million page faults over 8 iterations and about 2.5 s per iteration on 2 threads, against 0.55
million and 0.9 s with :func:`retain_freed_memory` (peak RSS +15 %; docs/nodeo-speed.md). Torch has
no caching allocator on the CPU, hence this setting of the C library (``mallopt``) rather than a
torch option. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's largest ``M_MMAP_THRESHOLD`` on 64-bit systems (bytes): smaller blocks come from the heap."""
TOP_PAD = 1024 * 1024 * 1024
"""Heap growth per ``sbrk`` (bytes): big enough that an iteration's temporaries reuse one extension."""
TRIM_THRESHOLD = 2**31 - 1
"""Free heap kept before any is returned to the system (bytes): in effect, never trimmed."""


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (heap never trimmed, 1 GiB growth steps, blocks up to
    32 MiB on the heap). Process-wide, idempotent; True when glibc accepted all three settings, False
    when the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    return all(mallopt(option, value) == 1 for option, value in settings)
