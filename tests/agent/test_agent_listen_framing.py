"""The stream framers, alone: split frames, several per read, bad lengths, and random
bytes (hypothesis) that may only ever raise ``FramingError``."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.agent._listen_framing import Framer, FramingError, LengthFramer, LineFramer

LENGTH = struct.Struct("<I")


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.timeout(10)
def test_length_framer_split_and_batched() -> None:
    framer = LengthFramer(100)
    data = b"".join(LENGTH.pack(len(p)) + p for p in (b"a:1|c", b"", b"b:2|c\nc:3|c"))
    got = [packet for byte in data for packet in framer.feed(bytes([byte]))]
    assert got == [b"a:1|c", b"b:2|c\nc:3|c"]
    assert framer.buffered == 0
    assert LengthFramer(100).feed(data + LENGTH.pack(4) + b"pa") == [b"a:1|c", b"b:2|c\nc:3|c"]


@pytest.mark.timeout(10)
def test_length_framer_refuses_an_oversized_length_but_keeps_what_came_before() -> None:
    framer = LengthFramer(8)
    with pytest.raises(FramingError) as caught:
        framer.feed(LENGTH.pack(2) + b"ok" + LENGTH.pack(9) + b"123456789")
    assert caught.value.reason == "frame_too_large"
    assert caught.value.packets == [b"ok"]
    assert LengthFramer(8).feed(LENGTH.pack(8) + b"12345678") == [b"12345678"]
    with pytest.raises(FramingError):
        LengthFramer(8).feed(b"\xff\xff\xff\xff")


@pytest.mark.timeout(10)
def test_line_framer_partial_lines_wait() -> None:
    framer = LineFramer(100)
    assert framer.feed(b"a:1|c\nb:") == [b"a:1|c"]
    assert framer.feed(b"2|c") == []
    assert framer.buffered == 5
    assert framer.feed(b"\nc:3|c\nd:4|c\n") == [b"b:2|c\nc:3|c\nd:4|c"]
    assert framer.feed(b"\n\n") == []


@pytest.mark.timeout(10)
def test_line_framer_refuses_overlong_lines() -> None:
    with pytest.raises(FramingError) as caught:
        LineFramer(5).feed(b"ok\n" + b"x" * 6 + b"\nno\n")
    assert caught.value.reason == "line_too_long"
    assert caught.value.packets == [b"ok"]
    framer = LineFramer(5)
    assert framer.feed(b"12345") == []
    with pytest.raises(FramingError):  # an unterminated line is not buffered for ever
        framer.feed(b"6")
    with pytest.raises(FramingError) as caught:
        LineFramer(5).feed(b"a\nb\n123456")
    assert caught.value.packets == [b"a\nb"]
    assert LineFramer(5).feed(b"12345\n12345\n") == [b"12345\n12345"]


def _feed_all(framer: Framer, pieces: list[bytes]) -> tuple[list[bytes], str | None]:
    packets: list[bytes] = []
    for piece in pieces:
        try:
            packets += framer.feed(piece)
        except FramingError as error:
            return packets + error.packets, error.reason
    return packets, None


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 5000), max_size=20))
def test_random_bytes_only_ever_raise_framing_errors(data: bytes, cuts: list[int]) -> None:
    for make in (lambda: LengthFramer(512), lambda: LineFramer(512)):
        whole = _feed_all(make(), [data])
        split = _feed_all(make(), chunks(data, cuts))
        # However the bytes were cut, the same lines (and the same verdict) come out.
        assert b"\n".join(whole[0]) == b"\n".join(split[0]) or isinstance(make(), LengthFramer)
        assert whole[1] == split[1]
        if isinstance(make(), LengthFramer):
            assert whole[0] == split[0]


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(
    packets=st.lists(st.binary(max_size=300), max_size=30),
    cuts=st.lists(st.integers(0, 10000), max_size=30),
)
def test_valid_frames_survive_any_split(packets: list[bytes], cuts: list[int]) -> None:
    data = b"".join(LENGTH.pack(len(p)) + p for p in packets)
    got, error = _feed_all(LengthFramer(300), chunks(data, cuts))
    assert error is None
    assert got == [p for p in packets if p]
    lines = [p.replace(b"\n", b"") for p in packets]
    got, error = _feed_all(LineFramer(300), chunks(b"".join(line + b"\n" for line in lines), cuts))
    assert error is None
    assert [x for packet in got for x in packet.split(b"\n") if x] == [x for x in lines if x]


@pytest.mark.timeout(10)
def test_finishing_a_stream_delivers_its_last_line_or_counts_the_fragment() -> None:
    lines = LineFramer(100)
    assert lines.feed(b"a:1|c\nb:2|c") == [b"a:1|c"]
    assert lines.finish(eof=True) == [b"b:2|c"]  # end of stream ends the last line
    assert lines.finish(eof=True) == [] and lines.buffered == 0
    lines.feed(b"half:1")
    with pytest.raises(FramingError) as cut_line:
        lines.finish(eof=False)  # the listener closed it: not a whole line
    assert cut_line.value.reason == "truncated_line"
    assert LineFramer(100).finish(eof=False) == []

    frames = LengthFramer(100)
    assert frames.feed(LENGTH.pack(5) + b"a:1|c" + LENGTH.pack(5) + b"b:") == [b"a:1|c"]
    with pytest.raises(FramingError) as cut_frame:
        frames.finish(eof=True)
    assert cut_frame.value.reason == "truncated_frame"
    assert frames.buffered == 0
    assert LengthFramer(100).finish(eof=True) == []
