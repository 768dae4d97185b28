"""The parser on fixed inputs: the DogStatsD documentation's examples, other
parsers' test vectors, and each kind of bad line."""

from __future__ import annotations

import re

import pytest

from conveyor.protocol import (
    BAD_LINE_REASONS,
    Event,
    Metric,
    ParseResult,
    ProtocolError,
    ServiceCheck,
    Status,
    parse_line,
    parse_packet,
)

# -- examples from https://docs.datadoghq.com/extend/dogstatsd/datagram_shell ------

DOC_METRICS = [
    (b"page.views:1|c", Metric("page.views", "c", (1.0,))),
    (b"fuel.level:0.5|g", Metric("fuel.level", "g", (0.5,))),
    (b"song.length:240|h|@0.5", Metric("song.length", "h", (240.0,), 0.5)),
    (b"users.uniques:1234|s", Metric("users.uniques", "s", set_value="1234")),
    (
        b"users.online:1|c|#country:china",
        Metric("users.online", "c", (1.0,), tags=("country:china",)),
    ),
    (
        b"users.online:1|c|@0.5|#country:china",
        Metric("users.online", "c", (1.0,), 0.5, ("country:china",)),
    ),
    (b"page.views:1:2:32|d", Metric("page.views", "d", (1.0, 2.0, 32.0))),
    (b"song.length:240:234|h|@0.5", Metric("song.length", "h", (240.0, 234.0), 0.5)),
    (
        b"page.views:15|c|#env:dev|T1656581400",
        Metric("page.views", "c", (15.0,), tags=("env:dev",), timestamp=1656581400),
    ),
    (
        b"page.views:1|g|#env:dev|c:83c0a99c0a54c0c187f461c7980e9b57f3f6a8b0c918c8d93df19a9de6f3fe1d",
        Metric(
            "page.views",
            "g",
            (1.0,),
            tags=("env:dev",),
            container_id="83c0a99c0a54c0c187f461c7980e9b57f3f6a8b0c918c8d93df19a9de6f3fe1d",
        ),
    ),
    # plain StatsD (etsy) examples
    (b"gorets:1|c|@0.1", Metric("gorets", "c", (1.0,), 0.1)),
    (b"glork:320|ms|@0.1", Metric("glork", "ms", (320.0,), 0.1)),
    (b"gaugor:333|g", Metric("gaugor", "g", (333.0,))),
]


@pytest.mark.parametrize(("line", "expected"), DOC_METRICS, ids=[m.name for _, m in DOC_METRICS])
def test_documented_metrics(line: bytes, expected: Metric) -> None:
    assert parse_line(line) == expected


def test_documented_events() -> None:
    csv = parse_line(
        b"_e{21,36}:An exception occurred|Cannot parse CSV file from 10.0.0.17"
        b"|t:warning|#err_type:bad_file"
    )
    assert csv == Event(
        "An exception occurred",
        "Cannot parse CSV file from 10.0.0.17",
        alert_type="warning",
        tags=("err_type:bad_file",),
    )
    # The escaped "\n" (two bytes) is what the length counts; it reads back as a newline.
    text = b'Cannot parse JSON request:\\n{"foo: "bar"}'
    json = parse_line(
        b"_e{21,%d}:An exception occurred|%s|p:low|#err_type:bad_request" % (len(text), text)
    )
    assert json == Event(
        "An exception occurred",
        'Cannot parse JSON request:\n{"foo: "bar"}',
        priority="low",
        tags=("err_type:bad_request",),
    )


def test_documented_service_check() -> None:
    check = parse_line(b"_sc|Redis connection|2|#env:dev|m:Redis connection timed out after 10s")
    assert check == ServiceCheck(
        "Redis connection",
        Status.CRITICAL,
        tags=("env:dev",),
        message="Redis connection timed out after 10s",
    )


def test_event_with_every_field() -> None:
    event = parse_line(
        b"_e{5,4}:title|text|d:1700000000|h:web-1|k:deploy|p:normal|s:jenkins|t:success|#a,b:c"
    )
    assert event == Event(
        "title", "text", 1700000000, "web-1", "deploy", "normal", "jenkins", "success", ("a", "b:c")
    )


def test_event_lengths_count_utf8_bytes_and_allow_pipes() -> None:
    assert parse_line(b"_e{6,18}:ab|| c|hello,\\nmy friend!") == Event(
        "ab|| c", "hello,\nmy friend!"
    )
    assert parse_line("_e{5,5}:café|été".encode()) == Event("café", "été")


def test_event_bad_optional_fields_are_ignored_not_fatal() -> None:
    event = parse_line(b"_e{1,1}:a|b|p:urgent|t:fatal|d:yesterday|x:unknown")
    assert event == Event("a", "b")


