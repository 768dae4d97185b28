"""`conveyor demo` runs as a real process and checks its own books."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_demo_delivers_everything_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "demo", "--events", "20000", "--capacity", "64"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every subscriber saw all 20,000 events in order" in result.stdout
    assert "3 workers shared 20,000 events exactly once" in result.stdout
    assert "nothing lost, nothing duplicated." in result.stdout


def test_demo_rejects_a_capacity_that_is_not_a_power_of_two() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "demo", "--capacity", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2  # argparse's usage error, not a traceback
    assert "1000 is not a power of two" in result.stderr
    assert "Traceback" not in result.stderr
