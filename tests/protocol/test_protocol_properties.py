"""Property tests: what the encoder writes, the parser reads back unchanged, and no
input makes the parser raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.protocol import (
    BAD_LINE_REASONS,
    Event,
    Metric,
    MetricType,
    Packer,
    ServiceCheck,
    encode,
    encode_metric,
    parse_line,
    parse_packet,
)

# -- strategies -------------------------------------------------------------------

# Any character that can be sent (no lone surrogates), minus line breaks.
_TEXT = st.characters(codec="utf-8", exclude_characters="\n\r")


def _text_without(forbidden: str, *, min_size: int = 1) -> st.SearchStrategy[str]:
    return st.text(
        st.characters(codec="utf-8", exclude_characters=forbidden + "\n\r"),
        min_size=min_size,
        max_size=30,
    )


# Metric names: no separators, no whitespace or control characters.
names = st.text(
    st.characters(
        codec="utf-8", exclude_categories=["Cc", "Zs", "Zl", "Zp"], exclude_characters="|:@#,"
    ),
    min_size=1,
    max_size=40,
).filter(lambda name: not name.startswith(("_e{", "_sc")) and not any(c.isspace() for c in name))
tag = _text_without(",|")
tags = st.lists(tag, max_size=5).map(tuple)
field_text = _text_without("|")  # hostnames, keys, container ids, set members
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
)
rates = st.one_of(st.just(1.0), st.floats(min_value=0.0, max_value=1.0, exclude_min=True))
timestamps = st.integers(min_value=1, max_value=2**63 - 1)


TYPES: list[MetricType] = ["c", "g", "ms", "h", "d", "s"]


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    mtype = draw(st.sampled_from(TYPES))
    values: tuple[float, ...] = ()
    set_value = None
    if mtype == "s":
        set_value = draw(field_text)
    else:
        values = tuple(draw(st.lists(numbers, min_size=1, max_size=4)))
    return Metric(
        draw(names),
        mtype,
        values,
        sample_rate=draw(rates),
        tags=draw(tags),
        timestamp=draw(st.none() | timestamps) if mtype in ("c", "g") else None,
        container_id=draw(st.none() | field_text),
        set_value=set_value,
    )


def _no_escape_lookalike(text: str) -> bool:
    # A literal backslash-n (or, in a check message, "m\:") is read back as the
    # escape it looks like: the format has no escape for the backslash itself.
    return "\\n" not in text and "m\\:" not in text


# Event titles and texts may hold "|" and line breaks (escaped), but no "\r"
# (normalised to "\n", tested separately).
event_text = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=60).filter(
    _no_escape_lookalike
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        title=draw(event_text.filter(bool)),
        text=draw(event_text),
        timestamp=draw(st.none() | timestamps),
        hostname=draw(st.none() | field_text),
        aggregation_key=draw(st.none() | field_text),
        priority=draw(st.sampled_from([None, "normal", "low"])),
        source_type_name=draw(st.none() | field_text),
        alert_type=draw(st.sampled_from([None, "error", "warning", "info", "success"])),
        tags=draw(tags),
    )


@st.composite
def service_checks(draw: st.DrawFn) -> ServiceCheck:
    message = st.text(
        st.characters(codec="utf-8", exclude_characters="|\r"),
        min_size=1,
        max_size=60,
    ).filter(_no_escape_lookalike)
    return ServiceCheck(
        name=draw(field_text),
        status=draw(st.integers(min_value=0, max_value=3)),
        timestamp=draw(st.none() | timestamps),
        hostname=draw(st.none() | field_text),
        tags=draw(tags),
        message=draw(st.none() | message),
    )


items = st.one_of(metrics(), events(), service_checks())


# -- round trips -----------------------------------------------------------------


@given(metrics())
def test_metric_round_trip(metric: Metric) -> None:
    assert parse_line(encode(metric)) == metric


@given(events())
def test_event_round_trip(event: Event) -> None:
    assert parse_line(encode(event)) == event


@given(service_checks())
def test_service_check_round_trip(check: ServiceCheck) -> None:
    assert parse_line(encode(check)) == check


@given(
    st.sampled_from(TYPES[:-1]),
    st.lists(numbers, min_size=1, max_size=4),
)
def test_values_are_exact(mtype: MetricType, values: list[float]) -> None:
    line = encode_metric("m", mtype, values)
    parsed = parse_line(line)
    assert isinstance(parsed, Metric)
    assert parsed.values == tuple(float(v) for v in values)
    # Integral values are written without a fraction; nothing is written as nan/inf.
    assert b".0|" not in line and b".0:" not in line
    assert b"nan" not in line and b"inf" not in line


@given(st.lists(numbers, min_size=1, max_size=3))
def test_gauge_delta_round_trip_in_statsd_dialect(values: list[float]) -> None:
    line = encode_metric("gauge", "g", values, delta=True)
    parsed = parse_line(line, statsd_dialect=True)
    assert isinstance(parsed, Metric)
    assert parsed.delta
    assert parsed.values == tuple(float(v) for v in values)
    # DogStatsD reads the same line as absolute values.
    plain = parse_line(line)
    assert isinstance(plain, Metric)
    assert not plain.delta
    assert plain.values == parsed.values


@settings(max_examples=50)
@given(st.lists(items, max_size=40), st.sampled_from([64, 512, 1432, 8192]))
def test_packed_round_trip(sent: list[Metric | Event | ServiceCheck], max_size: int) -> None:
    packer = Packer(max_size)
    datagrams: list[bytes] = []
    fitted: list[Metric | Event | ServiceCheck] = []
    for item in sent:
        try:
            datagram = packer.add(encode(item))
        except ValueError:  # OversizedLineError: counted as a drop by a client
            continue
        fitted.append(item)
        if datagram is not None:
            datagrams.append(datagram)
    last = packer.flush()
    if last is not None:
        datagrams.append(last)
    got_metrics: list[Metric] = []
    got_events: list[Event] = []
    got_checks: list[ServiceCheck] = []
    for datagram in datagrams:
        assert len(datagram) <= max_size
        result = parse_packet(datagram)
        assert result.errors == {}
        got_metrics += result.metrics
        got_events += result.events
        got_checks += result.service_checks
    assert got_metrics == [item for item in fitted if isinstance(item, Metric)]
    assert got_events == [item for item in fitted if isinstance(item, Event)]
    assert got_checks == [item for item in fitted if isinstance(item, ServiceCheck)]


# -- the parser never raises -----------------------------------------------------

_PIECES = [
    b"a",
    b"x.y",
    b":",
    b"|",
    b"#",
    b"@",
    b",",
    b"0",
    b"1",
    b"-2",
    b"+",
    b".5",
    b"e9",
    b"e999",
    b"nan",
    b"c",
    b"g",
    b"ms",
    b"s",
    b"d",
    b"h",
    b"T",
    b"c:",
    b"_e{",
    b"}",
    b"_sc",
    b"_sc|",
    b"d:",
    b"m:",
    b"\\n",
    b"\n",
    b"\r",
    b"\r\n",
    b"\xff",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"\x00",
    b" ",
    b"9" * 30,
]
packets = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join),
    st.lists(items, max_size=3).map(lambda xs: b"\n".join(encode(x) for x in xs)),
)


def _non_empty_lines(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line.removesuffix(b"\r"))


@settings(max_examples=300)
@given(packets, st.booleans())
def test_parser_never_raises_and_accounts_for_every_line(data: bytes, dialect: bool) -> None:
    result = parse_packet(data, statsd_dialect=dialect)
    assert set(result.errors) <= set(BAD_LINE_REASONS)
    assert all(count > 0 for count in result.errors.values())
    parsed = len(result.metrics) + len(result.events) + len(result.service_checks)
    assert parsed + result.bad_lines == _non_empty_lines(data)
    for metric in result.metrics:
        assert metric.name and ":" not in metric.name and "|" not in metric.name
        assert all(v - v == 0.0 for v in metric.values)
        assert 0.0 < metric.sample_rate <= 1.0
        assert (metric.set_value is not None) == (metric.type == "s")
        assert metric.delta is False or dialect


@settings(max_examples=50)
@given(packets)
def test_parse_accepts_bytearray_and_memoryview(data: bytes) -> None:
    expected = parse_packet(data)
    assert parse_packet(bytearray(data)) == expected
    assert parse_packet(memoryview(data)) == expected


@given(st.lists(st.text(_TEXT, max_size=20).map(str.encode), max_size=5))
def test_garbage_lines_do_not_hide_good_ones(garbage: list[bytes]) -> None:
    good = b"good.metric:1|c"
    result = parse_packet(b"\n".join([*garbage, good, *garbage]))
    assert Metric("good.metric", "c", (1.0,)) in result.metrics
