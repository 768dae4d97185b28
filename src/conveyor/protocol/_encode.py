"""Encoding metrics, events and service checks as DogStatsD lines (bytes, no newline).

Everything is validated here, at the boundary: a value the agent would misread is
refused with a :class:`ProtocolError` that says what to change, except tags, whose
framing characters are replaced (see :func:`encode_tags`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from ._model import (
    AlertType,
    Event,
    Metric,
    MetricType,
    Priority,
    ProtocolError,
    ServiceCheck,
)

Tags = str | Iterable[str] | Mapping[str, object] | None
"""Tags as the encoders accept them: ``["env:prod", "canary"]``, ``{"env": "prod",
"canary": None}`` (a ``None`` value makes a bare tag), ``None``, or a string that is
already a comma-separated tag list (as :func:`encode_tags` returns it)."""

Value = float | str | Iterable[float]
"""A metric value: one number, several numbers (packed into one line), or, for a
set, its member as a string."""

_TYPES: frozenset[str] = frozenset(("c", "g", "ms", "h", "d", "s"))
_PRIORITIES: frozenset[str] = frozenset(("normal", "low"))
_ALERT_TYPES: frozenset[str] = frozenset(("error", "warning", "info", "success"))

# Characters a metric name may not contain: the wire's separators (| : @ # ,) and any
# whitespace or control character (names are identifiers; Datadog allows only
# [A-Za-z0-9_.] and would rewrite the rest).
_BAD_NAME = re.compile(r"[|:@#,\s\x00-\x1f\x7f]")
_BAD_NAME_CHARS = "'|', ':', '@', '#', ',', whitespace or control characters"
_NAME_CACHE: dict[str, str] = {}
# The caches (names, tag sets, rates) hold at most _CACHE_MAX entries, then start
# over, and skip texts longer than _CACHED_LEN: a few MB at worst, even when names or
# tags are made up at run time. Dict operations are atomic, so threads may share them.
_CACHE_MAX = 4096
_CACHED_LEN = 512

_EXACT_INT = 10**16  # every integer below is exactly a double and printed in full
_MAX_SHOWN = 80  # characters of an offending argument quoted in an error message


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _name_prefix(name: object) -> str:
    """``name + ":"``, once ``name`` is known to be a valid metric name (cached)."""
    if not isinstance(name, str):
        raise ProtocolError(f"metric name must be a str, got {type(name).__name__}")
    if not name:
        raise ProtocolError("metric name is empty: give the metric a name")
    found = _BAD_NAME.search(name)
    if found is not None:
        raise ProtocolError(
            f"metric name {_show(name)} contains {found.group()!r} at index {found.start()}:"
            f" names may not contain {_BAD_NAME_CHARS}; use '.' or '_' instead"
        )
    if name.startswith(("_e{", "_sc")):
        raise ProtocolError(
            f"metric name {_show(name)} starts with {name[:3]!r}, which the Datadog agent"
            " reads as an event or a service check: rename the metric"
        )
    prefix = name + ":"
    if len(prefix) <= _CACHED_LEN:
        if len(_NAME_CACHE) >= _CACHE_MAX:
            _NAME_CACHE.clear()
        _NAME_CACHE[name] = prefix
    return prefix


def _format_number(value: object, what: str) -> str:
    """The shortest text that reads back as exactly ``value``.

    Integers (and integral floats below 1e16) are written without ``.0``; other
    floats use ``repr``, the shortest string that round-trips. Large or tiny floats
    come out with an exponent (``1e+16``, ``1.5e-07``), which every StatsD parser
    reads (Go's ``strconv.ParseFloat`` in the Datadog agent, JavaScript's
    ``Number`` in etsy statsd, ``strtod`` elsewhere). NaN and infinities are
    refused: no agent can aggregate them.
    """
    kind = type(value)
    if kind is float:
        number: float = value  # type: ignore[assignment]
        if number.is_integer():
            if -_EXACT_INT < number < _EXACT_INT:
                return "%d" % number  # noqa: UP031 - twice as fast as f"{number:.0f}"
            return repr(number)
        if number - number == 0.0:  # false for NaN and infinities
            return repr(number)
        raise ProtocolError(f"{what} must be a finite number, got {number!r}", "bad_value")
    if kind is int:
        integer: int = value  # type: ignore[assignment]
        if -_EXACT_INT < integer < _EXACT_INT:
            return str(integer)
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ProtocolError(
            f"{what} must be a number (int or float), got {type(value).__name__} {_show(value)}",
            "bad_value",
        )
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(
            f"{what} must be a finite number, got {type(value).__name__} {_show(value)}",
            "bad_value",
        ) from None
    return _format_number(number, what)


_RATE_CACHE: dict[object, str] = {}


def _format_rate(rate: object) -> str:
    """``"|@<rate>"`` once ``rate`` is known to lie in (0, 1] (cached: rates are few)."""
    if (
        not isinstance(rate, (int, float))
        or isinstance(rate, bool)
        or not 0.0 < rate <= 1.0  # also false for NaN
    ):
        raise ProtocolError(
            f"sample_rate must be a number in (0, 1], got {_show(rate)}", "bad_sample_rate"
        )
    text = "|@" + _format_number(rate, "sample_rate")
    if len(_RATE_CACHE) >= _CACHE_MAX:
        _RATE_CACHE.clear()
    _RATE_CACHE[rate] = text
    return text


def _format_values(mtype: str, value: object, delta: bool) -> str:
    if mtype == "s":
        if isinstance(value, str):
            if not value:
                raise ProtocolError("set member is empty: sets count distinct non-empty strings")
            if "|" in value or "\n" in value or "\r" in value:
                raise ProtocolError(
                    f"set member {_show(value)} contains '|' or a line break, which would"
                    " end the line early: remove them"
                )
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _format_number(value, "set member")
        raise ProtocolError(
            f"a set takes one member (a str or an int), got {type(value).__name__} {_show(value)}"
        )
    kind = type(value)
    if kind is float or kind is int:
        text = _format_number(value, "metric value")
        if delta and text[0] != "-":
            return "+" + text
        return text
    if isinstance(value, (str, bytes, bytearray)):
        raise ProtocolError(
            f"metric value must be a number (only sets, type 's', take strings),"
            f" got {type(value).__name__} {_show(value)}",
            "bad_value",
        )
    if kind is tuple or kind is list or isinstance(value, Iterable):
        texts = [
            # finite floats with a fraction (the usual sample) go straight to repr
            repr(item)
            if item.__class__ is float and item - item == 0.0 and not item.is_integer()
            else _format_number(item, "metric value")
            for item in cast("Iterable[Any]", value)
        ]
        if not texts:
            raise ProtocolError("no metric value given: pass a number or a non-empty sequence")
        if delta:
            texts = [text if text[0] == "-" else "+" + text for text in texts]
        return ":".join(texts)
    return _format_number(value, "metric value")


def _check_field(value: object, what: str) -> str | None:
    """A free-text field (hostname, key, container id...): ``None`` if empty."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a str, got {type(value).__name__} {_show(value)}")
    if "|" in value or "\n" in value or "\r" in value:
        raise ProtocolError(
            f"{what} {_show(value)} contains '|' or a line break, which would end the field"
            " early: remove them"
        )
    return value


