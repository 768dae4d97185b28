"""conveyor moves metrics, events and errors out of Python applications without
blocking them, with bounded memory, and without losing data at fork, at exit, under
overload or while a destination is down.

The public API::

    from conveyor import Client                    # the DogStatsD client
    conveyor.install_signal_handlers()             # opt-in: SIGTERM exits cleanly
    from conveyor import Dispatcher, HTTPTransport, Retry   # reliable HTTP delivery
    conveyor.capture_exceptions(dispatcher)        # uncaught exceptions as events

The layers are importable on their own: :mod:`conveyor.ring` (the messaging core),
:mod:`conveyor.protocol` (the DogStatsD codec), :mod:`conveyor.transport` (sockets),
:mod:`conveyor.lifecycle` (fork and exit),
:mod:`conveyor.delivery` (the dispatcher). Names here are loaded on first use, so that
importing one layer (say, the agent importing ``conveyor.protocol``) does not load
the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_LAZY = {
    "BoundCounter": "conveyor.client",
    "Client": "conveyor.client",
    "ClientStatistics": "conveyor.client",
    "Dispatcher": "conveyor.delivery",
    "HTTPTransport": "conveyor.transport",
    "Retry": "conveyor.delivery",
    "capture_exceptions": "conveyor.delivery",
    "install_signal_handlers": "conveyor.lifecycle",
}

__all__ = [
    "BoundCounter",
    "Client",
    "ClientStatistics",
    "Dispatcher",
    "HTTPTransport",
    "Retry",
    "__version__",
    "capture_exceptions",
    "install_signal_handlers",
]

if TYPE_CHECKING:
    from conveyor.client import BoundCounter, Client, ClientStatistics
    from conveyor.delivery import Dispatcher, Retry, capture_exceptions
    from conveyor.lifecycle import install_signal_handlers
    from conveyor.transport import HTTPTransport


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