def test_service_check_unescapes_message_and_ignores_bad_timestamp() -> None:
    check = parse_line(b"_sc|db|0|d:soon|h:db-1|m:line one\\nm\\: two")
    assert check == ServiceCheck("db", 0, hostname="db-1", message="line one\nm: two")


# -- vectors from atlassian/gostatsd's lexer tests ----------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            b"field.order.rev.all:1|g|c:xyz|#foo:bar|@0.1",
            Metric("field.order.rev.all", "g", (1.0,), 0.1, ("foo:bar",), container_id="xyz"),
        ),
        (b"a:1|g|#f,,", Metric("a", "g", (1.0,), tags=("f",))),
        (b"a:1|g|#", Metric("a", "g", (1.0,))),
        (
            b"new.first.empty:1|g||#,|c:xyz",
            Metric("new.first.empty", "g", (1.0,), container_id="xyz"),
        ),
        (
            b"new.last.prefix:1|g|#,,|c:xyz|x:",
            Metric("new.last.prefix", "g", (1.0,), container_id="xyz"),
        ),
        (b"a.packing:1:2:|ms", Metric("a.packing", "ms", (1.0, 2.0))),
        (b"a:21::22|d", Metric("a", "d", (21.0, 22.0))),
        (b"a:1|c|e:it-false,cn-nginx|card:high", Metric("a", "c", (1.0,))),
        (b"a:1|c|#x|#y", Metric("a", "c", (1.0,), tags=("y",))),  # last #-field wins
        (b"a:-5|g", Metric("a", "g", (-5.0,))),
        (b"a:+5|g", Metric("a", "g", (5.0,))),
        (b"a:1e3|c", Metric("a", "c", (1000.0,))),
        (b"a:1.5e-07|d", Metric("a", "d", (1.5e-07,))),
        (b"a:b:c|s", Metric("a", "s", set_value="b:c")),
        (b"_score:1|c", Metric("_score", "c", (1.0,))),
    ],
)
def test_metric_vectors(line: bytes, expected: Metric) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"fOO|bar:bazkk", "malformed"),
        (b"foo.bar.baz:1|q", "unknown_type"),
        (b"NaN.should.be:NaN|g", "bad_value"),
        (b"bad.sampling:1|g|@", "bad_sample_rate"),
        (b"a.packing:::|g", "bad_value"),
        (b"no_type:1", "malformed"),
        (b"no_value|c", "malformed"),
        (b":1|c", "empty_name"),
        (b"a:|c", "bad_value"),
        (b"a:|s", "bad_value"),
        (b"a:inf|g", "bad_value"),
        (b"a:-Infinity|g", "bad_value"),
        (b"a:1e999|g", "bad_value"),
        (b"a:1:1e999|d", "bad_value"),
        (b"a:1_000|c", "bad_value"),
        (b"a: 1|c", "bad_value"),
        (b"a:0x10|c", "bad_value"),
        ("a:١٢|c".encode(), "bad_value"),  # Arabic-Indic digits: float() takes them, no agent does
        (b"a:1.2.3|c", "bad_value"),
        (b"a:1|c|@0", "bad_sample_rate"),
        (b"a:1|c|@1.5", "bad_sample_rate"),
        (b"a:1|c|@-0.5", "bad_sample_rate"),
        (b"a:1|c|@nan", "bad_sample_rate"),
        (b"a:1|c|T0", "bad_timestamp"),
        (b"a:1|c|T-5", "bad_timestamp"),
        (b"a:1|c|Tnow", "bad_timestamp"),
        (b"a:1|c|T" + b"9" * 5000, "bad_timestamp"),
        (b"a:1|c|T99999999999999999999", "bad_timestamp"),  # beyond int64
        (b"_e{0,1}:|b", "bad_event"),
        (b"_e{2,1}:a|b", "bad_event"),
        (b"_e{1,2}:a|b", "bad_event"),
        (b"_e{1,1}:a|bc", "bad_event"),  # text longer than its length: mangled
        (b"_e{1,1}:ab|", "bad_event"),  # no '|' after the title
        (b"_e{1,1:a|b", "bad_event"),
        (b"_e{x,1}:a|b", "bad_event"),
        (b"_e{1}:a|b", "bad_event"),
        (b"_e{" + b"1" * 5000 + b",1}:a|b", "bad_event"),
        ("_e{1,1}:é|b".encode(), "bad_event"),  # the length cuts a character in two
        (b"_sc|name|4", "bad_service_check"),
        (b"_sc|name|OK", "bad_service_check"),
        (b"_sc||0", "bad_service_check"),
        (b"_sc|name", "bad_service_check"),
        (b"\xff\xfe:1|c", "bad_utf8"),
    ],
)
def test_bad_lines(line: bytes, reason: str) -> None:
    assert reason in BAD_LINE_REASONS
    result = parse_packet(line)
    assert result == ParseResult(errors={reason: 1})
    with pytest.raises(ProtocolError, match=re.escape(BAD_LINE_REASONS[reason])) as raised:
        parse_line(line)
    assert raised.value.reason == reason


