"""conveyor's agent: a DogStatsD server that receives packets from application
processes, aggregates them per flush interval and exports them to backends.

    from conveyor.agent import AgentServer, PrometheusBackend, StdoutBackend

    with AgentServer(["udp://127.0.0.1:8125"], [StdoutBackend(), PrometheusBackend()]):
        ...

The agent stands on :mod:`conveyor.ring` and :mod:`conveyor.protocol` (and
:mod:`conveyor.delivery` for its HTTP forwarder), never on the client. See
``docs/agent.md``.
"""

from ._aggregate import Aggregator, AggregatorStatistics
from ._backends import (
    Backend,
    HttpJsonForwarder,
    JsonLinesBackend,
    PrometheusBackend,
    StatsdForwarder,
    StdoutBackend,
)
from ._listen import DEFAULT_URL, Listener, ListenerStatistics, listen
from ._listen_ring import PacketRing
from ._models import DEFAULT_MODEL, MODELS
from ._series import Series, Snapshot
from ._server import DEFAULT_FLUSH_INTERVAL, AgentServer, AgentStatistics
from ._workers import AgentWorkers, AgentWorkersStatistics, WorkerStatistics

__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MODEL",
    "DEFAULT_URL",
    "MODELS",
    "AgentServer",
    "AgentStatistics",
    "AgentWorkers",
    "AgentWorkersStatistics",
    "Aggregator",
    "AggregatorStatistics",
    "Backend",
    "HttpJsonForwarder",
    "JsonLinesBackend",
    "Listener",
    "ListenerStatistics",
    "PacketRing",
    "PrometheusBackend",
    "Series",
    "Snapshot",
    "StatsdForwarder",
    "StdoutBackend",
    "WorkerStatistics",
    "listen",
]
