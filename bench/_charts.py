"""Charts and published results for ``docs/benchmarks.md``.

A benchmark that compares conveyor with its peers ends its run with :func:`publish`:

* what it measured goes to ``docs/benchmarks/data/<name>.json`` (every round's value per
  variant, their median, quartiles and range, and the run: command, date, code, machine,
  load);
* each of its figures is drawn from that JSON to ``docs/benchmarks/<figure>.png``
  (horizontal bars at the median, whiskers from min to max, conveyor highlighted);
* the block between ``<!-- bench:<name>:begin ... -->`` and ``<!-- bench:<name>:end -->``
  in ``docs/benchmarks.md`` is rewritten: the image links, one line naming the run, and
  the tables the script printed (captured with :func:`capture`), so tables and charts in
  the document always come from the same run.

``python bench/_charts.py [NAME ...]`` redraws the PNGs and rewrites the blocks from the
saved JSON alone (after a change to this module, say), without measuring anything.

A new benchmark needs a few lines (see ``bench/client/interference.py``)::

    with capture() as printed:
        report(...)                          # prints the Markdown tables
    if wants_publish(args):                  # --publish/--no-publish, off with --quick
        publish("my-bench", "bench/x/my_bench.py", argv, load_start,
                [Figure("my-bench", "Title", [Panel("p99", "us", [Bar("conveyor", values,
                "conveyor"), ...])])], printed.getvalue())

and the two marker lines in ``docs/benchmarks.md`` where its results belong.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _stats import cpu_model, mem_total, summarize

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
CHART_DIR = ROOT / "docs" / "benchmarks"
DATA_DIR = CHART_DIR / "data"

Role = Literal["conveyor", "peer", "reference"]
ROLES: tuple[Role, ...] = ("conveyor", "peer", "reference")
COLOURS: dict[Role, str] = {"conveyor": "#e6550d", "peer": "#9e9e9e", "reference": "#6baed6"}
LEGEND: dict[Role, str] = {
    "conveyor": "conveyor",
    "peer": "peers",
    "reference": "reference (no client)",
}

#: Medians spanning more than LOG_SPAN, or whiskers spanning more than LOG_RANGE, get a
#: logarithmic axis, so that the smallest bars stay readable next to the largest ones
#: and next to outliers of a noisy machine.
LOG_SPAN = 20.0
LOG_RANGE = 50.0


class ChartDataError(ValueError):
    """A saved JSON file does not have the shape :func:`load` expects."""


@dataclass
class Bar:
    """One variant: its value in every round (empty: not measured, drawn as "n/a")."""

    label: str
    values: Sequence[float]
    role: Role = "peer"
    note: str = ""  # shown after the value, e.g. "lost 6.7%"


@dataclass
class Panel:
    title: str
    unit: str  # the axis label, e.g. "ns per call (CPU time of the calling thread)"
    bars: list[Bar]
    better: Literal["lower", "higher"] = "lower"
    log: bool | None = None  # None: logarithmic when the medians span > LOG_SPAN
    top: float | None = None  # the largest meaningful value (100 for a percentage)


@dataclass
class Figure:
    name: str  # the PNG's file stem: docs/benchmarks/<name>.png
    title: str
    panels: list[Panel]
    columns: int = 1  # panels per row; a row whose panels list the same bars shares labels
    caption: str = ""  # one line under the image in the document
    share_x: bool = False  # one scale for a row whose panels have the same bars and unit


@dataclass
class Run:
    """Where and how the figures were measured."""

    command: str
    date: str
    source: str
    load_start: float
    load_end: float
    machine: str
    python: str
    params: str = ""


# -- measuring scripts' side ------------------------------------------------------------


def add_publish_option(
    parser: argparse.ArgumentParser, default: str = "yes, except with --quick"
) -> None:
    """``--publish/--no-publish``; ``default`` says what happens without either."""
    parser.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks/data/*.json, the charts (docs/benchmarks/*.png) and the "
        f"tables into the document (default: {default})",
    )


def wants_publish(args: argparse.Namespace) -> bool:
    chosen: bool | None = args.publish
    return chosen if chosen is not None else not getattr(args, "quick", False)


class _Tee(io.StringIO):
    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self._out = out

    def write(self, s: str) -> int:
        self._out.write(s)
        return super().write(s)

    def flush(self) -> None:
        self._out.flush()


@contextlib.contextmanager
def capture() -> Iterator[io.StringIO]:
    """Print as usual and keep a copy of what was printed (the tables for the document)."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield tee


