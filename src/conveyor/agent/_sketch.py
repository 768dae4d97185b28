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


def quantile_value(sketch: BaseDDSketch, q: float) -> float:
    """The sketch's ``q``-quantile (0.0 for an empty sketch).

    A bucket near the largest double (a value such as ``1.79e308``, which the parser
    accepts as finite) overflows when ddsketch turns it back into a value: the exact
    extreme on that side stands in, since only the outermost buckets can overflow,
    and a flush must never raise on what a client sent."""
    try:
        value = sketch.get_quantile_value(q)
    except OverflowError:
        return float(sketch._max if q >= 0.5 else sketch._min)
    return float(value) if value is not None else 0.0
