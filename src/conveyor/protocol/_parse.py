"""Parsing DogStatsD packets: the agent's ingestion hot loop.

One pass per packet: decode it once, split it into lines, split each metric line on
``|`` and dispatch the optional fields on their first character. No regular
expressions; no exception for a good line. A bad line is counted by reason and
skipped; nothing a client sends can make :func:`parse_packet` raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ._model import (
    AlertType,
    Event,
    Metric,
    MetricType,
    ParseResult,
    Priority,
    ProtocolError,
    ServiceCheck,
    Status,
)

BAD_LINE_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "bad_utf8": "the line is not valid UTF-8",
        "malformed": "not a metric line (name:value|type), an event or a service check",
        "empty_name": "the metric name is empty",
        "bad_value": "a metric value is missing, not a decimal number, or not finite"
        " (or, in the StatsD dialect, a packed gauge mixes signed and unsigned values)",
        "unknown_type": "the metric type is not one of c, g, ms, h, d, s",
        "bad_sample_rate": "the @sample rate is not a number in (0, 1]",
        "bad_timestamp": "the T timestamp is not a positive integer",
        "bad_event": "the event header is malformed, its title is empty, or its lengths"
        " do not match the title and text",
        "bad_service_check": "the service check has no name, or its status is not 0-3",
    }
)
"""Every key :attr:`ParseResult.errors` may hold, with what it means: an agent can
register one bad-line counter per reason up front."""

_TYPES: dict[str, MetricType] = {"c": "c", "g": "g", "ms": "ms", "h": "h", "d": "d", "s": "s"}
_PRIORITIES: dict[str, Priority] = {"normal": "normal", "low": "low"}
_ALERT_TYPES: dict[str, AlertType] = {
    "error": "error",
    "warning": "warning",
    "info": "info",
    "success": "success",
}
_STATUSES: dict[str, Status] = {
    "0": Status.OK,
    "1": Status.WARNING,
    "2": Status.CRITICAL,
    "3": Status.UNKNOWN,
}
# What a decimal number (or a list of them, packed with ':') is made of. Python's
# float() also accepts "nan", "inf", "1_000", surrounding whitespace and non-ASCII
# digits; no StatsD server does, so a value with anything else is refused.
_NUMBER_CHARS = "0123456789.eE+-:"
_MAX_TIMESTAMP = 2**63 - 1

Item = Metric | Event | ServiceCheck


def _tags(text: str) -> tuple[str, ...]:
    if not text:
        return ()
    if ",," in text or text[0] == "," or text[-1] == ",":
        return tuple(tag for tag in text.split(",") if tag)
    return tuple(text.split(","))


def _timestamp(text: str) -> int | None:
    """Positive unix seconds that fit a signed 64-bit int (as the agent reads them)."""
    if len(text) <= 19 and text.isdigit() and text.isascii():
        value = int(text)
        if 0 < value <= _MAX_TIMESTAMP:
            return value
    return None


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n") if "\\n" in text else text


def _parse_event(line: str) -> Event | None:
    """``_e{<title len>,<text len>}:title|text|field...`` or ``None`` if malformed.

    The lengths count UTF-8 bytes; the title must be non-empty and the byte after it
    must be ``|``, and whatever follows the text must be empty or another field
    (stricter than the Datadog agent, which does not check the separators: wrong
    lengths mean a mangled line). Bad ``d:``, ``p:`` and ``t:`` values are ignored
    and the event kept, as the agent does; unknown fields are ignored.
    """
    colon = line.find(":", 3)
    title_len, comma, text_len = line[3 : colon - 1].partition(",")
    if (
        colon < 0
        or line[colon - 1] != "}"
        or not comma
        or not (title_len.isdigit() and text_len.isdigit())
        or not (title_len.isascii() and text_len.isascii())
        or len(title_len) > 9  # more than a datagram could hold (and int() stays cheap)
        or len(text_len) > 9
    ):
        return None
    start = int(title_len)
    body = line[colon + 1 :].encode()
    end = start + 1 + int(text_len)
    if (
        start == 0
        or len(body) < end
        or body[start] != 0x7C  # '|'
        or (len(body) > end and body[end] != 0x7C)
    ):
        return None
    try:
        title = body[:start].decode()
        text = body[start + 1 : end].decode()
        rest = body[end + 1 :].decode()
    except UnicodeDecodeError:
        return None
    timestamp: int | None = None
    hostname = aggregation_key = source = None
    priority: Priority | None = None
    alert_type: AlertType | None = None
    tags: tuple[str, ...] = ()
    if len(body) > end:
        for field in rest.split("|"):
            head = field[:2]
            if head == "d:":
                timestamp = _timestamp(field[2:]) or timestamp
            elif head == "h:":
                hostname = field[2:] or None
            elif head == "k:":
                aggregation_key = field[2:] or None
            elif head == "p:":
                priority = _PRIORITIES.get(field[2:], priority)
            elif head == "s:":
                source = field[2:] or None
            elif head == "t:":
                alert_type = _ALERT_TYPES.get(field[2:], alert_type)
            elif field[:1] == "#":
                tags = _tags(field[1:])
    return Event(
        _unescape(title),
        _unescape(text),
        timestamp,
        hostname,
        aggregation_key,
        priority,
        source,
        alert_type,
        tags,
    )


def _parse_service_check(line: str) -> ServiceCheck | None:
    """``_sc|name|status|field...`` or ``None`` if the name or the status is bad.

    Bad ``d:`` values are ignored and the check kept, as the agent does; the
    message's ``\\n`` and ``m\\:`` escapes are undone.
    """
    fields = line.split("|")
    if len(fields) < 3 or not fields[1]:
        return None
    status = _STATUSES.get(fields[2])
    if status is None:
        return None
    timestamp: int | None = None
    hostname = message = None
    tags: tuple[str, ...] = ()
    for field in fields[3:]:
        head = field[:2]
        if head == "d:":
            timestamp = _timestamp(field[2:]) or timestamp
        elif head == "h:":
            hostname = field[2:] or None
        elif head == "m:":
            message = _unescape(field[2:].replace("m\\:", "m:")) or None
        elif field[:1] == "#":
            tags = _tags(field[1:])
    return ServiceCheck(fields[1], status, timestamp, hostname, tags, message)


def _signed_gauge(raw: str) -> bool | None:
    """StatsD dialect: are the gauge's values changes (all signed) or values (none)?

    ``None`` when some are signed and some not: the line cannot be one Metric.
    """
    signs = {part[0] in "+-" for part in raw.split(":") if part}
    if len(signs) == 1:
        return signs.pop()
    return None if signs else False


_Options = tuple[float, tuple[str, ...], int | None, str | None]
_OPTIONS_CACHE: dict[str, _Options] = {}
# At most _CACHE_MAX option fields of up to _CACHED_LEN characters are remembered
# (then all forgotten at once): a few MB at worst, whatever clients send.
_CACHE_MAX = 4096
_CACHED_LEN = 512


def _parse_options(text: str) -> _Options | str:
    """``(rate, tags, timestamp, container id)`` from the fields after the type.

    Returns the :data:`BAD_LINE_REASONS` key instead when a field is bad. The result
    is remembered when it has no timestamp: a client sends the same few
    rate-and-tags combinations over and over, and equal tag sets then also share
    one tuple, which saves the aggregator memory.
    """
    rate = 1.0
    tags: tuple[str, ...] = ()
    timestamp = None
    container_id = None
    for field in text.split("|"):
        first = field[:1]
        if first == "#":
            tags = _tags(field[1:])
        elif first == "@":
            number = field[1:]
            try:
                rate = float(number)
            except ValueError:
                return "bad_sample_rate"
            if not 0.0 < rate <= 1.0 or number.lstrip(_NUMBER_CHARS):
                return "bad_sample_rate"
        elif first == "T":
            timestamp = _timestamp(field[1:])
            if timestamp is None:
                return "bad_timestamp"
        elif first == "c" and field[1:2] == ":":
            container_id = field[2:] or None
        # any other field (e:, card:, future ones) is ignored, as the agent does
    options = (rate, tags, timestamp, container_id)
    if timestamp is None and len(text) <= _CACHED_LEN:
        if len(_OPTIONS_CACHE) >= _CACHE_MAX:
            _OPTIONS_CACHE.clear()
        _OPTIONS_CACHE[text] = options
    return options


# Whole metric lines seen before, with what they parsed to, for the types whose lines
# repeat verbatim: a counter's increments (``requests:1|c|#route:/a``), a gauge's few
# states, a set's members. Timings, histograms and distributions carry measurements
# that seldom repeat: remembering those would only churn the cache. One cache per
# dialect (a signed gauge means two things); bounded like _OPTIONS_CACHE (at most
# _LINE_CACHE_MAX lines of up to _CACHED_LEN characters, then all forgotten at once).
# A Metric is immutable, so the packets that share a line share its Metric.
_LINE_CACHES: tuple[dict[str, Metric], dict[str, Metric]] = ({}, {})
_LINE_CACHE_MAX = 4096
_REPEATING_TYPES = frozenset(("c", "g", "s"))


def _count(errors: dict[str, int], reason: str) -> None:
    errors[reason] = errors.get(reason, 0) + 1


def _parse_lines(
    lines: list[str], statsd_dialect: bool, special: bool, result: ParseResult
) -> None:
    """Parse ``lines`` (no line ends) into ``result``.

    The hot loop: per line it calls only C methods and dict lookups, and builds the
    Metric with ``tuple.__new__`` (a third of the cost of ``Metric(...)``). A line
    seen before (see ``_LINE_CACHES``) costs one lookup. It only looks for events and
    service checks when the packet holds any (``special``).
    """
    new = tuple.__new__
    types = _TYPES
    number_chars = _NUMBER_CHARS
    options_cache = _OPTIONS_CACHE
    line_cache = _LINE_CACHES[statsd_dialect]
    repeating = _REPEATING_TYPES
    append = result.metrics.append
    errors = result.errors
    for line in lines:
        metric = line_cache.get(line)
        if metric is not None:
            append(metric)
            continue
        if not line:
            continue
        if special and line[0] == "_":
            if line.startswith("_e{"):
                event = _parse_event(line)
                if event is None:
                    _count(errors, "bad_event")
                else:
                    result.events.append(event)
                continue
            if line.startswith("_sc|"):
                check = _parse_service_check(line)
                if check is None:
                    _count(errors, "bad_service_check")
                else:
                    result.service_checks.append(check)
                continue
        fields = line.split("|", 2)  # name:value, type, and the rest if any
        name, colon, raw = fields[0].partition(":")
        if not colon or len(fields) < 2:
            _count(errors, "malformed")
            continue
        if not name:
            _count(errors, "empty_name")
            continue
        mtype = types.get(fields[1])
        if mtype is None:
            _count(errors, "unknown_type")
            continue
        values: tuple[float, ...] = ()
        set_value = None
        delta = False
        if mtype == "s":
            if not raw:
                _count(errors, "bad_value")
                continue
            set_value = raw
        else:
            if raw.lstrip(number_chars):  # not a plain decimal number (or list of them)
                _count(errors, "bad_value")
                continue
            try:
                if ":" in raw:
                    values = tuple([float(part) for part in raw.split(":") if part])
                    total = sum(values)  # finite unless a value is (or they add up to) inf
                    if not values or (
                        total - total != 0.0 and any(value - value != 0.0 for value in values)
                    ):
                        _count(errors, "bad_value")
                        continue
                else:
                    value = float(raw)
                    if value - value != 0.0:  # infinite, e.g. 1e999
                        _count(errors, "bad_value")
                        continue
                    values = (value,)
            except ValueError:  # empty, or "1.2.3", "e", "+-1"...
                _count(errors, "bad_value")
                continue
            if statsd_dialect and mtype == "g":
                signed = _signed_gauge(raw)
                if signed is None:
                    _count(errors, "bad_value")
                    continue
                delta = signed
        if len(fields) == 2:
            metric = new(Metric, (name, mtype, values, 1.0, (), None, None, set_value, delta))
        else:
            options = options_cache.get(fields[2])
            if options is None:
                parsed = _parse_options(fields[2])
                if isinstance(parsed, str):
                    _count(errors, parsed)
                    continue
                options = parsed
            metric = new(Metric, (name, mtype, values, *options, set_value, delta))
        append(metric)
        # Not with a timestamp: those lines differ from one second to the next.
        if mtype in repeating and metric.timestamp is None and len(line) <= _CACHED_LEN:
            if len(line_cache) >= _LINE_CACHE_MAX:
                line_cache.clear()
            line_cache[line] = metric


def parse_packet(
    data: bytes | bytearray | memoryview, *, statsd_dialect: bool = False
) -> ParseResult:
    """Every metric, event and service check in one packet, and a count of bad lines.

    ``data`` is a datagram (or a stream frame) of ``\\n``-separated lines; a
    trailing newline, empty lines and ``\\r\\n`` line ends are accepted. Each line
    is one of:

    * a metric, ``name:value[:value...]|type[|@rate][|#tag,...][|T<ts>][|c:<id>]``,
      with the optional fields in any order; unknown fields (``e:``, ``card:``,
      future ones) are ignored, as the Datadog agent does; a repeated ``#`` field
      replaces the previous one (as in the agent); empty tags and empty packed values
      (``1::2``) are skipped; a set's value is kept whole as ``set_value``;
    * an event, ``_e{<title bytes>,<text bytes>}:title|text|...``;
    * a service check, ``_sc|name|status|...``.

    A line that cannot be read is skipped and counted in ``errors`` under one of
    the keys of :data:`BAD_LINE_REASONS`; it never stops the rest of the packet, and
    no input makes this function raise. Stricter than the Datadog agent: values
    must be plain decimal numbers (no NaN, infinities, ``_`` or spaces), sample
    rates must lie in (0, 1], and event lengths must match their separators. More
    lenient in one place: only ``_sc|``, not any ``_sc`` prefix, marks a service
    check, so ``_score:1|c`` is a metric.

    ``statsd_dialect=True`` reads plain StatsD: a gauge whose values all carry a
    sign (``gauge:+5|g``, ``gauge:-3|g``) is a change, flagged ``delta=True``. In
    DogStatsD (the default) a sign is just the sign of an absolute value.
    """
    result = ParseResult()
    try:
        text = str(data, "utf-8")
    except UnicodeDecodeError:
        # Rare: keep the good lines of a packet with a corrupt one.
        lines = []
        for raw_line in bytes(data).split(b"\n"):
            try:
                lines.append(raw_line.decode())
            except UnicodeDecodeError:
                _count(result.errors, "bad_utf8")
            else:
                if lines[-1][-1:] == "\r":
                    lines[-1] = lines[-1][:-1]
        _parse_lines(lines, statsd_dialect, True, result)
        return result
    if "\r" in text:  # CRLF line ends, once per packet rather than once per line
        text = text.replace("\r\n", "\n")
        if text[-1] == "\r":
            text = text[:-1]
    special = "_e{" in text or "_sc|" in text
    _parse_lines(text.split("\n"), statsd_dialect, special, result)
    return result


def parse_line(line: bytes, *, statsd_dialect: bool = False) -> Item:
    """One line (optionally ending in ``\\n`` or ``\\r\\n``) as a Metric, Event or ServiceCheck.

    The same rules as :func:`parse_packet`, for callers that frame lines
    themselves (tests, a line-based TCP listener). Raises :class:`ProtocolError`
    with ``reason`` set to the :data:`BAD_LINE_REASONS` key (or ``"empty"``,
    ``"multiple_lines"``) when the line cannot be read.
    """
    body = line[:-1] if line.endswith(b"\n") else line
    if b"\n" in body:
        raise ProtocolError("more than one line: use parse_packet()", "multiple_lines")
    result = parse_packet(body, statsd_dialect=statsd_dialect)
    if result.metrics:
        return result.metrics[0]
    if result.events:
        return result.events[0]
    if result.service_checks:
        return result.service_checks[0]
    for reason in result.errors:
        shown = repr(bytes(line[:120]))
        raise ProtocolError(f"{BAD_LINE_REASONS[reason]}: {shown}", reason)
    raise ProtocolError("empty line", "empty")
