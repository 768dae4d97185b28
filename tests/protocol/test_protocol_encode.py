"""The encoders on fixed inputs: the documented wire forms, number formatting, tag
normalisation, and every refusal with the message that says what to fix."""

from __future__ import annotations

import math
from collections import OrderedDict
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from conveyor.protocol import (
    Event,
    Metric,
    ProtocolError,
    ServiceCheck,
    Status,
    encode,
    encode_event,
    encode_metric,
    encode_service_check,
    encode_tags,
    parse_line,
)

# -- the documented forms ------------------------------------------------------------


def test_documented_metric_lines() -> None:
    assert encode_metric("page.views", "c", 1) == b"page.views:1|c"
    assert encode_metric("fuel.level", "g", 0.5) == b"fuel.level:0.5|g"
    assert encode_metric("song.length", "h", 240, sample_rate=0.5) == b"song.length:240|h|@0.5"
    assert encode_metric("users.uniques", "s", "1234") == b"users.uniques:1234|s"
    assert encode_metric("users.uniques", "s", 1234) == b"users.uniques:1234|s"
    assert (
        encode_metric("users.online", "c", 1, sample_rate=0.5, tags=["country:china"])
        == b"users.online:1|c|@0.5|#country:china"
    )
    assert encode_metric("page.views", "d", [1, 2, 32]) == b"page.views:1:2:32|d"
    assert encode_metric("song.length", "h", (240, 234), sample_rate=0.5) == (
        b"song.length:240:234|h|@0.5"
    )
    assert (
        encode_metric("page.views", "c", 15, tags={"env": "dev"}, timestamp=1656581400)
        == b"page.views:15|c|#env:dev|T1656581400"
    )
    assert (
        encode_metric("page.views", "g", 1, tags=["env:dev"], container_id="ci-83c0a99c")
        == b"page.views:1|g|#env:dev|c:ci-83c0a99c"
    )
    assert encode_metric("glork", "ms", 320, sample_rate=0.1) == b"glork:320|ms|@0.1"


def test_documented_event_lines() -> None:
    assert (
        encode_event(
            "An exception occurred",
            "Cannot parse CSV file from 10.0.0.17",
            alert_type="warning",
            tags=["err_type:bad_file"],
        )
        == b"_e{21,36}:An exception occurred|Cannot parse CSV file from 10.0.0.17"
        b"|t:warning|#err_type:bad_file"
    )
    # The documentation prints this one as _e{21,42}, counting its "\\n" as three
    # characters; on the wire the escape is two bytes, and the agent reads 41.
    assert (
        encode_event(
            "An exception occurred",
            'Cannot parse JSON request:\n{"foo: "bar"}',
            priority="low",
            tags=["err_type:bad_request"],
        )
        == b'_e{21,41}:An exception occurred|Cannot parse JSON request:\\n{"foo: "bar"}'
        b"|p:low|#err_type:bad_request"
    )


def test_event_field_order_and_utf8_lengths() -> None:
    line = encode_event(
        "café",
        "a|b",
        timestamp=1700000000,
        hostname="web-1",
        aggregation_key="deploy",
        priority="normal",
        source_type_name="jenkins",
        alert_type="success",
        tags={"team": "core"},
    )
    assert (
        line
        == (
            "_e{5,3}:café|a|b|d:1700000000|h:web-1|k:deploy|p:normal|s:jenkins|t:success|#team:core"
        ).encode()
    )


def test_documented_service_check_line() -> None:
    assert (
        encode_service_check(
            "Redis connection",
            Status.CRITICAL,
            tags=["env:dev"],
            message="Redis connection timed out after 10s",
        )
        == b"_sc|Redis connection|2|#env:dev|m:Redis connection timed out after 10s"
    )


def test_service_check_message_comes_last_and_is_escaped() -> None:
    line = encode_service_check(
        "db", 1, timestamp=1700000000, hostname="db-1", tags=["a"], message="one\r\ntwo m:x"
    )
    assert line == b"_sc|db|1|d:1700000000|h:db-1|#a|m:one\\ntwo m\\:x"
    assert parse_line(line) == ServiceCheck("db", 1, 1700000000, "db-1", ("a",), "one\ntwo m:x")


