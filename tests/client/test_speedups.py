"""The C twins of the commonest client calls (conveyor/client/_speedups.c) against the
Python methods: the same calls must give the same errors and the same data."""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any

import pytest
from conftest import StalledTransport
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ci_support import missing
from conveyor.client import Client
from conveyor.client import _client as client_module

ABSENT = object()  # the argument is not passed at all
METHODS = ("increment", "count", "gauge", "histogram", "distribution", "timing")


def _require_speedups() -> None:
    if client_module._FastCall is None:
        missing(
            "conveyor.client._speedups (the C fast paths)",
            "it was not built: is a C compiler installed? `pip install -e .` builds it",
        )


def _recording_client(*, fast: bool) -> tuple[Client, StalledTransport]:
    transport = StalledTransport()
    transport.release.set()  # never stalls: it only records what it is given
    client = Client(transport=transport, flush_interval=3600)
    for name in METHODS:
        if fast:
            assert type(getattr(client, name)).__name__ == "FastCall", name
        else:
            delattr(client, name)  # the instance attribute: the class's Python method again
            assert type(getattr(client, name)).__name__ == "method", name
    return client, transport


def test_the_c_increment_is_built_and_installed() -> None:
    _require_speedups()
    client, _ = _recording_client(fast=True)
    client.close()


def test_the_c_calls_show_the_python_methods_signatures() -> None:
    _require_speedups()
    client, _ = _recording_client(fast=True)
    for name in METHODS:
        fast = getattr(client, name)
        method = getattr(Client, name).__get__(client)
        assert inspect.signature(fast) == inspect.signature(method), name
        assert fast.__wrapped__.__doc__ == method.__doc__
    client.close()


def test_a_subclass_that_overrides_increment_keeps_its_own() -> None:
    calls: list[str] = []

    class Counting(Client):
        def increment(self, metric: str, *args: Any, **kwargs: Any) -> None:
            calls.append(metric)
            super().increment(metric, *args, **kwargs)

    transport = StalledTransport()
    transport.release.set()
    client = Counting(transport=transport)
    client.increment("seen", tags=["a:b"])
    assert calls == ["seen"]
    assert client.flush(timeout=10)
    assert transport.received.counts[("seen", ("a:b",))] == 1
    client.close()


def test_a_list_changed_after_the_call_does_not_change_what_was_recorded() -> None:
    _require_speedups()
    client, transport = _recording_client(fast=True)
    tags = ["a:b"]
    client.increment("m", tags=tags)  # first call: the Python method remembers it
    client.increment("m", tags=tags)  # the C path
    tags[0] = "a:changed"
    assert client.flush(timeout=10)
    assert transport.received.counts[("m", ("a:b",))] == 2
    assert ("m", ("a:changed",)) not in transport.received.counts
    client.close()


def test_the_c_increment_survives_a_tag_that_rewrites_the_tables_while_hashed() -> None:
    # A tag that is not a str is refused, but hashing it runs Python code first: the
    # C code must hold its own references while that code clears the tables.
    _require_speedups()
    client, _ = _recording_client(fast=True)
    client.increment("m", tags=["a:b"])

    class Evil:
        def __hash__(self) -> int:
            client._contexts.clear()
            return 1

        def __eq__(self, other: object) -> bool:
            return False

    with pytest.raises(ValueError, match="tags must be strings"):
        client.increment("m", tags=[Evil()])  # type: ignore[list-item]
    client.increment("m", tags=["a:b"])
    assert client.flush(timeout=10)
    assert client.statistics().sent == 2
    client.close()


names = st.sampled_from(["req", "db.query", "", "a|b", 5, None, ["list"]])
values = st.sampled_from(
    [ABSENT, 1, 2, 1.0, -1, 0.5, 10**30, True, math.nan, math.inf, "1", None, 2.5e300]
)
tag_forms = st.sampled_from(
    [
        ABSENT,
        None,
        ["env:prod", "route:home"],
        ("env:prod", "route:home"),
        ["env:prod"],
        [],
        {"env": "prod"},
        ["bad|tag"],
        [1],
        [["nested"]],
        "env:prod",
    ]
)
rates = st.sampled_from([ABSENT, None, 1.0, 1, 0, 2.0, "x"])
forms = st.sampled_from(["positional", "keywords", "mixed"])
extras = st.sampled_from([{}, {"unknown": 1}])