def _check_timestamp(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ProtocolError(f"{what} must be unix seconds (an int), got {value!r}")
    if isinstance(value, float):
        if not value - value == 0.0:
            raise ProtocolError(f"{what} must be finite, got {value!r}")
        value = int(value)  # time.time() works: truncated to whole seconds
    if not isinstance(value, int):
        raise ProtocolError(
            f"{what} must be unix seconds (an int), got {type(value).__name__} {_show(value)}"
        )
    if not 0 < value < 2**63:
        raise ProtocolError(f"{what} must be positive unix seconds (below 2**63), got {value}")
    return value


def _clean_tag(tag: object) -> str:
    if not isinstance(tag, str):
        raise ProtocolError(f"tags must be strings, got {type(tag).__name__} {_show(tag)}")
    if "," in tag or "|" in tag or "\n" in tag or "\r" in tag:
        return tag.replace(",", "_").replace("|", "_").replace("\n", "_").replace("\r", "_")
    return tag


def encode_tags(tags: Tags) -> str:
    """Tags as the comma-separated list that follows ``|#`` on the wire (``""`` if none).

    Accepts a list (or any iterable) of ``"key:value"`` / bare tags, a mapping
    ``{key: value}`` (``None`` makes a bare ``key``; other values go through
    ``str``), or a string that is already a comma-separated list. A client can call
    it once for its constant tags and pass the result back as ``tags=`` on every
    call: an encoded string costs almost nothing to check again.

    Normalised, not refused: a comma, ``|`` or line break inside a tag becomes
    ``_``, the character Datadog itself substitutes for any character it does not
    allow in tags, and empty tags are dropped (the agent drops them too). A tag often
    carries runtime data (a path, a user agent) and losing the whole metric over one
    character would be worse than rewriting it. Tag order is kept; nothing is
    lowercased or deduplicated.
    """
    if not tags:
        return ""
    # Clients send the same few tag sets over and over: the encoded text is cached
    # by value (a hashable copy), and the work below is only done once per set.
    try:
        kind = tags.__class__
        if kind is tuple or kind is str:
            key: object = tags
        elif kind is list:
            key = tuple(tags)
        elif isinstance(tags, Mapping):
            # Not the items themselves: {"a": 1} == {"a": True} but their tags differ.
            key = tags = tuple([f"{k}:{v}" if v is not None else f"{k}" for k, v in tags.items()])
        else:
            key = None
        text = _TAGS_CACHE.get(key) if key is not None else None
    except TypeError:  # something unhashable in there: not cached
        key = None
        text = None
    if text is None:
        text = _encode_tags(tags)
        if key is not None and len(text) <= _CACHED_LEN:
            if len(_TAGS_CACHE) >= _CACHE_MAX:
                _TAGS_CACHE.clear()
            _TAGS_CACHE[key] = text
    return text


def _encode_tags(tags: Tags) -> str:
    if isinstance(tags, str):
        text = tags
        if "|" in text or "\n" in text or "\r" in text:
            text = text.replace("|", "_").replace("\n", "_").replace("\r", "_")
        if ",," in text or text[:1] == "," or text[-1:] == ",":
            text = ",".join(tag for tag in text.split(",") if tag)
        return text
    if isinstance(tags, Mapping):
        return _join_tags([f"{k}:{v}" if v is not None else f"{k}" for k, v in tags.items()])
    if isinstance(tags, (bytes, bytearray, memoryview)):
        raise ProtocolError("tags must be str, not bytes: decode them first")
    if tags is None:
        return ""
    return _join_tags(list(tags))


_TAGS_CACHE: dict[object, str] = {}


def _join_tags(items: Sequence[str]) -> str:
    try:
        text = ",".join(items)
    except TypeError:
        text = ""  # a non-str tag: the slow path below names it
    else:
        if (
            text
            and text.count(",") == len(items) - 1
            and "|" not in text
            and "\n" not in text
            and "\r" not in text
            and ",," not in text
            and text[0] != ","
            and text[-1] != ","
        ):
            return text
    return ",".join(tag for tag in map(_clean_tag, items) if tag)


def encode_metric(
    name: str,
    type: MetricType,
    value: Value,
    *,
    sample_rate: float = 1.0,
    tags: Tags = None,
    timestamp: float | None = None,
    container_id: str | None = None,
    delta: bool = False,
) -> bytes:
    """One metric line, ``name:value[:value...]|type[|@rate][|#tags][|T<ts>][|c:<id>]``.

    This is the client's hot path: it takes the pieces, not a :class:`Metric`, and
    caches validated names. ``value`` is a number, an iterable of numbers (packed on
    one line, DogStatsD protocol 1.1, for every type but sets) or, for a set, the
    member (a str; an int is written as its digits). Defaults are left out of the
    line (rate 1, no tags, no timestamp, no container id).

    Refused with :class:`ProtocolError`: an empty name or one containing ``| : @ #
    ,``, whitespace or control characters (or starting with ``_e{`` / ``_sc``, which
    the agent reads as an event / service check); an unknown type; a value that is
    not a finite number (NaN and infinities cannot be aggregated); a sample rate
    outside (0, 1]; a timestamp that is not positive, or on a type other than ``c``
    or ``g`` (the agent only honours timestamps there); a container id with ``|`` or
    a line break; ``delta`` on a type other than ``g``. Tags are normalised (see
    :func:`encode_tags`). A float timestamp is truncated to whole seconds.

    ``delta=True`` writes plain-StatsD gauge changes (``+5``, ``-3``): only for
    servers that understand them; the Datadog agent reads them as absolute values.
    """
    prefix = _NAME_CACHE.get(name) if name.__class__ is str else None
    if prefix is None:
        prefix = _name_prefix(name)
    if type.__class__ is not str or type not in _TYPES:
        raise ProtocolError(
            f"metric type {_show(type)} is not one of c, g, ms, h, d, s", "unknown_type"
        )
    if delta and type != "g":
        raise ProtocolError(f"delta=True is only meaningful for gauges ('g'), not {type!r}")
    # The common cases inline (one int, one finite float); the rest in _format_values.
    kind = value.__class__
    number = value  # only used as a number once kind says it is one
    if kind is int and not delta and -_EXACT_INT < number < _EXACT_INT:
        line = prefix + str(number) + "|" + type
    elif kind is float and not delta and number - number == 0.0:
        if number.is_integer() and -_EXACT_INT < number < _EXACT_INT:
            line = prefix + "%d" % number + "|" + type  # noqa: UP031 - see _format_number
        else:
            line = prefix + repr(number) + "|" + type
    else:
        line = prefix + _format_values(type, value, delta) + "|" + type
    if sample_rate != 1.0:
        try:
            rate = _RATE_CACHE.get(sample_rate)
        except TypeError:  # unhashable: certainly not a rate
            rate = None
        if rate is None:
            rate = _format_rate(sample_rate)
        line += rate
    if tags:
        text = encode_tags(tags)
        if text:
            line += "|#" + text
    if timestamp is not None:
        if type not in {"c", "g"}:
            raise ProtocolError(
                f"a timestamp is only honoured on counts ('c') and gauges ('g'), not {type!r}:"
                " drop the timestamp or send a gauge/count",
                "bad_timestamp",
            )
        line += f"|T{_check_timestamp(timestamp, 'timestamp')}"
    if container_id:
        line += "|c:" + str(_check_field(container_id, "container_id"))
    try:
        return line.encode()
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"metric line is not valid UTF-8 text: {exc}") from None