def test_line_breaks_in_events_become_the_two_character_escape() -> None:
    line = encode_event("a\r\nb", "c\rd\ne")
    assert line == b"_e{4,7}:a\\nb|c\\nd\\ne"
    assert parse_line(line) == Event("a\nb", "c\nd\ne")


def test_encode_dispatches_on_the_item() -> None:
    assert encode(Metric("a", "c", (1,), 0.5, ("t",))) == b"a:1|c|@0.5|#t"
    assert encode(Metric("u", "s", set_value="alice")) == b"u:alice|s"
    assert encode(Event("t", "x", priority="low")) == b"_e{1,1}:t|x|p:low"
    assert encode(ServiceCheck("s", 0, message="ok")) == b"_sc|s|0|m:ok"


def test_defaults_and_empty_optionals_are_left_out() -> None:
    assert (
        encode_metric("a", "c", 1, sample_rate=1, tags=[], timestamp=None, container_id="")
        == b"a:1|c"
    )
    assert encode_event("t", "", hostname="", aggregation_key=None, tags={}) == b"_e{1,0}:t|"
    assert encode_service_check("s", 3, hostname="", message="") == b"_sc|s|3"


# -- numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-3.0, "-3"),
        (0.1, "0.1"),
        (1 / 3, "0.3333333333333333"),
        (123456789.125, "123456789.125"),
        (9007199254740993, "9007199254740993"),  # an int is written in full
        (2.0**53, "9007199254740992"),
        (1e15, "1000000000000000"),
        (9999999999999998.0, "9999999999999998"),
        (1e16, "1e+16"),  # from here repr's exponent: shorter, and every parser reads it
        (1e300, "1e+300"),
        (10**20, "1e+20"),
        (1e-05, "1e-05"),
        (5e-324, "5e-324"),
        (-1.5e-07, "-1.5e-07"),
        (Decimal("2.5"), "2.5"),
        (Fraction(1, 4), "0.25"),
    ],
)
def test_number_formatting(value: Any, text: str) -> None:
    line = encode_metric("m", "g", value)
    assert line == f"m:{text}|g".encode()
    parsed = parse_line(line)
    assert isinstance(parsed, Metric)
    assert parsed.values == (float(value),)


def test_gauge_deltas_carry_their_sign() -> None:
    assert encode_metric("g", "g", 5, delta=True) == b"g:+5|g"
    assert encode_metric("g", "g", -3.5, delta=True) == b"g:-3.5|g"
    assert encode_metric("g", "g", 0, delta=True) == b"g:+0|g"
    assert encode_metric("g", "g", [1, -2], delta=True) == b"g:+1:-2|g"
    assert encode(Metric("g", "g", (4.0,), delta=True)) == b"g:+4|g"


def test_float_timestamps_are_truncated() -> None:
    assert encode_metric("a", "g", 1, timestamp=1700000000.9) == b"a:1|g|T1700000000"
    assert encode_event("t", "x", timestamp=1700000000.5) == b"_e{1,1}:t|x|d:1700000000"


# -- tags ----------------------------------------------------------------------------


def test_tags_in_every_form() -> None:
    assert encode_tags(None) == ""
    assert encode_tags([]) == ""
    assert encode_tags(["env:prod", "canary"]) == "env:prod,canary"
    assert encode_tags(("env:prod", "canary")) == "env:prod,canary"
    assert encode_tags({"env": "prod", "canary": None, "code": 200}) == "env:prod,canary,code:200"
    assert encode_tags(OrderedDict([("b", "1"), ("a", "2")])) == "b:1,a:2"  # order kept
    assert encode_tags(tag for tag in ["x", "y"]) == "x,y"
    assert encode_tags("env:prod,canary") == "env:prod,canary"


def test_mapping_tags_are_not_confused_by_equal_values() -> None:
    assert encode_tags({"flag": 1}) == "flag:1"
    assert encode_tags({"flag": True}) == "flag:True"
    assert encode_tags({"flag": 1.0}) == "flag:1.0"


