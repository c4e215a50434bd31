"""SVG charts of a run, drawn with pygal: canary against baseline over time, against the lines.

Two charts a run: the P95 latency (ms) and the 5xx share (%), one point per judged gate window
(its end), the stage's line from the plan as a step per stage, a vertical mark at each stage's
start and one at the rollback. The x axis is minutes since the run started (hours for a run
longer than three).

pygal is an optional dependency (the ``reports`` extra): without it :func:`draw_run` returns
``None`` and the markdown says the charts were not drawn and how to get them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Final

from openfeature_canary.events._runs import Run, StageRun, WindowPoint
from openfeature_canary.plan import FlagPlan, Stage

__all__ = ["CHARTS_DIR", "MISSING_NOTE", "Chart", "chart_name", "draw_run", "load_pygal"]

#: Where the charts go, relative to the reports folder.
CHARTS_DIR: Final = "charts"

#: What the markdown says when pygal is not installed.
MISSING_NOTE: Final = (
    "Charts not drawn: pygal is not installed "
    "(`pip install 'openfeature-canary[reports]'`, then `openfeature-canary report`)."
)

Point = tuple[float, float | None]


@dataclass(frozen=True)
class Chart:
    """One drawn chart: its file name (under :data:`CHARTS_DIR`), its title and its SVG."""

    name: str
    title: str
    svg: str


@dataclass(frozen=True)
class _Signal:
    key: str  # the file name's suffix
    title: str
    unit: str
    canary: Callable[[WindowPoint], float | None]
    baseline: Callable[[WindowPoint], float | None]
    line: Callable[[Stage], float | None]
    scale: float  # from the log's unit to the chart's


_SIGNALS: Final = (
    _Signal(
        "p95",
        "P95 latency",
        "ms",
        lambda w: w.p95_ms,
        lambda w: w.baseline_p95_ms,
        lambda s: s.max_p95_ms,
        1.0,
    ),
    _Signal(
        "5xx",
        "5xx share",
        "%",
        lambda w: w.error_rate,
        lambda w: w.baseline_error_rate,
        lambda s: s.max_error_rate,
        100.0,
    ),
)


def load_pygal() -> ModuleType | None:
    """The pygal module, or ``None`` when it is not installed."""
    try:
        return importlib.import_module("pygal")
    except ImportError:
        return None


def chart_name(flag_key: str, run: int, signal: str) -> str:
    """``<flag>-run<k>-<signal>.svg``, the flag key made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", flag_key)
    return f"{safe}-run{run}-{signal}.svg"


def draw_run(run: Run, flag: FlagPlan | None) -> list[Chart] | None:
    """The run's charts (a signal without any value is left out); ``None`` without pygal."""
    pygal = load_pygal()
    if pygal is None:
        return None
    t0 = run.first_at
    if t0 is None:
        return []
    charts = []
    for signal in _SIGNALS:
        chart = _draw(pygal, run, flag, signal, t0)
        if chart is not None:
            charts.append(chart)
    return charts


#: Series colours, by role: the canary red, the baseline blue, the lines grey, the
#: rollback black (pygal otherwise colours series by their order).
_COLOURS: Final = {
    "canary": "#d62728",
    "baseline": "#1f77b4",
    "line (plan)": "#7f7f7f",
    "stage start": "#c7c7c7",
    "rollback": "#000000",
}


def _draw(
    pygal: ModuleType, run: Run, flag: FlagPlan | None, sig: _Signal, t0: float
) -> Chart | None:
    windows = [w for s in run.stages for w in s.windows]
    last = max(
        [w.end for w in windows] + [s.ended_at or s.started_at for s in run.stages], default=t0
    )
    # Minutes for a short run; hours once it spans more than three (a day-long soak).
    per, x_unit = (3600.0, "hours") if last - t0 > 3 * 3600 else (60.0, "minutes")

    def x_of(at: float) -> float:
        return round((at - t0) / per, 3)

    def scaled(value: float | None) -> float | None:
        return None if value is None else value * sig.scale

    series: dict[str, list[Point]] = {
        "canary": [(x_of(w.end), scaled(sig.canary(w))) for w in windows],
        "baseline": [(x_of(w.end), scaled(sig.baseline(w))) for w in windows],
        "line (plan)": _line_steps(run.stages, flag, sig, x_of, scaled),
    }
    values = [y for points in series.values() for _, y in points if y is not None]
    if not values:
        return None
    top = max(values) * 1.15 or 1.0
    series["stage start"] = _verticals([x_of(s.started_at) for s in run.stages], top)
    if run.end is not None and run.end.action == "rollback":
        series["rollback"] = _verticals([x_of(run.end.at)], top)
    shown = {name: points for name, points in series.items() if points}
    title = f"{run.flag_key} run {run.index}: {sig.title}, canary vs baseline ({sig.unit})"
    chart = pygal.XY(
        title=title,
        x_title=f"{x_unit} since the run started",
        y_title=f"{sig.title} ({sig.unit})",
        allow_interruptions=True,
        js=[],  # no script from a CDN: the file is opened from disk and must stay inert
        range=(0, top),
        dots_size=2,
        legend_at_bottom=True,
        truncate_legend=-1,
        style=pygal.style.Style(
            colors=tuple(_COLOURS[name] for name in shown),
            # Light solid guides: the plan's dashed lines must not drown in a dashed grid.
            guide_stroke_color="#e6e6e6",
            major_guide_stroke_color="#d0d0d0",
            guide_stroke_dasharray="0",
            major_guide_stroke_dasharray="0",
        ),
    )
    for name, points in shown.items():
        if name in ("canary", "baseline"):
            chart.add(name, points)
        else:
            dashed = {"dasharray": "6,3"} if name != "rollback" else {"width": 2}
            chart.add(name, points, show_dots=False, stroke_style=dashed)
    svg = chart.render(is_unicode=True)
    return Chart(name=chart_name(run.flag_key, run.index, sig.key), title=title, svg=str(svg))


def _line_steps(
    stages: Sequence[StageRun],
    flag: FlagPlan | None,
    sig: _Signal,
    x_of: Callable[[float], float],
    scaled: Callable[[float | None], float | None],
) -> list[Point]:
    """The plan's line of each stage as a horizontal segment over the stage's time."""
    if flag is None:
        return []
    out: list[Point] = []
    for s in stages:
        if not 1 <= s.stage <= len(flag.stages):
            continue
        line = scaled(sig.line(flag.stage(s.stage)))
        end = s.ended_at if s.ended_at is not None else (s.windows[-1].end if s.windows else None)
        if line is None or end is None:
            continue
        out += [(x_of(s.started_at), line), (x_of(end), line), (x_of(end), None)]
    return out


def _verticals(xs: Sequence[float], top: float) -> list[Point]:
    """Vertical segments from 0 to ``top`` at each x, broken between them."""
    out: list[Point] = []
    for x in xs:
        out += [(x, 0.0), (x, top), (x, None)]
    return out