def test_a_bad_line_does_not_stop_the_packet() -> None:
    packet = b"a:1|c\nfoo:1|q\n\xff:1|c\nb:2|g\n:1|c\nc:x|d\n_sc|x|9\nd:3|ms\n"
    result = parse_packet(packet)
    assert [m.name for m in result.metrics] == ["a", "b", "d"]
    assert result.errors == {
        "unknown_type": 1,
        "bad_utf8": 1,
        "empty_name": 1,
        "bad_value": 1,
        "bad_service_check": 1,
    }
    assert result.bad_lines == 5


def test_line_ends_and_empty_lines() -> None:
    expected = [Metric("a", "c", (1.0,)), Metric("b", "c", (2.0,), tags=("t",))]
    for packet in [
        b"a:1|c\nb:2|c|#t",
        b"a:1|c\nb:2|c|#t\n",
        b"a:1|c\r\nb:2|c|#t\r\n",
        b"\n\na:1|c\n\n\nb:2|c|#t\n\n",
        b"a:1|c\r\nb:2|c|#t\r",
        b"\r\na:1|c\r\n\r\nb:2|c|#t",
    ]:
        result = parse_packet(packet)
        assert result.metrics == expected, packet
        assert result.errors == {}, packet
    assert parse_packet(b"") == ParseResult()
    assert parse_packet(b"\n\r\n\n") == ParseResult()


def test_mixed_packet_with_events_and_checks() -> None:
    packet = b"a:1|c\n_e{1,1}:t|x\n_sc|s|1\nb:2|h|@0.25\n"
    result = parse_packet(packet)
    assert result.metrics == [Metric("a", "c", (1.0,)), Metric("b", "h", (2.0,), 0.25)]
    assert result.events == [Event("t", "x")]
    assert result.service_checks == [ServiceCheck("s", Status.WARNING)]


def test_repeated_tag_sets_share_one_tuple() -> None:
    result = parse_packet(b"a:1|c|#env:prod,x\nb:2|c|#env:prod,x\n")
    first, second = result.metrics
    assert first.tags == ("env:prod", "x")
    assert first.tags is second.tags


def test_a_line_with_a_timestamp_is_not_cached_into_the_next() -> None:
    result = parse_packet(b"a:1|c|T100\na:1|c|T200\na:1|c|#x\n")
    assert [m.timestamp for m in result.metrics] == [100, 200, None]


# -- the StatsD dialect ---------------------------------------------------------------


def test_statsd_gauge_deltas() -> None:
    packet = b"gaugor:-10|g\ngaugor:+4|g\ngaugor:333|g\ncount:-1|c\n"
    statsd = parse_packet(packet, statsd_dialect=True)
    assert [(m.values, m.delta) for m in statsd.metrics] == [
        ((-10.0,), True),
        ((4.0,), True),
        ((333.0,), False),
        ((-1.0,), False),  # only gauges have deltas
    ]
    dogstatsd = parse_packet(packet)
    assert [(m.values, m.delta) for m in dogstatsd.metrics] == [
        ((-10.0,), False),
        ((4.0,), False),
        ((333.0,), False),
        ((-1.0,), False),
    ]


def test_statsd_packed_gauges_must_agree_on_signs() -> None:
    assert parse_line(b"g:+1:-2|g", statsd_dialect=True) == Metric(
        "g", "g", (1.0, -2.0), delta=True
    )
    assert parse_line(b"g:1:2|g", statsd_dialect=True) == Metric("g", "g", (1.0, 2.0))
    assert parse_packet(b"g:+1:2|g", statsd_dialect=True).errors == {"bad_value": 1}
    assert parse_line(b"g:+1:2|g") == Metric("g", "g", (1.0, 2.0))


# -- parse_line -------------------------------------------------------------------------


def test_parse_line_accepts_one_terminated_line() -> None:
    assert parse_line(b"a:1|c\n") == Metric("a", "c", (1.0,))
    assert parse_line(b"a:1|c\r\n") == Metric("a", "c", (1.0,))


def test_parse_line_refuses_zero_or_several_lines() -> None:
    with pytest.raises(ProtocolError, match="empty line") as empty:
        parse_line(b"")
    assert empty.value.reason == "empty"
    with pytest.raises(ProtocolError, match="more than one line") as several:
        parse_line(b"a:1|c\nb:1|c")
    assert several.value.reason == "multiple_lines"