def test_framing_characters_in_tags_are_replaced() -> None:
    assert encode_tags(["path:/a,b", "ua:x|y", "multi\nline\r"]) == "path:/a_b,ua:x_y,multi_line_"
    assert encode_tags({"path": "/a,b"}) == "path:/a_b"
    assert encode_tags("a|b,c\n") == "a_b,c_"
    line = encode_metric("m", "c", 1, tags=["path:/a,b"])
    assert line == b"m:1|c|#path:/a_b"


def test_empty_tags_are_dropped() -> None:
    assert encode_tags(["", "a", "", "b", ""]) == "a,b"
    assert encode_tags(",a,,b,") == "a,b"
    assert encode_tags([""]) == ""
    assert encode_metric("m", "c", 1, tags=[""]) == b"m:1|c"


def test_encoded_tags_can_be_passed_back() -> None:
    constant = encode_tags({"service": "web", "env": "prod"})
    assert encode_metric("m", "c", 1, tags=constant) == b"m:1|c|#service:web,env:prod"


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "metric name is empty"),
        ("a|b", r"contains '\|' at index 1"),
        ("a:b", "contains ':' at index 1"),
        ("a@b", "contains '@'"),
        ("a#b", "contains '#'"),
        ("a,b", "contains ','"),
        ("a b", "contains ' '"),
        ("a\nb", r"contains '\\n'"),
        ("a\x00b", r"contains '\\x00'"),
        ("a\tb", r"contains '\\t'"),
        ("_e{x", "starts with '_e{'"),
        ("_scale", "starts with '_sc'"),
        (b"bytes", "must be a str, got bytes"),
        (None, "must be a str, got NoneType"),
    ],
)
def test_bad_metric_names(name: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        encode_metric(name, "c", 1)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (math.nan, "must be a finite number, got nan"),
        (math.inf, "must be a finite number, got inf"),
        (-math.inf, "must be a finite number, got -inf"),
        ([1, math.nan], "must be a finite number, got nan"),
        (10**400, "must be a finite number, got int"),
        (Decimal("NaN"), "must be a finite number"),
        ("1", r"must be a number \(only sets"),
        (b"1", r"must be a number \(only sets"),
        (True, r"must be a number \(int or float\), got bool"),
        (None, r"must be a number \(int or float\), got NoneType"),
        ([], "no metric value given"),
        (object(), "must be a finite number, got object"),
    ],
)
def test_bad_values(value: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as raised:
        encode_metric("m", "g", value)
    assert raised.value.reason in {"bad_value", "invalid"}


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "set member is empty"),
        ("a|b", r"contains '\|' or a line break"),
        ("a\nb", r"contains '\|' or a line break"),
        ([1, 2], r"a set takes one member \(a str or an int\), got list"),
        (True, "a set takes one member"),
    ],
)
def test_bad_set_members(value: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        encode_metric("s", "s", value)


@pytest.mark.parametrize("rate", [0, 0.0, -0.5, 1.5, math.nan, math.inf, "0.5", False, None, [0.5]])
def test_bad_sample_rates(rate: Any) -> None:
    with pytest.raises(ProtocolError, match=r"sample_rate must be a number in \(0, 1\]") as raised:
        encode_metric("m", "c", 1, sample_rate=rate)
    assert raised.value.reason == "bad_sample_rate"


@pytest.mark.parametrize("mtype", ["x", "C", "", "m", "kv", None, ["c"]])
def test_bad_types(mtype: Any) -> None:
    with pytest.raises(ProtocolError, match="is not one of c, g, ms, h, d, s"):
        encode_metric("m", mtype, 1)


@pytest.mark.parametrize(
    ("timestamp", "match"),
    [
        (0, "must be positive unix seconds"),
        (-1, "must be positive unix seconds"),
        (2**63, "must be positive unix seconds"),
        (math.nan, "must be finite"),
        (True, r"must be unix seconds \(an int\), got True"),
        ("1700000000", r"must be unix seconds \(an int\), got str"),
    ],
)
def test_bad_timestamps(timestamp: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        encode_metric("m", "g", 1, timestamp=timestamp)
    with pytest.raises(ProtocolError, match=match):
        encode_event("t", "x", timestamp=timestamp)
    with pytest.raises(ProtocolError, match=match):
        encode_service_check("s", 0, timestamp=timestamp)


@pytest.mark.parametrize("mtype", ["ms", "h", "d", "s"])
def test_timestamps_only_on_counts_and_gauges(mtype: Any) -> None:
    with pytest.raises(ProtocolError, match="only honoured on counts"):
        encode_metric("m", mtype, 1, timestamp=1700000000)


def test_delta_only_on_gauges() -> None:
    with pytest.raises(ProtocolError, match=r"delta=True is only meaningful for gauges"):
        encode_metric("m", "c", 1, delta=True)


@pytest.mark.parametrize(
    ("tags", "match"),
    [
        ([1, 2], "tags must be strings, got int 1"),
        (["ok", None], "tags must be strings, got NoneType"),
        ([["nested"]], "tags must be strings, got list"),
        (b"env:prod", "tags must be str, not bytes"),
    ],
)
def test_bad_tags(tags: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        encode_metric("m", "c", 1, tags=tags)


def test_bad_container_id() -> None:
    with pytest.raises(ProtocolError, match=r"container_id 'a\|b' contains '\|'"):
        encode_metric("m", "c", 1, container_id="a|b")
    with pytest.raises(ProtocolError, match="container_id must be a str, got int"):
        encode_metric("m", "c", 1, container_id=5)  # type: ignore[arg-type]


def test_unencodable_text() -> None:
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        encode_metric("m\ud800", "c", 1)
    with pytest.raises(ProtocolError, match="event title is not valid UTF-8"):
        encode_event("\ud800", "x")
    with pytest.raises(ProtocolError, match="service check is not valid UTF-8"):
        encode_service_check("s\udfff", 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"title": ""}, "event title must be a non-empty str"),
        ({"title": None}, "event title must be a non-empty str"),
        ({"text": None}, "event text must be a str, got NoneType"),
        ({"priority": "high"}, "priority must be 'normal' or 'low', got 'high'"),
        ({"alert_type": "fatal"}, "alert_type must be 'error', 'warning', 'info' or 'success'"),
        ({"hostname": "a|b"}, r"hostname 'a\|b' contains '\|' or a line break"),
        ({"aggregation_key": "k\n"}, "aggregation_key .* contains"),
        ({"source_type_name": "s\r"}, "source_type_name .* contains"),
        ({"hostname": 5}, "hostname must be a str, got int"),
    ],
)
def test_bad_events(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"title": "t", "text": "x", **kwargs}
    with pytest.raises(ProtocolError, match=match):
        encode_event(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "service check name must be a non-empty str"),
        ({"name": "a|b"}, r"service check name 'a\|b' contains '\|'"),
        ({"name": "a\nb"}, "contains '.' or a line break"),
        ({"status": 4}, r"status must be 0 \(OK\), 1 \(WARNING\), 2 \(CRITICAL\) or 3"),
        ({"status": -1}, "status must be 0"),
        ({"status": "0"}, "status must be 0"),
        ({"status": True}, "status must be 0"),
        ({"message": "a|#injected:tag"}, r"message .* contains '\|'"),
        ({"message": 5}, "message must be a str"),
        ({"hostname": "h|x"}, r"hostname 'h\|x' contains"),
    ],
)
def test_bad_service_checks(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"name": "s", "status": 0, **kwargs}
    with pytest.raises(ProtocolError, match=match):
        encode_service_check(**arguments)


def test_bad_items() -> None:
    with pytest.raises(ProtocolError, match="has no set_value"):
        encode(Metric("s", "s", (1.0,)))
    with pytest.raises(ProtocolError, match="has a set_value"):
        encode(Metric("c", "c", (1.0,), set_value="x"))
    with pytest.raises(ProtocolError, match="expected a Metric, Event or ServiceCheck"):
        encode("a:1|c")  # type: ignore[arg-type]


def test_protocol_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="metric name is empty"):
        encode_metric("", "c", 1)


def test_name_cache_does_not_remember_bad_names() -> None:
    for _ in range(2):
        with pytest.raises(ProtocolError):
            encode_metric("bad name", "c", 1)
        assert encode_metric("good.name", "c", 1) == b"good.name:1|c"
