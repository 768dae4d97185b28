"""`capture_exceptions`: uncaught exceptions become events on a dispatcher.

Three places lose exceptions silently in a Python service: the main thread
(``sys.excepthook``), other threads (``threading.excepthook``) and asyncio tasks nobody
awaited (the loop's exception handler). Each hook here submits a structured event and
then calls the hook it replaced, so the traceback still reaches stderr and any other
tool keeps working. Submitting never blocks the failing thread (``submit`` does not
wait unless the dispatcher was made with ``overflow="block"``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol


class _Submitter(Protocol):
    def submit(self, item: object) -> bool: ...


def exception_fields(
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
    limit: int = 50,
) -> dict[str, Any]:
    """An exception as JSON-friendly fields: type, message and stack frames."""
    if exc_type is None:
        return {}
    frames = [
        {"file": f.filename, "line": f.lineno, "function": f.name, "code": f.line or ""}
        for f in traceback.extract_tb(tb, limit=limit)
    ]
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break reporting
        message = "<unprintable>"
    return {
        "type": f"{exc_type.__module__}.{exc_type.__qualname__}",
        "message": message,
        "frames": frames,
        "text": "".join(traceback.format_exception(exc_type, exc, tb, limit=limit)),
    }


def _event(kind: str, fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "exception",
        "source": kind,
        "timestamp": time.time(),
        "process": os.getpid(),
        "exception": fields,
        **extra,
    }


def capture_exceptions(
    dispatcher: _Submitter, loop: asyncio.AbstractEventLoop | None = None
) -> Callable[[], None]:
    """Send uncaught exceptions to ``dispatcher``; returns a function that undoes it.

    Hooks ``sys.excepthook`` and ``threading.excepthook``, and ``loop``'s exception
    handler if a loop is given. The previous hooks still run after ours.
    """
    previous_sys = sys.excepthook
    previous_threading = threading.excepthook

    def sys_hook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        if not issubclass(exc_type, KeyboardInterrupt):
            dispatcher.submit(_event("sys.excepthook", exception_fields(exc_type, exc, tb)))
        previous_sys(exc_type, exc, tb)

    def threading_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit:
            thread = args.thread.name if args.thread is not None else None
            fields = exception_fields(args.exc_type, args.exc_value, args.exc_traceback)
            dispatcher.submit(_event("threading.excepthook", fields, thread=thread))
        previous_threading(args)

    sys.excepthook = sys_hook
    threading.excepthook = threading_hook

    previous_loop: Any = None
    if loop is not None:
        previous_loop = loop.get_exception_handler()

        def loop_handler(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            error = context.get("exception")
            fields = (
                exception_fields(type(error), error, error.__traceback__)
                if isinstance(error, BaseException)
                else {}
            )
            dispatcher.submit(_event("asyncio", fields, message=str(context.get("message", ""))))
            if previous_loop is not None:
                previous_loop(the_loop, context)
            else:
                the_loop.default_exception_handler(context)

        loop.set_exception_handler(loop_handler)

    def undo() -> None:
        if sys.excepthook is sys_hook:
            sys.excepthook = previous_sys
        if threading.excepthook is threading_hook:
            threading.excepthook = previous_threading
        if loop is not None:
            loop.set_exception_handler(previous_loop)

    return undo
