"""`ForkGate`: an integer cell that reads 0 in every forked child, whoever forked.

A component keeps the threshold its hot path compares against in this cell. In a
child the cell reads 0, so the child's first call takes the component's rare path,
where the component notices the fork (its pid changed) and resets itself. That is
how a fork is detected on the very next call without a system call per call:
``os.getpid()`` costs about 200 ns on a virtual machine, as much as the whole hot
path; reading the cell costs about 20 ns more than reading an attribute.

On Linux (4.14+) the cell lives in a private anonymous page marked
``MADV_WIPEONFORK``: the kernel hands the child a zeroed page, so even a fork made
from C code that runs no Python hook (uWSGI without ``--py-call-osafterfork``) is
seen. Elsewhere the cell is ordinary memory that the ``os.register_at_fork`` hook
zeroes, which covers every fork made through Python.
"""

from __future__ import annotations

import mmap
import sys
import weakref

_MADV_WIPEONFORK = 18  # linux/mman.h; Python's mmap module does not name it


class ForkGate:
    """One int64 cell; ``gate.cell[0]`` is the fast read, 0 after any fork."""

    __slots__ = ("__weakref__", "_buffer", "cell", "wiped_by_kernel")

    def __init__(self) -> None:
        buffer: mmap.mmap | bytearray
        self.wiped_by_kernel = False
        buffer = bytearray(8)
        if sys.platform.startswith("linux"):
            try:
                page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                page.madvise(_MADV_WIPEONFORK)
            except (OSError, ValueError, AttributeError):
                pass  # an old kernel: the fork hook zeroes the cell instead
            else:
                buffer = page
                self.wiped_by_kernel = True
        self._buffer = buffer
        self.cell = memoryview(buffer).cast("q")
        _GATES.add(self)

    def _zero(self) -> None:
        self.cell[0] = 0


_GATES: weakref.WeakSet[ForkGate] = weakref.WeakSet()


def zero_all_gates() -> None:
    """Called in a child by the fork hook (redundant where the kernel wiped the page)."""
    for gate in list(_GATES):
        gate._zero()
