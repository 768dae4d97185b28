"""Where the client sends to and which constant tags it adds: arguments first, then
the environment (the names Datadog users already set), then the defaults."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8125

TagsArg = Iterable[str] | Mapping[str, object] | None

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
    url: str | None, host: str | None, port: int | None, socket_path: str | None
) -> Destination:
    """Arguments win over the environment; ``CONVEYOR_URL`` wins over the Datadog names."""
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
