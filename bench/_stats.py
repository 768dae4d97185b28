"""Small shared helpers for the benchmarks: robust summaries, per-round ratios, tables,
and a description of the machine and interpreter a run happened on.

Every benchmark here interleaves its variants inside each round (A B C A B C ...), so
that noise from other work on the machine hits all variants alike, and reports the
median and spread of the repeats; ratios are computed per round (variant / reference
measured in the same round) and then summarised, never as a ratio of medians.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial


@dataclass(frozen=True)
class Summary:
    """Median, quartiles and range of a list of repeats."""

    n: int
    median: float
    q1: float
    q3: float
    lo: float
    hi: float

    def fmt(self, digits: int = 1, scale: float = 1.0) -> str:
        """``median [min-max]`` with values multiplied by ``scale``."""
        m, lo, hi = self.median * scale, self.lo * scale, self.hi * scale
        if self.n == 1:
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"

    def fmt_iqr(self, digits: int = 1, scale: float = 1.0) -> str:
        """``median (IQR q1-q3)``."""
        m, q1, q3 = self.median * scale, self.q1 * scale, self.q3 * scale
        if self.n == 1:
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} ({q1:.{digits}f}-{q3:.{digits}f})"


def summarize(values: Iterable[float]) -> Summary:
    """Summarise repeats; quartiles by the 'inclusive' method (exact for n >= 2)."""
    data = sorted(values)
    if not data:
        raise ValueError("summarize() needs at least one value")
    if len(data) == 1:
        v = data[0]
        return Summary(1, v, v, v, v, v)
    q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive")
    return Summary(len(data), statistics.median(data), q1, q3, data[0], data[-1])


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios ``numerators[i] / denominators[i]`` (same round, same index)."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators")
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank."""
    if not sorted_values:
        raise ValueError("percentile() of nothing")
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    align: str = "",
    *,
    right: int | None = None,
) -> str:
    """A Markdown table. ``align`` has one ``l`` or ``r`` per column; or ``right=k``
    right-aligns the columns from index ``k`` on; default: the first column left, the
    others right."""
    body = [list(r) for r in rows]
    if not align:
        first_right = 1 if right is None else right
        align = "l" * first_right + "r" * (len(headers) - first_right)
    is_right = [a == "r" for a in align]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if is_right[i] else cell.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    rule = ["-" * (w - 1) + ":" if is_right[i] else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |", *map(line, body)])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for text in f:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for text in f:
                if text.startswith("MemTotal:"):
                    return f"{int(text.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def source_state(*paths: str) -> str:
    """The git commit and whether ``paths`` differ from it (the code being measured)."""
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        run = partial(subprocess.run, cwd=root, capture_output=True, text=True, timeout=10)
        head = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() or "unknown"
        dirty = run(["git", "status", "--porcelain", "--", *paths]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "git state unknown"
    return f"git {head}" + (f", uncommitted changes in {' '.join(paths)}" if dirty else "")


def load_note(load_at_start: float) -> str:
    """A closing line on how busy the machine was; warns when others' work was running.

    The 1-minute load average at start counts other processes only (ours had not
    started). Under CPU contention wall times are inflated unevenly: a process with
    several runnable threads gets more of the CPU than a single-threaded one, so ratios
    between single- and multi-threaded variants are biased in favour of the latter.
    """
    now = os.getloadavg()[0]
    note = f"# load average (1 min): {load_at_start:.2f} at start, {now:.2f} at end"
    # at the end the average includes this process itself (about one runnable thread)
    if load_at_start > 1.0 or now > 2.0:
        note += (
            "\n# WARNING: other work was running on the machine: wall times are inflated "
            "and ratios between single- and multi-threaded variants are biased"
        )
    return note


def environment() -> str:
    """One paragraph naming the machine, the interpreter and the GIL settings."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    ft = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()  # noqa: UP031
    except OSError:
        load = "load average unknown"
    return (
        f"# machine: {os.cpu_count()} CPUs, {cpu_model()}, {mem_total()} RAM, {load}\n"
        f"# python: {sys.version.split()[0]} ({platform.python_implementation()}, "
        f"free-threaded build: {ft}, GIL enabled: {gil}), "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms (default, unchanged)"
    )
