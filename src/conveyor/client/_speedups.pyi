from collections import deque
from collections.abc import Callable
from typing import Any

class FastIncrement:
    """``Client.increment`` for value-1 calls on known contexts (see _speedups.c)."""

    def __init__(
        self,
        contexts: dict[str, dict[tuple[str, ...] | None, tuple[str, tuple[str, ...] | None]]],
        queue: deque[Any],
        gate: memoryview,
        pressure: Callable[[deque[Any]], None],
        fallback: Callable[..., None],
    ) -> None: ...
    def __call__(
        self,
        metric: str,
        value: float = 1,
        tags: Any = None,
        sample_rate: float | None = None,
    ) -> None: ...