def _call(
    client: Client,
    method: str,
    metric: Any,
    value: Any,
    tags: Any,
    rate: Any,
    form: str,
    extra: dict[str, Any],
) -> str:
    """Make one call; what it raised, as text ("" if nothing)."""
    given_args = [("metric", metric), ("value", value), ("tags", tags), ("sample_rate", rate)]
    args: list[Any] = []
    kwargs: dict[str, Any] = dict(extra)
    positional = form == "positional"
    for index, (name, arg) in enumerate(given_args):
        if arg is ABSENT:
            positional = False  # later arguments can only be keywords
            continue
        if positional or (form == "mixed" and index == 0):
            args.append(arg)
        else:
            kwargs[name] = arg
    try:
        getattr(client, method)(*args, **kwargs)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return ""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(METHODS), names, values, tag_forms, rates, forms, extras),
        max_size=12,
    )
)
def test_the_c_calls_behave_as_the_python_methods(calls: list[Any]) -> None:
    _require_speedups()
    fast, fast_transport = _recording_client(fast=True)
    slow, slow_transport = _recording_client(fast=False)
    try:
        for call in calls * 2:  # twice: the second time, every context is known
            assert _call(fast, *call) == _call(slow, *call), call
        assert fast.flush(timeout=10) and slow.flush(timeout=10)
        ours, theirs = fast_transport.received, slow_transport.received
        assert dict(ours.counts) == dict(theirs.counts)
        assert ours.gauges == theirs.gauges
        assert dict(ours.samples) == dict(theirs.samples)  # fewer than 64: all kept
        assert dict(ours.sample_counts) == dict(theirs.sample_counts)
        fast_books, slow_books = fast.statistics(), slow.statistics()
        assert (fast_books.recorded, fast_books.sent) == (slow_books.recorded, slow_books.sent)
        assert fast_books.dropped == slow_books.dropped
    finally:
        fast.close()
        slow.close()


def test_the_c_increment_leaks_no_references() -> None:
    _require_speedups()
    client, _ = _recording_client(fast=True)
    tags = ["a:b", "c:d"]
    as_tuple = ("a:b", "c:d")

    def burst() -> None:
        for _ in range(10_000):
            client.increment("m", tags=tags)
            client.increment("m", tags=as_tuple)
            client.increment("m", 1, tags)
        assert client.flush(timeout=10)

    burst()  # every table and the aggregator now hold what they keep
    key = client._contexts["m"][as_tuple]
    counts = sys.getrefcount(key), sys.getrefcount(tags), sys.getrefcount(as_tuple)
    burst()
    assert (sys.getrefcount(key), sys.getrefcount(tags), sys.getrefcount(as_tuple)) == counts
    assert client.statistics().sent == 60_000
    client.close()


@pytest.mark.parametrize("aggregate", [True, False])
def test_a_default_sample_rate_samples_value_one_increments_too(aggregate: bool) -> None:
    # As datadog.DogStatsd does: the default rate applies to every call that gives
    # none, the commonest (value-1 increments, the C path's own) included.
    transport = StalledTransport()
    transport.release.set()
    client = Client(transport=transport, default_sample_rate=0.5, aggregate=aggregate)
    for _ in range(4000):
        client.increment("sampled")
    assert client.flush(timeout=10)
    recorded = client.statistics().recorded
    assert 1600 < recorded < 2400  # about half were kept (the odds of failing: ~1e-30)
    received = transport.received.counts[("sampled", ())]
    assert received == pytest.approx(2 * recorded)  # each kept call counts 1/0.5
    client.default_sample_rate = 1.0  # and back: every call again, through the fast path
    for _ in range(1000):
        client.increment("whole")
    assert client.flush(timeout=10)
    assert transport.received.counts[("whole", ())] == 1000
    if client_module._FastCall is not None:
        assert type(client.increment).__name__ == "FastCall"
    client.close()
