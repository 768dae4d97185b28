"""examples/ring_pipeline.py runs as a script and checks its own books."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ring_pipeline.py"


def test_the_ring_pipeline_example_delivers_everything_once() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--events", "20000", "--capacity", "64"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every subscriber saw all 20,000 events in order" in result.stdout
    assert "3 workers shared 20,000 events exactly once" in result.stdout
    assert "nothing lost, nothing duplicated." in result.stdout


def test_the_example_rejects_a_capacity_that_is_not_a_power_of_two() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--capacity", "1000"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 2  # argparse's usage error, not a traceback
    assert "1000 is not a power of two" in result.stderr
    assert "Traceback" not in result.stderr
