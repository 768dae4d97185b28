"""``client.timed()`` and ``client.distributed()``: one object that is a context
manager and a decorator, for plain and coroutine functions alike."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from ._client import Client

F = TypeVar("F", bound=Callable[..., Any])


class Timed:
    """Times a ``with`` block (or ``start()`` to ``stop()``), or every call of the
    function it decorates, and records the duration with ``client.timing()``, or
    ``client.distribution()`` for ``client.distributed()``.

    As a context manager it is not re-entrant and belongs to one thread (make one per
    block, as ``with client.timed("x"):`` does). As a decorator it starts a fresh timer
    per call, so a decorated function may run in many threads at once.
    """

    __slots__ = (
        "_client",
        "_metric",
        "_rate",
        "_send",
        "_start",
        "_tags",
        "_use_ms",
        "elapsed",
    )

    def __init__(
        self,
        client: Client,
        metric: str | None,
        tags: tuple[str, ...] | None,
        sample_rate: float | None,
        use_ms: bool,
        *,
        distribution: bool = False,
    ) -> None:
        self._client = client
        self._send = client.distribution if distribution else client.timing
        self._metric = metric
        self._tags = tags
        self._rate = sample_rate
        self._use_ms = use_ms
        self._start = 0.0
        self.elapsed: float | None = None
        """The last duration recorded, in the unit sent (seconds or milliseconds)."""

    def _record(self, metric: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        if self._use_ms:
            elapsed *= 1000.0
        self.elapsed = elapsed
        self._send(metric, elapsed, self._tags, self._rate)

    def __enter__(self) -> Timed:
        if self._metric is None:
            raise TypeError("timed() needs a metric name when used as a context manager")
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._metric is not None
        self._record(self._metric, self._start)

    def start(self) -> None:
        """Start the timer (as entering a ``with`` block does)."""
        self.__enter__()

    def stop(self) -> None:
        """Stop the timer and record the duration (as leaving a ``with`` block does)."""
        self.__exit__(None, None, None)

    def __call__(self, function: F) -> F:
        metric = self._metric or f"{function.__module__}.{function.__qualname__}"
        if self._metric is None:
            self._client._check_name(metric)
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await cast(Callable[..., Awaitable[Any]], function)(*args, **kwargs)
                finally:
                    self._record(metric, started)

            return cast(F, timed_coroutine)

        @functools.wraps(function)
        def timed_function(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._record(metric, started)

        return cast(F, timed_function)
