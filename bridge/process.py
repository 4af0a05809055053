"""Process-wide set-up for `serve`: file descriptors and the allocator, sized for hostile clients."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Request bodies and socket reads are 64 KiB and up: give each its own mapping, which goes back to
# the kernel when freed. glibc's default threshold grows after the first big free and then keeps
# such buffers in the heap, so a wave of slow clients left RSS 25 MiB higher for good.
_MMAP_THRESHOLD_BYTES = 64 * 1024
_TRIM_THRESHOLD_BYTES = 128 * 1024


def raise_open_file_limit() -> None:
    """Every connection is a file descriptor: take all the kernel allows (the soft limit is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("raised the open-file limit", extra={"from": soft, "to": hard})


def return_freed_memory_to_the_kernel() -> None:
    """Fix glibc's mmap and trim thresholds so memory comes back after a burst; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