def _escape_text(text: str) -> str:
    """Line breaks as the two characters ``\\n``, the only escape DogStatsD has."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", "\\n")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 text: {exc}") from None


def encode_event(
    title: str,
    text: str,
    *,
    timestamp: float | None = None,
    hostname: str | None = None,
    aggregation_key: str | None = None,
    priority: Priority | None = None,
    source_type_name: str | None = None,
    alert_type: AlertType | None = None,
    tags: Tags = None,
) -> bytes:
    """One event line, ``_e{<title bytes>,<text bytes>}:title|text[|d:..][|h:..]...[|#..]``.

    The optional fields come in the order ``d:`` (timestamp), ``h:`` (hostname),
    ``k:`` (aggregation key), ``p:`` (priority), ``s:`` (source type name), ``t:``
    (alert type), ``#`` (tags). The lengths count UTF-8 bytes of the escaped title
    and text, which may therefore contain ``|``. Line breaks (``\\n``, ``\\r\\n``,
    ``\\r``) in the title and text are sent as the two characters ``\\n``, as the
    Datadog clients do and the agent undoes (so a literal backslash followed by
    ``n`` comes back as a line break: the format has no way to escape it). ``None``
    or empty optional fields are left out.

    Refused with :class:`ProtocolError`: an empty title (the agent rejects it); a
    priority other than ``normal``/``low``; an alert type other than
    ``error``/``warning``/``info``/``success``; a hostname, aggregation key or
    source type with ``|`` or a line break; a non-positive timestamp. Tags are
    normalised (see :func:`encode_tags`).
    """
    if not isinstance(title, str) or not title:
        raise ProtocolError(f"event title must be a non-empty str, got {_show(title)}")
    if not isinstance(text, str):
        raise ProtocolError(f"event text must be a str, got {type(text).__name__}")
    title_bytes = _utf8(_escape_text(title), "event title")
    text_bytes = _utf8(_escape_text(text), "event text")
    parts = [
        b"_e{%d,%d}:" % (len(title_bytes), len(text_bytes)),
        title_bytes,
        b"|",
        text_bytes,
    ]
    fields: list[str] = []
    if timestamp is not None:
        fields.append(f"d:{_check_timestamp(timestamp, 'event timestamp')}")
    for prefix, value, what in (
        ("h:", hostname, "hostname"),
        ("k:", aggregation_key, "aggregation_key"),
    ):
        checked = _check_field(value, what)
        if checked is not None:
            fields.append(prefix + checked)
    if priority is not None:
        if priority.__class__ is not str or priority not in _PRIORITIES:
            raise ProtocolError(f"event priority must be 'normal' or 'low', got {_show(priority)}")
        fields.append("p:" + priority)
    source = _check_field(source_type_name, "source_type_name")
    if source is not None:
        fields.append("s:" + source)
    if alert_type is not None:
        if alert_type.__class__ is not str or alert_type not in _ALERT_TYPES:
            raise ProtocolError(
                "event alert_type must be 'error', 'warning', 'info' or 'success',"
                f" got {_show(alert_type)}"
            )
        fields.append("t:" + alert_type)
    tag_text = encode_tags(tags)
    if tag_text:
        fields.append("#" + tag_text)
    if fields:
        parts.append(_utf8("|" + "|".join(fields), "event field"))
    return b"".join(parts)


def encode_service_check(
    name: str,
    status: int,
    *,
    timestamp: float | None = None,
    hostname: str | None = None,
    tags: Tags = None,
    message: str | None = None,
) -> bytes:
    """One service check line, ``_sc|name|status[|d:ts][|h:host][|#tags][|m:message]``.

    The message comes last, as the format requires; its line breaks are sent as
    ``\\n`` and any ``m:`` inside it as ``m\\:``, as the Datadog clients do.

    Refused with :class:`ProtocolError`: an empty name or one with ``|`` or a line
    break (spaces are fine: ``Redis connection`` is a valid check name); a status
    that is not an int in 0..3 (see :class:`Status`); a hostname or message with
    ``|`` (the agent would cut the field there and read the rest as new fields: a
    message could inject tags); a non-positive timestamp. Tags are normalised (see
    :func:`encode_tags`).
    """
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"service check name must be a non-empty str, got {_show(name)}")
    if "|" in name or "\n" in name or "\r" in name:
        raise ProtocolError(
            f"service check name {_show(name)} contains '|' or a line break: remove them"
        )
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 3:
        raise ProtocolError(
            f"service check status must be 0 (OK), 1 (WARNING), 2 (CRITICAL) or 3 (UNKNOWN),"
            f" got {_show(status)}"
        )
    fields = ["_sc", name, str(int(status))]
    if timestamp is not None:
        fields.append(f"d:{_check_timestamp(timestamp, 'service check timestamp')}")
    host = _check_field(hostname, "hostname")
    if host is not None:
        fields.append("h:" + host)
    tag_text = encode_tags(tags)
    if tag_text:
        fields.append("#" + tag_text)
    if message:
        if not isinstance(message, str):
            raise ProtocolError(f"service check message must be a str, got {_show(message)}")
        if "|" in message:
            raise ProtocolError(
                f"service check message {_show(message)} contains '|', which the agent"
                " treats as the start of a new field: replace it"
            )
        fields.append("m:" + _escape_text(message).replace("m:", "m\\:"))
    return _utf8("|".join(fields), "service check")


def encode(item: Metric | Event | ServiceCheck) -> bytes:
    """Any of :class:`Metric`, :class:`Event`, :class:`ServiceCheck` as one line.

    The same validation as :func:`encode_metric`, :func:`encode_event` and
    :func:`encode_service_check`, which it calls with the item's fields.
    """
    if isinstance(item, Metric):
        if item.type == "s":
            if item.set_value is None:
                raise ProtocolError(
                    f"set metric {_show(item.name)} has no set_value: a set carries its"
                    " member in set_value, not in values"
                )
            value: Value = item.set_value
        elif item.set_value is not None:
            raise ProtocolError(
                f"metric {_show(item.name)} of type {item.type!r} has a set_value: only"
                " sets ('s') have one; put the numbers in values"
            )
        else:
            value = item.values
        return encode_metric(
            item.name,
            item.type,
            value,
            sample_rate=item.sample_rate,
            tags=item.tags,
            timestamp=item.timestamp,
            container_id=item.container_id,
            delta=item.delta,
        )
    if isinstance(item, Event):
        return encode_event(
            item.title,
            item.text,
            timestamp=item.timestamp,
            hostname=item.hostname,
            aggregation_key=item.aggregation_key,
            priority=item.priority,
            source_type_name=item.source_type_name,
            alert_type=item.alert_type,
            tags=item.tags,
        )
    if isinstance(item, ServiceCheck):
        return encode_service_check(
            item.name,
            item.status,
            timestamp=item.timestamp,
            hostname=item.hostname,
            tags=item.tags,
            message=item.message,
        )
    raise ProtocolError(
        f"cannot encode {type(item).__name__}: expected a Metric, Event or ServiceCheck"
    )
