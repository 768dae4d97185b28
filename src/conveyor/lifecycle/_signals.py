"""Opt-in: turn SIGTERM into a normal exit, so that the exit flush runs.

By default SIGTERM kills a Python process without running ``atexit``: containers,
systemd and supervisors stop processes that way, and every client in use today
loses what it holds. :func:`install_signal_handlers` makes SIGTERM raise
``SystemExit(143)`` in the main thread instead, the exit status a shell reports for
a process killed by SIGTERM, so ``finally`` blocks, ``atexit`` and conveyor's exit
flush run.

A handler already installed by the application or its server (gunicorn, Celery and
uWSGI install their own) is kept and called instead: those servers already end their
processes through the normal exit path, where conveyor flushes. An ignored SIGTERM
stays ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

_installed: dict[int, _Handler] = {}


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
    """Make ``signals`` (SIGTERM by default) end the process through a normal exit.

    Call it from the main thread (Python delivers signals there). Idempotent.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_signal_handlers() must be called from the main thread")
    for signum in signals:
        current = signal.getsignal(signum)
        if current is _exit_on_signal:
            continue
        _installed[signum] = current
        signal.signal(signum, _exit_on_signal)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    previous = _installed.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # the application's or server's own shutdown
        return
    if previous == signal.SIG_IGN:
        return
    raise SystemExit(128 + signum)
