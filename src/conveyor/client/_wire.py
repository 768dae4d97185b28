"""The client's use of :mod:`conveyor.protocol`: namespace, constant tags, and encoding
errors turned into values the sender can count instead of exceptions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from conveyor.protocol import (
    ProtocolError,
    encode_event,
    encode_metric,
    encode_service_check,
    encode_tags,
)

__all__ = [
    "Encoder",
    "WireError",
    "check_name",
    "checked_number",
    "encode_event",
    "encode_service_check",
]


class WireError(ProtocolError):
    """An item the sender could not encode; counted as dropped ("invalid")."""


def check_name(metric: str) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``metric`` is a valid metric name."""
    if not isinstance(metric, str):
        raise TypeError(f"metric name must be a str, not {type(metric).__name__} {metric!r}")
    encode_metric(metric, "c", 0)  # the protocol's checks, and its name cache


def checked_number(value: object, metric: str) -> float:
    """``value`` as an int or float, or a clear error naming ``metric``: a bool, a str
    or anything non-numeric raises ``TypeError``, a NaN or an infinity ``ValueError``."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{metric!r}: the value must be a number, not {value!r}")
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # type: ignore[arg-type]  # Decimal, numpy scalars...
        except (TypeError, ValueError):
            raise TypeError(f"{metric!r}: the value must be a number, not {value!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{metric!r}: the value must be finite, not {value!r}")
    return value


class Encoder:
    """Encodes one context or call as DogStatsD lines, with namespace and constant tags."""

    __slots__ = ("_constant_text", "_max_line", "_prefix", "constant_tags")

    def __init__(
        self, namespace: str | None, constant_tags: tuple[str, ...], max_line: int
    ) -> None:
        if namespace:
            check_name(namespace)
        self._max_line = max_line  # a packet's size, less the line's newline
        self._prefix = f"{namespace}." if namespace else ""
        self.constant_tags = constant_tags
        self._constant_text = encode_tags(constant_tags)

    def metric(
        self,
        name: str,
        type_: str,
        values: Iterable[float | str],
        rate: float,
        tags: tuple[str, ...] | None,
    ) -> Iterator[bytes | WireError]:
        """The lines for one context: its values packed on as few lines as fit a
        packet (the sample rate applies to each value, so splitting keeps counts
        exact), or, for a set, one line per member (members cannot be packed)."""
        tag_text = encode_tags(tags) if tags else ""
        if self._constant_text:
            tag_text = f"{tag_text},{self._constant_text}" if tag_text else self._constant_text
        name = self._prefix + name
        try:
            if type_ == "s":
                for member in values:
                    yield encode_metric(name, "s", member, sample_rate=rate, tags=tag_text)
            else:
                yield from self._packed(name, type_, tuple(values), rate, tag_text)  # type: ignore[arg-type]
        except ProtocolError as error:
            yield WireError(str(error))

    def _packed(
        self, name: str, type_: str, values: tuple[float, ...], rate: float, tag_text: str
    ) -> Iterator[bytes]:
        line = encode_metric(name, type_, values, sample_rate=rate, tags=tag_text)  # type: ignore[arg-type]
        if len(line) <= self._max_line or len(values) == 1:
            yield line  # a single value too long for a packet is the packer's to refuse
            return
        half = len(values) // 2
        yield from self._packed(name, type_, values[:half], rate, tag_text)
        yield from self._packed(name, type_, values[half:], rate, tag_text)