def _source(code: Sequence[str]) -> str:
    """The commit measured and the files under ``code`` that differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        status = git("status", "--porcelain", "--", *code).splitlines()
    except (OSError, subprocess.SubprocessError):
        return "git state unknown"
    changed = [line[3:] for line in status]
    if not changed:
        return f"git {head or 'unknown'}"
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"git {head or 'unknown'} + uncommitted changes in {shown}"


def current_run(
    script: str,
    argv: Sequence[str],
    load_start: float,
    params: str = "",
    code: Sequence[str] = ("src",),
) -> Run:
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return Run(
        command=" ".join(["python", script, *argv]),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        source=_source(code),
        load_start=load_start,
        load_end=os.getloadavg()[0],
        machine=f"{os.cpu_count()} CPUs, {cpu_model()}, {mem_total()} RAM",
        python=f"{platform.python_implementation()} {platform.python_version()}"
        + ("" if gil else ", GIL disabled"),
        params=params,
    )


def publish(
    name: str,
    script: str,
    argv: Sequence[str],
    load_start: float,
    figures: Sequence[Figure],
    text: str,
    *,
    params: str = "",
    code: Sequence[str] = ("src",),
    doc: Path | None = DOC,
) -> Path:
    """Save the run as ``DATA_DIR/<name>.json``, draw its figures and rewrite its block
    in ``doc`` (none if ``doc`` is None). ``code``: the paths whose git state is the code
    measured; ``params``: the run's sizes, for the document. Returns the JSON's path."""
    data = {
        "name": name,
        "script": script,
        "doc": None if doc is None else os.path.relpath(doc, ROOT),
        "run": _run_json(current_run(script, argv, load_start, params, code)),
        "figures": [_figure_json(f) for f in figures],
        "text": text.strip(),
    }
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    render(path)
    print(f"# published: {os.path.relpath(path, ROOT)} and its chart(s)", file=sys.stderr)
    return path


# -- JSON -------------------------------------------------------------------------------


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def _run_json(run: Run) -> dict[str, Any]:
    out = dict(vars(run))
    out["load_start"] = round(run.load_start, 2)
    out["load_end"] = round(run.load_end, 2)
    return out


def _figure_json(f: Figure) -> dict[str, Any]:
    panels = []
    for p in f.panels:
        bars = []
        for b in p.bars:
            bar: dict[str, Any] = {"label": b.label, "role": b.role, "note": b.note}
            if b.values:
                s = summarize(b.values)
                bar |= {
                    "n": s.n,
                    "median": _round(s.median),
                    "q1": _round(s.q1),
                    "q3": _round(s.q3),
                    "min": _round(s.lo),
                    "max": _round(s.hi),
                }
            bar["values"] = [_round(v) for v in b.values]
            bars.append(bar)
        panels.append(
            {
                "title": p.title,
                "unit": p.unit,
                "better": p.better,
                "log": p.log,
                "top": p.top,
                "bars": bars,
            }
        )
    return {
        "name": f.name,
        "title": f.title,
        "columns": f.columns,
        "caption": f.caption,
        "share_x": f.share_x,
        "panels": panels,
    }


def load(path: Path) -> tuple[dict[str, Any], Run, list[Figure]]:
    """Read a saved result; a file of the wrong shape raises :class:`ChartDataError`
    naming the file and what is wrong."""

    def bad(what: str) -> ChartDataError:
        return ChartDataError(f"{path}: {what}; rerun the benchmark that wrote it to regenerate it")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    try:
        run = Run(**data["run"])
        figures = []
        for i, f in enumerate(data["figures"]):
            panels = []
            for j, p in enumerate(f["panels"]):
                bars = []
                for b in p["bars"]:
                    if b["role"] not in ROLES:
                        raise bad(f"figure {i} panel {j}: role {b['role']!r} not one of {ROLES}")
                    values = [float(v) for v in b["values"]]
                    bars.append(Bar(str(b["label"]), values, b["role"], str(b.get("note", ""))))
                panels.append(
                    Panel(p["title"], p["unit"], bars, p["better"], p["log"], p.get("top"))
                )
            figures.append(
                Figure(f["name"], f["title"], panels, int(f["columns"]), f["caption"], f["share_x"])
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ChartDataError):
            raise
        raise bad(f"missing or malformed field ({type(exc).__name__}: {exc})") from None
    return data, run, figures


# -- drawing ----------------------------------------------------------------------------


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.2g}"


def _axis(panels: Sequence[Panel]) -> tuple[bool, float, float]:
    """One x axis for ``panels`` (which are compared side by side): logarithmic or not,
    and the smallest and largest value drawn."""
    chosen = [p.log for p in panels if p.log is not None]
    stats = [summarize(b.values) for p in panels for b in p.bars if b.values]
    lo = min((s.lo for s in stats), default=1.0)
    hi = max((s.hi for s in stats), default=1.0)
    if chosen:
        return chosen[0], lo, hi
    medians = [s.median for s in stats]
    if not medians or min(medians) <= 0 or lo <= 0:
        return False, lo, hi
    return max(medians) / min(medians) > LOG_SPAN or hi / lo > LOG_RANGE, lo, hi


def _footer(run: Run, repeats: set[int]) -> str:
    n = f"{min(repeats)}" if len(repeats) == 1 else f"{min(repeats)} to {max(repeats)}"
    spread = "whiskers: min-max" if max(repeats) > 1 else "one repeat each, no spread"
    return (
        f"Bars: medians over n = {n} repeats per bar; {spread}.  "
        f"{run.command}  |  {run.date}, {run.source}  |  load average {run.load_start:.2f} "
        f"at start, {run.load_end:.2f} at end  |  {run.machine}, {run.python}"
    )


def draw(figure: Figure, run: Run, out: Path) -> None:
    """Draw ``figure`` to the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    cols = max(1, min(figure.columns, len(figure.panels)))
    rows = math.ceil(len(figure.panels) / cols)
    grid = [figure.panels[r * cols : (r + 1) * cols] for r in range(rows)]
    heights = [max(len(p.bars) for p in row) * 0.34 + 1.1 for row in grid]
    labels_width = max(len(b.label) for p in figure.panels for b in p.bars) * 0.075 + 0.4
    width = max(9.0, labels_width + cols * 4.2)
    fig = MplFigure(figsize=(width, sum(heights) + 1.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={"height_ratios": heights})
    repeats: set[int] = set()
    roles_seen: set[Role] = set()
    for r, row in enumerate(grid):
        shared = all([b.label for b in p.bars] == [b.label for b in row[0].bars] for p in row)
        same_axis = figure.share_x and shared and all(p.unit == row[0].unit for p in row)
        row_axis = _axis(row) if same_axis else None
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(row):
                ax.set_visible(False)
                continue
            panel = row[c]
            log, lo, hi = row_axis or _axis([panel])
            ys = list(range(len(panel.bars)))
            measured = [(y, b, summarize(b.values)) for y, b in enumerate(panel.bars) if b.values]
            for _, b, s in measured:
                repeats.add(s.n)
                roles_seen.add(b.role)
            ax.barh(
                [y for y, _, _ in measured],
                [s.median for _, _, s in measured],
                xerr=[
                    [s.median - s.lo for _, _, s in measured],
                    [s.hi - s.median for _, _, s in measured],
                ],
                color=[COLOURS[b.role] for _, b, _ in measured],
                edgecolor=["#7f2704" if b.role == "conveyor" else "none" for _, b, _ in measured],
                height=0.7,
                capsize=2.5,
                error_kw={"elinewidth": 0.9, "ecolor": "#333333"},
            )
            if log:
                ax.set_xscale("log")
                # plain numbers (0.1, 1, 10, 1,000), not powers of ten
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
                ax.set_xlim(lo / 1.6, hi * 3.5)
            else:
                ax.set_xlim(0, hi * 1.4)
                if panel.top is not None:  # no ticks past 100 % (the room is for labels)
                    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= panel.top])
            for y, b, s in measured:
                text = _fmt(s.median) + (f"  {b.note}" if b.note else "")
                x = s.hi * 1.12 if log else s.hi + hi * 0.015
                weight = "bold" if b.role == "conveyor" else "normal"
                ax.text(x, y, text, va="center", fontsize=8, fontweight=weight)
            for y, b in enumerate(panel.bars):
                if not b.values:
                    ax.text(ax.get_xlim()[0], y, "  n/a", va="center", fontsize=8, color="#777777")
            ax.set_yticks(ys)
            if c == 0 or not shared:
                ax.set_yticklabels([b.label for b in panel.bars], fontsize=9)
                for tick, b in zip(ax.get_yticklabels(), panel.bars, strict=True):
                    if b.role == "conveyor":
                        tick.set_fontweight("bold")
            else:
                ax.set_yticklabels([])
            ax.set_ylim(len(panel.bars) - 0.5, -0.5)  # first bar on top
            ax.set_title(textwrap.fill(panel.title, 48), fontsize=10)
            scale = ", log scale" if log else ""
            ax.set_xlabel(f"{panel.unit} ({panel.better} is better{scale})", fontsize=8.5)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", which="major", color="#dddddd", linewidth=0.6)
            ax.set_axisbelow(True)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
    # Left-aligned and wrapped short of the legend, which sits at the top right.
    title = textwrap.fill(figure.title, int(width * 6.5))
    fig.suptitle(title, x=0.01, ha="left", fontsize=12, fontweight="bold")
    handles = [
        Patch(color=COLOURS[role], label=LEGEND[role]) for role in ROLES if role in roles_seen
    ]
    fig.legend(handles=handles, loc="outside upper right", ncols=len(handles), fontsize=8.5)
    footer = textwrap.fill(_footer(run, repeats or {1}), int(width * 16))
    fig.supxlabel(footer, x=0.005, ha="left", fontsize=7, color="#555555")
    fig.get_layout_engine().set(h_pad=0.12, w_pad=0.1)  # type: ignore[union-attr, call-arg]
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


