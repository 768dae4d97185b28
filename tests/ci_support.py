"""What every test does when a component it needs is missing: under ``CI=true`` the run
fails (CI must never pass by skipping), elsewhere the test is skipped with the reason."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def missing(component: str, problem: str) -> NoReturn:
    """``component`` (what the test needs) is not available, because of ``problem``."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true requires {component}: {problem}")
    pytest.skip(f"no {component}: {problem}")


def require_ipv6_loopback() -> None:
    """Skip (fail under ``CI=true``) if the kernel has no ``::1``."""
    if not socket.has_ipv6:
        missing("an IPv6 loopback", "Python was built without IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        missing("an IPv6 loopback", f"cannot bind ::1 ({exc})")
