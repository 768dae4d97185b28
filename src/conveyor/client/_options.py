"""Where the client sends to and which constant tags it adds: arguments first, then
the environment (the names Datadog users already set), then the defaults. And how
``datadog.DogStatsd``'s constructor options become conveyor's."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8125

TagsArg = Iterable[str] | Mapping[str, object] | None
Overflow = Literal["drop_newest", "drop_oldest", "block"]
OVERFLOWS = ("drop_newest", "drop_oldest", "block")
CARDINALITIES = ("none", "low", "orchestrator", "high")

_T = TypeVar("_T")

_UNSET_TAG = object()


def normalize_tags(tags: TagsArg) -> tuple[str, ...] | None:
    """Turn the tag forms the API accepts into a tuple of ``"k:v"`` strings.

    A list (or any iterable) of strings is kept as given; a mapping ``{k: v}`` becomes
    ``"k:v"`` (``None`` values give a bare ``"k"``). Tags are copied so that a list the
    caller reuses and changes later cannot change what was recorded.
    """
    if tags is None:
        return None
    if isinstance(tags, Mapping):
        return tuple(f"{k}:{v}" if v is not None else str(k) for k, v in tags.items())
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of 'key:value' strings or a dict, not {tags!r}")
    return tuple(tags)


@dataclass(frozen=True)
class Destination:
    """Where packets go: a URL understood by :func:`conveyor.transport.transport_from_url`."""

    url: str


def resolve_destination(
    url: str | None,
    host: str | None,
    port: int | None,
    socket_path: str | None,
    use_default_route: bool = False,
) -> Destination:
    """Arguments win over the environment; ``CONVEYOR_URL`` wins over the Datadog names.
    ``use_default_route`` replaces the host of a UDP destination with the default
    gateway, as ``datadog.DogStatsd`` does (a client in a container, its agent on the
    host)."""
    destination = _resolve_destination(url, host, port, socket_path)
    if use_default_route and destination.url.startswith("udp://"):
        port_text = destination.url.rpartition(":")[2]
        return Destination(_udp_url(default_route(), int(port_text)))
    return destination


def _resolve_destination(
    url: str | None, host: str | None, port: int | None, socket_path: str | None
) -> Destination:
    if url is not None:
        return Destination(url)
    if socket_path is not None:
        return Destination(f"unix://{socket_path}")
    if host is not None or port is not None:
        return Destination(_udp_url(host or DEFAULT_HOST, port or DEFAULT_PORT))
    env = os.environ
    for name in ("CONVEYOR_URL", "DD_DOGSTATSD_URL"):
        if env.get(name):
            return Destination(env[name])
    if env.get("DD_DOGSTATSD_SOCKET"):
        return Destination(f"unix://{env['DD_DOGSTATSD_SOCKET']}")
    env_host = env.get("DD_AGENT_HOST") or DEFAULT_HOST
    env_port = env.get("DD_DOGSTATSD_PORT")
    try:
        port_number = int(env_port) if env_port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"DD_DOGSTATSD_PORT must be a port number, not {env_port!r}") from None
    return Destination(_udp_url(env_host, port_number))


def _udp_url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"udp://{host}:{port}"


def environment_tags() -> tuple[str, ...]:
    """Constant tags from ``DD_ENV``, ``DD_SERVICE``, ``DD_VERSION``, ``DD_TAGS`` and
    ``DD_ENTITY_ID``, as the Datadog clients read them."""
    env = os.environ
    tags: list[str] = []
    for tag_name, var in (("env", "DD_ENV"), ("service", "DD_SERVICE"), ("version", "DD_VERSION")):
        if env.get(var):
            tags.append(f"{tag_name}:{env[var]}")
    for var in ("DD_TAGS", "DATADOG_TAGS"):
        for tag in env.get(var, "").replace(",", " ").split():
            tags.append(tag)
    if env.get("DD_ENTITY_ID"):
        tags.append(f"dd.internal.entity_id:{env['DD_ENTITY_ID']}")
    return tuple(tags)


def default_route(route_table: str = "/proc/net/route") -> str:
    """The IPv4 default gateway, read from the kernel's routing table (Linux only)."""
    try:
        with open(route_table, encoding="ascii") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(
            f"use_default_route=True reads the default gateway from {route_table} "
            f"(Linux only), which cannot be read here ({error}): give host= instead"
        ) from None
    for row in rows:
        if len(row) > 2 and row[1] == "00000000":  # destination 0.0.0.0: the default
            try:
                return socket.inet_ntoa(struct.pack("<L", int(row[2], 16)))
            except (ValueError, struct.error):
                break
    raise ValueError(
        f"use_default_route=True: {route_table} names no default gateway; give host= instead"
    )


def one_of(name: str, value: _T | None, datadog_name: str, datadog_value: _T | None) -> _T | None:
    """The value of an option that has a conveyor name and a ``datadog.DogStatsd`` name
    (None: neither was given); both at once is ambiguous, so it raises."""
    if value is not None and datadog_value is not None:
        raise TypeError(
            f"{name}= and {datadog_name}= (DogStatsd's name) set the same option: give one"
        )
    return value if value is not None else datadog_value


def not_negative(name: str, value: object) -> int:
    """A DogStatsd size option: an int >= 0, where 0 means "the default"."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0: the default), not {value!r}")
    return value


def negated(value: bool | None) -> bool | None:
    """A DogStatsd ``disable_*`` flag as conveyor's positive option (None: not given)."""
    return None if value is None else not value


def queue_policy(
    overflow: Overflow | None, block_timeout: float | None, sender_queue_timeout: float | None
) -> tuple[Overflow, float]:
    """``overflow`` and ``block_timeout`` from conveyor's names or from DogStatsd's
    ``sender_queue_timeout`` (0: drop at once, the default; None: wait for room as
    long as it takes; > 0: wait that long, then drop)."""
    if sender_queue_timeout == 0:
        return overflow or "drop_newest", 1.0 if block_timeout is None else block_timeout
    if overflow is not None or block_timeout is not None:
        raise TypeError(
            "overflow=/block_timeout= and sender_queue_timeout= (DogStatsd's name) set the "
            "same option: give one"
        )
    if sender_queue_timeout is None:
        return "block", threading.TIMEOUT_MAX  # "block forever", in what a wait accepts
    if not isinstance(sender_queue_timeout, (int, float)) or not sender_queue_timeout > 0:
        raise ValueError(
            "sender_queue_timeout must be 0 (drop when the queue is full), None (wait for "
            f"room) or a number of seconds > 0, not {sender_queue_timeout!r}"
        )
    return "block", float(sender_queue_timeout)


def origin_fields(container_id: str | None, cardinality: str | None) -> bytes:
    """DogStatsD's ``|c:`` (container id) and ``|card:`` (tag cardinality) fields, as
    ``datadog.DogStatsd`` appends them to every metric line."""
    fields = ""
    if container_id is not None:
        if (
            not isinstance(container_id, str)
            or not container_id
            or any(c in container_id for c in "|\n\r")
        ):
            raise ValueError(
                f"container_id must be a non-empty str without '|' or line breaks, "
                f"not {container_id!r}"
            )
        fields += f"|c:{container_id}"
    if cardinality is not None:
        check_cardinality(cardinality)
        fields += f"|card:{cardinality}"
    return fields.encode()


def check_cardinality(cardinality: object) -> None:
    if cardinality not in CARDINALITIES:
        raise ValueError(f"cardinality must be one of {CARDINALITIES} or None, not {cardinality!r}")
