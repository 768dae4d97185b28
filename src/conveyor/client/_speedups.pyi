from collections import deque
from collections.abc import Callable
from typing import Any

class FastCall:
    """A client method's fast path in C, for known contexts (see _speedups.c)."""

    def __init__(
        self,
        type_code: str | None,
        contexts: dict[str, dict[tuple[str, ...] | None, tuple[str, tuple[str, ...] | None]]],
        queue: deque[Any],
        gate: memoryview,
        pressure: Callable[[deque[Any]], None],
        fallback: Callable[..., None],
    ) -> None: ...
    __wrapped__: Callable[..., None]  # the Python method it stands for
    def __call__(self, *args: Any, **kwargs: Any) -> None: ...
