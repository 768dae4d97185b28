"""The registry: components that own threads join it, and are told about forks and exit.

Three moments matter, and the Python clients in use today each miss some of them:

* **after a fork, in the child.** The child has copies of the parent's locks (some
  perhaps held: the fork may land in the middle of a flush), queues (the parent's
  pending data, which the parent will send itself) and no threads. Each component
  drops the inherited state and starts afresh on first use. Nothing at all happens
  *before* the fork or in the parent: a fork never waits for a sender.
* **at interpreter exit** (``atexit``). Each component flushes what it holds within one
  shared deadline (``exit_timeout``, 2 s by default), without starting a thread:
  Python 3.12+ refuses new threads at exit, so a component that has none does the
  work on the exiting thread.
* **when a ``multiprocessing`` or billiard (Celery) worker ends.** Those processes end
  with ``os._exit`` after running their own finalizers and never run ``atexit``: the
  registry installs a finalizer in every such child, which flushes the same way.

The registry imports none of the components: a component implements
:class:`Participant` and calls :func:`join`. References are weak; a component that
is garbage-collected simply leaves.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
import weakref
from typing import Protocol

from ._gate import zero_all_gates

DEFAULT_EXIT_TIMEOUT = 2.0


class Participant(Protocol):
    """What a component implements to take part."""

    def _lifecycle_after_fork(self) -> None:
        """In a forked child: drop inherited state; must not block or log."""

    def _lifecycle_flush(self, deadline: float) -> None:
        """Send what is held, giving up at ``time.monotonic() >= deadline``."""


def _exit_timeout_from_environment() -> float:
    text = os.environ.get("CONVEYOR_EXIT_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_EXIT_TIMEOUT
    except ValueError:
        value = DEFAULT_EXIT_TIMEOUT  # never fail an import over a bad knob
    return value if value >= 0 else DEFAULT_EXIT_TIMEOUT


_participants: weakref.WeakSet[Participant] = weakref.WeakSet()
_held: dict[int, Participant] = {}
_exit_timeout = _exit_timeout_from_environment()
_lock = threading.Lock()
_exiting = False


def join(participant: Participant) -> None:
    """Register a component for fork and exit handling (held weakly: see :func:`hold`)."""
    _participants.add(participant)
    _watch_worker_pools()


def hold(participant: Participant) -> None:
    """Keep ``participant`` alive until :func:`release`: a component whose thread holds
    data must be flushed at exit even if the application dropped every reference to it
    (a client that was a local of ``main()``)."""
    _held[id(participant)] = participant
    join(participant)


def release(participant: Participant) -> None:
    """Undo :func:`hold` (a closed component has nothing left to flush)."""
    _held.pop(id(participant), None)


def set_exit_timeout(seconds: float) -> None:
    """How long exit (and a worker process's end) may spend flushing, in total."""
    global _exit_timeout
    if not seconds >= 0:
        raise ValueError(f"exit timeout must be >= 0 seconds, got {seconds!r}")
    _exit_timeout = float(seconds)


def exit_timeout() -> float:
    """The current exit deadline, in seconds."""
    return _exit_timeout


def flush_all(timeout: float | None = None) -> None:
    """Flush every participant within ``timeout`` seconds in total (default: the exit
    timeout). What the exit hook and the worker finalizers call."""
    deadline = time.monotonic() + (_exit_timeout if timeout is None else timeout)
    for participant in list(_participants):
        with contextlib.suppress(Exception):  # exit goes on whatever one component does
            participant._lifecycle_flush(deadline)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent may have held it at the fork
    zero_all_gates()
    _watch_worker_pools()  # before the pool's own after-fork callbacks run
    for participant in list(_participants):
        # No logging here: a logging lock may be held from the parent.
        with contextlib.suppress(Exception):
            participant._lifecycle_after_fork()


def _at_exit() -> None:
    global _exiting
    _exiting = True
    flush_all()


# -- multiprocessing and billiard workers ---------------------------------------------


class _WorkerHook:
    """The object the pools' after-fork registries hold weakly: kept alive here."""

    def install_finalizer(self, util_module: object) -> None:
        finalize = getattr(util_module, "Finalize", None)
        if finalize is not None:
            # exitpriority >= 0: run by the worker's _exit_function before os._exit.
            finalize(None, flush_all, exitpriority=100)


_WORKER_HOOK = _WorkerHook()


def _flush_on_signal(*args: object, **kwargs: object) -> None:
    flush_all()


_watched: set[str] = set()


def _watch_worker_pools() -> None:
    """Ask multiprocessing and billiard, if loaded, to call us in each new worker.

    Their workers clear inherited finalizers at start and then run "after fork"
    callbacks: that is where a finalizer must be installed to survive. Celery's prefork
    children never run those finalizers (billiard's worker ends with ``os._exit`` from
    inside its loop), so there the flush hangs on Celery's own
    ``worker_process_shutdown`` signal, which they do send.
    """
    if "celery" not in _watched:
        signals = sys.modules.get("celery.signals")
        shutdown = getattr(signals, "worker_process_shutdown", None)
        if shutdown is not None:
            _watched.add("celery")
            shutdown.connect(_flush_on_signal, weak=False, dispatch_uid="conveyor.lifecycle")
    for name in ("multiprocessing.util", "billiard.util"):
        if name in _watched:
            continue
        module = sys.modules.get(name)
        register = getattr(module, "register_after_fork", None)
        if register is None:
            continue
        _watched.add(name)
        register(_WORKER_HOOK, lambda hook, _module=module: hook.install_finalizer(_module))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