# -- the document -----------------------------------------------------------------------


def block(data: dict[str, Any], run: Run, figures: Sequence[Figure]) -> str:
    """The Markdown between the markers: images, the run, the printed tables."""
    name = data["name"]
    lines = []
    for f in figures:
        lines.append(f"![{f.title}](benchmarks/{f.name}.png)")
        lines.append("")
        if f.caption:
            lines += [f.caption, ""]
    busy = run.load_start > 1.0 or run.load_end > 2.0
    lines.append(
        f"Measured in one run: `{run.command}`, {run.date}, {run.source}; load "
        f"average {run.load_start:.2f} at start, {run.load_end:.2f} at end"
        + (" (other work was running: wall times are inflated)" if busy else "")
        + f"; {run.machine}; {run.python}"
        + (f"; {run.params}" if run.params else "")
        + f". Data: [`benchmarks/data/{name}.json`](benchmarks/data/{name}.json)."
    )
    if data["text"]:
        lines += ["", data["text"]]
    return "\n".join(lines)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:begin", f"<!-- bench:{name}:end -->"


def update_doc(doc: Path, name: str, body: str, script: str) -> bool:
    """Replace the block ``name`` in ``doc``; False (and a note on stderr) if it has none."""
    begin, end = _markers(name)
    text = doc.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + r"[^\n]*-->\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        print(
            f"note: {os.path.relpath(doc, ROOT)} has no block for {name!r}; add the lines\n"
            f"  {begin} (written by {script}; python bench/_charts.py redraws it) -->\n"
            f"  {end}\n"
            f"where its results belong, then run: python bench/_charts.py {name}",
            file=sys.stderr,
        )
        return False
    head = f"{begin} (written by {script}; python bench/_charts.py redraws it) -->"
    doc.write_text(pattern.sub(lambda _: f"{head}\n{body}\n{end}", text, count=1), "utf-8")
    return True


def render(path: Path) -> list[Path]:
    """Draw every figure of a saved result and rewrite its block; returns the PNGs."""
    data, run, figures = load(path)
    pngs = []
    for f in figures:
        png = CHART_DIR / f"{f.name}.png"
        draw(f, run, png)
        pngs.append(png)
    if data.get("doc"):
        update_doc(ROOT / data["doc"], data["name"], block(data, run, figures), data["script"])
    return pngs


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Redraw docs/benchmarks/*.png and rewrite the results blocks of "
        "docs/benchmarks.md from docs/benchmarks/data/*.json (measures nothing)."
    )
    parser.add_argument("names", nargs="*", help="only these results (default: all)")
    args = parser.parse_args(argv)
    paths = [DATA_DIR / f"{n}.json" for n in args.names] or sorted(DATA_DIR.glob("*.json"))
    if not paths:
        parser.error(f"no results saved in {DATA_DIR}: run a benchmark first (make bench)")
    for path in paths:
        if not path.exists():
            known = ", ".join(p.stem for p in sorted(DATA_DIR.glob("*.json"))) or "none"
            parser.error(f"no saved results {path.name} (saved: {known})")
        try:
            pngs = render(path)
        except ChartDataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for png in pngs:
            print(os.path.relpath(png, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
