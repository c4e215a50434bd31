"""Gate windows: the unit of reporting. Each closed window of a stage gets a record with both
cohorts' numbers and the canary's interval; decisions rest on the stage's evidence instead."""

from __future__ import annotations

from dataclasses import dataclass, replace

from openfeature_canary._format import format_rate
from openfeature_canary.plan import FlagPlan, Stage
from openfeature_canary.policy._gates import line_counts, quantile, stage_lines
from openfeature_canary.policy._stats import wilson_interval
from openfeature_canary.signals._counts import CohortCounts, CountsReading
from openfeature_canary.state import RolloutState, Status, Verdict, WindowRecord

__all__ = ["WindowSpan", "judge_window", "windows_due"]


@dataclass(frozen=True)
class WindowSpan:
    """A gate window of the current stage: ``[start, end)`` in clock seconds."""

    index: int
    start: float
    end: float


def windows_due(flag: FlagPlan, state: RolloutState, now: float) -> tuple[WindowSpan, ...]:
    """Gate windows of the current stage that have closed by ``now`` and are not recorded
    yet (windows are recorded in order, so those after the newest recorded one)."""
    if state.status is not Status.RUNNING or not 1 <= state.stage <= len(flag.stages):
        return ()
    width = flag.stage(state.stage).window_s
    index = max((w.index for w in state.windows), default=-1) + 1
    due = []
    while state.since + (index + 1) * width <= now + 1e-9:
        start = state.since + index * width
        due.append(WindowSpan(index, start, start + width))
        index += 1
    return tuple(due)


def judge_window(stage: Stage, span: WindowSpan, counts: CountsReading) -> WindowRecord:
    """A window's record: ``fail`` when a 95 % interval lies beyond a line, ``pass`` when
    every interval lies within, ``inconclusive`` otherwise (few requests, or an error)."""
    c, b = counts.canary, counts.baseline
    rate = c.errors / c.n if c.n else None
    low, high = wilson_interval(c.n, c.errors) if c.n else (None, None)
    record = WindowRecord(
        span.index,
        span.start,
        span.end,
        Verdict.INCONCLUSIVE,
        c.n,
        quantile(0.95, c),
        rate,
        error_low=low,
        error_high=high,
        baseline_n=b.n,
        baseline_p95_ms=quantile(0.95, b),
        baseline_error_rate=b.errors / b.n if b.n else None,
    )
    if counts.error is not None:
        return _with(record, Verdict.INCONCLUSIVE, f"signal source error: {counts.error}")
    if c.n == 0:
        return _with(record, Verdict.INCONCLUSIVE, "no canary requests")
    beyond, unsure = [], []
    for what, line, allowed, k, n in _lines(stage, c):
        lo, hi = wilson_interval(n, k)
        share = format_rate(k / n if n else 0.0)
        text = f"{what} {share} [{format_rate(lo)}, {format_rate(hi)}] vs {format_rate(allowed)}"
        if lo > allowed:
            beyond.append(f"{text} ({line})")
        elif hi > allowed:
            unsure.append(text)
    if beyond:
        return _with(record, Verdict.FAIL, "; ".join(beyond))
    if unsure:
        return _with(record, Verdict.INCONCLUSIVE, "; ".join(unsure))
    return _with(record, Verdict.PASS, "within every line")


def _label(name: str, stage: Stage) -> tuple[str, str]:
    """How a window's reason names a line: (what is counted, the line)."""
    if name == "error_line":
        return "5xx", "5xx line"
    if name == "p95_line":
        return "over P95 line", f"{stage.max_p95_ms:g} ms"
    return "over P99 line", f"{stage.max_p99_ms:g} ms"


def _lines(stage: Stage, c: CohortCounts) -> list[tuple[str, str, float, int, int]]:
    """(what, line, allowed share, occurrences, n) for each line of the stage (a latency
    line only when the window has bucket counts)."""
    out: list[tuple[str, str, float, int, int]] = []
    for name in stage_lines(stage):
        n, k, allowed = line_counts(name, stage, c)
        if name != "error_line" and not n:
            continue
        what, line = _label(name, stage)
        out.append((what, line, allowed, k, n))
    return out


def _with(record: WindowRecord, verdict: Verdict, reason: str) -> WindowRecord:
    return replace(record, verdict=verdict, reason=reason)
