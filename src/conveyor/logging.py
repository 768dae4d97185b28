"""`conveyor.logging.Handler`: log records at or above a level, shipped by a dispatcher.

A logging call happens wherever the application is, often on a request's critical
path, so :meth:`Handler.emit` only builds a small dict and hands it to
:meth:`conveyor.Dispatcher.submit`: no network, no formatting of the traceback into
one string only (the exception is also sent as structured fields: type, message,
frames), and no wait. A dispatcher made with ``overflow="block"`` would block the
logging call, so the handler refuses one.

conveyor's own loggers (``conveyor.*``) are not shipped: a failing endpoint logs
warnings, and shipping those through the same endpoint would feed the failure.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from conveyor.delivery._capture import exception_fields


class _Submitter(Protocol):
    def submit(self, item: object) -> bool: ...


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class Handler(logging.Handler):
    """Ship records at or above ``level`` to ``dispatcher`` (see the module docstring).

    Extra attributes given with ``extra={...}`` travel as the event's ``extra``
    field when JSON can carry them (others are sent as their ``repr``).
    """

    def __init__(self, dispatcher: _Submitter, level: int | str = logging.WARNING) -> None:
        super().__init__(level)
        if getattr(dispatcher, "_overflow", None) == "block":
            raise ValueError(
                "a logging handler must not block: give it a dispatcher with "
                "overflow='drop_oldest' or 'drop_newest'"
            )
        self.dispatcher = dispatcher

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "conveyor" or record.name.startswith("conveyor."):
            return
        try:
            self.dispatcher.submit(self.to_event(record))
        except Exception:
            self.handleError(record)

    def to_event(self, record: logging.LogRecord) -> dict[str, Any]:
        """The event sent for ``record``."""
        event: dict[str, Any] = {
            "type": "log",
            "timestamp": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
            "thread": record.threadName,
            "process": record.process,
        }
        if record.exc_info and record.exc_info[0] is not None:
            event["exception"] = exception_fields(*record.exc_info)
        if record.stack_info:
            event["stack"] = record.stack_info
        extra = {
            k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
            for k, v in record.__dict__.items()
            if k not in _RESERVED and not k.startswith("_")
        }
        if extra:
            event["extra"] = extra
        return event


__all__ = ["Handler"]
