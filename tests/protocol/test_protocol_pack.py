"""The packer: datagrams never exceed their size, lines arrive whole and in order,
and a line too big for any datagram is reported, not cut."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.protocol import (
    UDP_MAX_DATAGRAM,
    UDS_MAX_DATAGRAM,
    OversizedLineError,
    Packer,
    ProtocolError,
    parse_packet,
)

lines = st.binary(min_size=1, max_size=200).map(lambda b: b.replace(b"\n", b"x"))


def _pack(packer: Packer, batch: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Datagrams sent and lines dropped as oversized, as a client would count them."""
    datagrams: list[bytes] = []
    dropped: list[bytes] = []
    for line in batch:
        try:
            datagram = packer.add(line)
        except OversizedLineError:
            dropped.append(line)
            continue
        if datagram is not None:
            datagrams.append(datagram)
    last = packer.flush()
    if last is not None:
        datagrams.append(last)
    return datagrams, dropped


@given(st.lists(lines, max_size=80), st.integers(min_value=2, max_value=600))
def test_datagrams_fit_and_lines_arrive_whole_in_order(batch: list[bytes], max_size: int) -> None:
    packer = Packer(max_size)
    datagrams, dropped = _pack(packer, batch)
    kept = [line for line in batch if len(line) + 1 <= max_size]
    assert dropped == [line for line in batch if len(line) + 1 > max_size]
    for datagram in datagrams:
        assert 0 < len(datagram) <= max_size
        assert datagram.endswith(b"\n")
    received = [line for datagram in datagrams for line in datagram.split(b"\n")[:-1]]
    assert received == kept
    # Greedy: a datagram was only closed because the next line did not fit.
    for datagram, following in itertools.pairwise(datagrams):
        first_line = following.split(b"\n", 1)[0]
        assert len(datagram) + len(first_line) + 1 > max_size
    assert packer.pending == 0


def test_defaults_and_sizes() -> None:
    assert UDP_MAX_DATAGRAM == 1432
    assert UDS_MAX_DATAGRAM == 8192
    assert Packer().max_size == UDP_MAX_DATAGRAM
    assert Packer(UDS_MAX_DATAGRAM).max_size == 8192


def test_add_returns_the_full_datagram_when_the_next_line_does_not_fit() -> None:
    packer = Packer(16)
    assert packer.add(b"a:1|c") is None  # 6 bytes with its newline
    assert packer.add(b"b:2|c") is None  # 12
    assert packer.pending == 12
    assert packer.add(b"c:3|c") == b"a:1|c\nb:2|c\n"  # 18 > 16
    assert packer.pending == 6
    assert packer.flush() == b"c:3|c\n"
    assert packer.flush() is None


def test_a_line_that_exactly_fills_a_datagram() -> None:
    packer = Packer(10)
    assert packer.add(b"123456789") is None
    assert packer.add(b"x") == b"123456789\n"
    assert packer.flush() == b"x\n"


def test_an_oversized_line_is_reported_and_leaves_the_packer_unchanged() -> None:
    packer = Packer(10)
    assert packer.add(b"a:1|c") is None
    with pytest.raises(OversizedLineError, match=r"line of 10 bytes .* at most 10 bytes") as raised:
        packer.add(b"0123456789")
    assert raised.value.size == 10
    assert raised.value.max_size == 10
    assert raised.value.reason == "oversized"
    assert isinstance(raised.value, ProtocolError)
    assert packer.pending == 6
    assert packer.flush() == b"a:1|c\n"


def test_a_line_with_a_newline_is_refused() -> None:
    packer = Packer()
    with pytest.raises(ProtocolError, match="may not contain a newline"):
        packer.add(b"a:1|c\nb:2|c")
    assert packer.pending == 0


def test_empty_lines_are_ignored() -> None:
    packer = Packer()
    assert packer.add(b"") is None
    assert packer.pending == 0
    assert packer.flush() is None


@pytest.mark.parametrize("size", [0, 1, -5, 1.5, "1432", None, True])
def test_bad_max_size(size: Any) -> None:
    with pytest.raises(ProtocolError, match="max_size must be an int of at least 2 bytes"):
        Packer(size)


def test_packed_datagrams_parse() -> None:
    packer = Packer(UDP_MAX_DATAGRAM)
    batch = [b"metric.%d:%d|c|#env:prod" % (i, i) for i in range(500)]
    datagrams, dropped = _pack(packer, batch)
    assert not dropped
    assert len(datagrams) > 1
    names = [m.name for d in datagrams for m in parse_packet(d).metrics]
    assert names == [f"metric.{i}" for i in range(500)]
