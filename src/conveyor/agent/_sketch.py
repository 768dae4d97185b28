"""The distribution sketch: ``ddsketch`` behind three functions.

DDSketch maps each value to a logarithmic bucket, so any quantile it reports is
within ``relative_accuracy`` of the true value, and two sketches with the same
accuracy merge exactly (their buckets add), which is what lets ``--workers N``
processes aggregate apart. The collapsing variant caps the number of buckets
(``BIN_LIMIT``): past it the lowest buckets fold together, so memory per context is
bounded whatever the values' range, at the cost of accuracy on the smallest values
only. The accuracy is Datadog's (1/128 ~ 0.8 %).

``ddsketch`` comes with the ``agent`` extra and is imported here only, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddsketch.ddsketch import BaseDDSketch

RELATIVE_ACCURACY = 1.0 / 128
BIN_LIMIT = 2048


def new_sketch() -> BaseDDSketch:
    """An empty sketch with the agent's accuracy and bucket limit."""
    try:
        from ddsketch import LogCollapsingLowestDenseDDSketch
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "conveyor's agent needs the ddsketch package for distributions:"
            " pip install 'conveyor[agent]'"
        ) from exc
    return LogCollapsingLowestDenseDDSketch(
        relative_accuracy=RELATIVE_ACCURACY, bin_limit=BIN_LIMIT
    )


def copy_sketch(sketch: BaseDDSketch) -> BaseDDSketch:
    """A new sketch holding what ``sketch`` holds (merging into it leaves ``sketch`` be)."""
    fresh = new_sketch()
    fresh.merge(sketch)
    return fresh
