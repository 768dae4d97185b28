"""Errors as events: the logging handler, uncaught exceptions, and asyncio."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator

import pytest
from delivery_support import Server, books_balance, serving

import conveyor
import conveyor.logging
from conveyor import Dispatcher, HTTPTransport


@pytest.fixture
def server() -> Iterator[Server]:
    with serving() as s:
        yield s


@pytest.fixture
def dispatcher(server: Server) -> Iterator[Dispatcher]:
    d = Dispatcher(HTTPTransport(server.url))
    yield d
    d.close(5.0)


@pytest.mark.timeout(30)
def test_the_handler_ships_records_at_or_above_its_level_with_structured_exceptions(
    server: Server, dispatcher: Dispatcher
) -> None:
    logger = logging.getLogger("app.orders")
    logger.propagate = False
    handler = conveyor.logging.Handler(dispatcher, level=logging.WARNING)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("not shipped")
        logger.warning("low stock: %d left", 3, extra={"sku": "A-1", "obj": object()})
        try:
            raise ValueError("bad order 42")
        except ValueError:
            logger.exception("order failed")
        logging.getLogger("conveyor.delivery").warning("never shipped (feedback loop)")
    finally:
        logger.removeHandler(handler)
    assert dispatcher.flush(10.0)
    events = sorted(server.data(), key=lambda e: e["timestamp"])  # order is not guaranteed
    assert [e["message"] for e in events] == ["low stock: 3 left", "order failed"]
    assert events[0]["level"] == "WARNING" and events[0]["extra"]["sku"] == "A-1"
    error = events[1]["exception"]
    assert error["type"] == "builtins.ValueError" and error["message"] == "bad order 42"
    assert error["frames"][-1]["function"].startswith("test_the_handler")
    assert books_balance(dispatcher.statistics())


@pytest.mark.timeout(30)
def test_the_handler_refuses_a_blocking_dispatcher(server: Server) -> None:
    d = Dispatcher(HTTPTransport(server.url), overflow="block")
    with pytest.raises(ValueError, match="must not block"):
        conveyor.logging.Handler(d)
    d.close()


@pytest.mark.timeout(30)
def test_capture_exceptions_hooks_sys_threading_and_asyncio(
    server: Server, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous: list[str] = []
    monkeypatch.setattr(sys, "excepthook", lambda t, e, tb: previous.append(repr(e)))
    monkeypatch.setattr(threading, "excepthook", lambda args: previous.append(repr(args.exc_value)))
    loop = asyncio.new_event_loop()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))
    undo = conveyor.capture_exceptions(dispatcher, loop=loop)
    try:
        try:
            raise KeyError("main")
        except KeyError:
            sys.excepthook(*sys.exc_info())

        def boom() -> None:
            raise RuntimeError("in a thread")

        thread = threading.Thread(target=boom, name="worker-7")
        thread.start()
        thread.join()
        loop.call_exception_handler({"message": "task failed", "exception": OSError("disk")})
    finally:
        undo()
        loop.close()
    assert sys.excepthook is not None and sys.excepthook.__name__ == "<lambda>"  # restored
    assert seen == ["task failed"]  # the previous loop handler still runs
    assert dispatcher.flush(10.0)
    events = {e["source"]: e for e in server.data()}
    assert events["sys.excepthook"]["exception"]["type"] == "builtins.KeyError"
    assert events["threading.excepthook"]["thread"] == "worker-7"
    assert events["threading.excepthook"]["exception"]["message"] == "in a thread"
    assert events["asyncio"]["exception"]["type"] == "builtins.OSError"
    assert previous == ["KeyError('main')", "RuntimeError('in a thread')"]  # still called


@pytest.mark.timeout(30)
def test_asyncio_submit_aflush_and_aclose_keep_the_loop_running(server: Server) -> None:
    server.delay = 0.2
    d = Dispatcher(HTTPTransport(server.url))

    async def main() -> tuple[bool, bool, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        for i in range(10):
            assert d.submit({"n": i})
        flushed = await d.aflush(10.0)
        closed = await d.aclose(10.0)
        stop.set()
        await task
        return flushed, closed, ticks

    flushed, closed, ticks = asyncio.run(main())
    assert flushed and closed
    assert ticks >= 5  # the loop ran while the flush waited for a 0.2 s request
    assert d.statistics().delivered == 10


def test_the_lazy_exports_and_no_heavy_imports() -> None:
    import subprocess

    code = (
        "import sys, conveyor\n"
        "from conveyor import Dispatcher, HTTPTransport, Retry, capture_exceptions\n"
        "assert 'urllib3' not in sys.modules and 'conveyor.client' not in sys.modules\n"
        "assert 'conveyor.delivery' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
