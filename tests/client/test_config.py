"""Where the client sends to, and which constant tags it adds, from the environment."""

from __future__ import annotations

import pytest
from conftest import DatagramReceiver

from conveyor.client import Client

pytestmark = pytest.mark.timeout(30)

DD_NAMES = (
    "CONVEYOR_URL",
    "DD_DOGSTATSD_URL",
    "DD_DOGSTATSD_SOCKET",
    "DD_AGENT_HOST",
    "DD_DOGSTATSD_PORT",
    "DD_ENV",
    "DD_SERVICE",
    "DD_VERSION",
    "DD_TAGS",
    "DATADOG_TAGS",
    "DD_ENTITY_ID",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DD_NAMES:
        monkeypatch.delenv(name, raising=False)


def _port(receiver: DatagramReceiver) -> int:
    return int(receiver.sock.getsockname()[1])


def test_defaults_to_udp_localhost_8125() -> None:
    assert Client().statistics().destination == "udp://127.0.0.1:8125"


def test_datadog_host_and_port(
    monkeypatch: pytest.MonkeyPatch, udp_receiver: DatagramReceiver
) -> None:
    monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.1")
    monkeypatch.setenv("DD_DOGSTATSD_PORT", str(_port(udp_receiver)))
    client = Client()
    client.increment("from.env")
    assert client.flush(timeout=10)
    assert udp_receiver.take().counts[("from.env", ())] == 1
    client.close()


def test_precedence_argument_then_conveyor_url_then_datadog_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.9")
    monkeypatch.setenv("DD_DOGSTATSD_URL", "udp://127.0.0.2:9000")
    assert Client().statistics().destination == "udp://127.0.0.2:9000"
    monkeypatch.setenv("CONVEYOR_URL", "udp://127.0.0.3:9001")
    assert Client().statistics().destination == "udp://127.0.0.3:9001"
    assert Client(url="udp://127.0.0.4:9002").statistics().destination == "udp://127.0.0.4:9002"
    assert Client(host="127.0.0.5", port=9003).statistics().destination == "udp://127.0.0.5:9003"


def test_datadog_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_DOGSTATSD_SOCKET", "/run/dsd.sock")
    assert Client().statistics().destination == "unixgram:///run/dsd.sock"


def test_bad_port_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_DOGSTATSD_PORT", "eighty")
    with pytest.raises(ValueError, match="DD_DOGSTATSD_PORT"):
        Client()


def test_unified_service_tags(
    monkeypatch: pytest.MonkeyPatch, udp_receiver: DatagramReceiver
) -> None:
    monkeypatch.setenv("DD_ENV", "prod")
    monkeypatch.setenv("DD_SERVICE", "shop")
    monkeypatch.setenv("DD_VERSION", "1.2")
    monkeypatch.setenv("DD_TAGS", "team:core,region:eu")
    monkeypatch.setenv("DD_ENTITY_ID", "pod-42")
    client = Client(url=f"udp://127.0.0.1:{_port(udp_receiver)}", tags=["app:web"])
    client.increment("tagged")
    assert client.flush(timeout=10)
    expected = (
        "app:web",
        "dd.internal.entity_id:pod-42",
        "env:prod",
        "region:eu",
        "service:shop",
        "team:core",
        "version:1.2",
    )
    assert udp_receiver.take().counts[("tagged", expected)] == 1
    client.close()
