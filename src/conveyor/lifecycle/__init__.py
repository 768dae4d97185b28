"""Fork and exit safety for every component that owns a thread.

Components join a registry (:func:`join`) and keep their hot-path threshold in a
:class:`ForkGate`. The registry resets them in forked children and flushes them at
exit and when ``multiprocessing``/billiard workers end; see ``docs/lifecycle.md``.
This package imports no component.
"""

from ._gate import ForkGate
from ._registry import (
    DEFAULT_EXIT_TIMEOUT,
    Participant,
    exit_timeout,
    flush_all,
    hold,
    join,
    release,
    set_exit_timeout,
)
from ._signals import install_signal_handlers

__all__ = [
    "DEFAULT_EXIT_TIMEOUT",
    "ForkGate",
    "Participant",
    "exit_timeout",
    "flush_all",
    "hold",
    "install_signal_handlers",
    "join",
    "release",
    "set_exit_timeout",
]
