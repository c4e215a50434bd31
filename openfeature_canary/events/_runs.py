"""A flag's rollouts as the decision log tells them: runs, their stages, windows and onset.

A *run* is one rollout of a flag, from its ``start`` until it completes, is rolled back or is
``reset`` (a ``reset`` ends a run that is still going; the next ``start`` begins a new one). A
run's stages carry the judged windows (the ``window_*`` entries: canary against baseline,
which the charts draw) and the entry that ended them, whose numbers are the stage's evidence
(``samples``/``baseline_samples``, observed P95 and 5xx share of both cohorts, the power).

Everything here is a pure function of a :class:`~openfeature_canary.state.RolloutState`: the
reports can be regenerated from the state at any time (``write_reports``).

The fields that say *why* in cutover-plan words (``reason``, ``rule``, ``value``,
``threshold``, ``by``) are read with :func:`entry_field`, which takes an attribute of the entry
first and then its numbers, so entries with or without them render.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from openfeature_canary.state import LogEntry, Number, RolloutState

__all__ = [
    "Run",
    "StageRun",
    "WindowPoint",
    "entry_field",
    "entry_number",
    "entry_rule",
    "runs_of",
]

#: Actions that end a run (a dry-run rollback does not: the flag stays where it is).
_RUN_ENDS: Final = frozenset({"complete", "rollback", "reset"})


@dataclass(frozen=True)
class WindowPoint:
    """One judged gate window: the canary's and the baseline's numbers over it."""

    start: float
    end: float
    verdict: str
    n: int
    p95_ms: float | None
    error_rate: float | None
    baseline_n: int
    baseline_p95_ms: float | None
    baseline_error_rate: float | None


@dataclass(frozen=True)
class StageRun:
    """One stage of a run: when it ran, its windows, and the entry that ended it
    (``None`` while it runs). ``paused`` holds the gate or operator pauses it went through."""

    stage: int
    percent: float | None
    started_at: float
    ended: LogEntry | None = None
    windows: tuple[WindowPoint, ...] = ()
    paused: tuple[LogEntry, ...] = ()

    @property
    def ended_at(self) -> float | None:
        """When the stage ended, or ``None`` while it runs."""
        return None if self.ended is None else self.ended.at

    @property
    def decision(self) -> str:
        """``advance``, ``complete``, ``rollback``, ``reset`` or ``running``."""
        return "running" if self.ended is None else self.ended.action


@dataclass(frozen=True)
class Run:
    """One rollout of a flag. ``index`` counts from 1 among the runs the log still holds;
    ``started_at`` is ``None`` when the log no longer shows the start (it keeps the newest
    entries only). ``outcome`` is ``completed``, ``rolled_back``, ``reset`` or the status it
    is still in (``running``, ``paused``)."""

    flag_key: str
    index: int
    started_at: float | None
    start: LogEntry | None
    stages: tuple[StageRun, ...]
    end: LogEntry | None
    outcome: str

    @property
    def ended_at(self) -> float | None:
        """When the run ended, or ``None`` while it goes on."""
        return None if self.end is None else self.end.at

    @property
    def first_at(self) -> float | None:
        """The earliest time the log shows for this run."""
        if self.started_at is not None:
            return self.started_at
        times = [s.started_at for s in self.stages] + [
            w.start for s in self.stages for w in s.windows
        ]
        return min(times) if times else None

    def onset_or_bound(self) -> tuple[float | None, bool]:
        """:meth:`onset` and ``True``; else, for a rollback decided on numbers, the start of
        the stage whose evidence decided (the signal went bad at or after it) and ``False``;
        ``(None, True)`` for an operator's rollback or a run not rolled back."""
        exact = self.onset()
        if exact is not None:
            return exact, True
        end = self.end
        if end is None or end.action != "rollback" or not self.stages or not _automatic(end):
            return None, True
        return self.stages[-1].started_at, False

    def onset(self) -> float | None:
        """When the signal that ended the run first went bad: the start of the first judged
        window of the stage it ended in that failed or lay beyond a line or the baseline
        (see :func:`bad_window`); ``None`` when no window shows it."""
        if self.end is None or self.end.action != "rollback" or not self.stages:
            return None
        last = self.stages[-1]
        for w in last.windows:
            if bad_window(w, self.end):
                return w.start
        return None


def _automatic(entry: LogEntry) -> bool:
    """Whether a rollback was decided on numbers (a gate test or a trigger), not by hand."""
    return any(entry_field(entry, k) is not None for k in ("test", "value", "threshold"))


def entry_field(entry: LogEntry, name: str) -> Number:
    """``name`` of ``entry``: its attribute when it has one, else its number, else ``None``.

    Entries may carry ``rule``, ``value``, ``threshold`` and ``by`` either way; reading both
    keeps the reports independent of where a newer writer puts them.
    """
    value = getattr(entry, name, None)
    # An empty attribute (a LogEntry's default ``rule``/``by``) says nothing: read the number.
    if isinstance(value, int | float | str) and not isinstance(value, bool) and value != "":
        return value
    got = entry.numbers.get(name)
    return got if isinstance(got, int | float | str) and not isinstance(got, bool) else None


def entry_rule(entry: LogEntry) -> str | None:
    """The rule that acted: the entry's ``rule``, else ``gate:<test>`` for a gate's entry
    written before entries named their rule, else ``None``."""
    rule = entry_field(entry, "rule")
    if rule is None:
        test = entry_field(entry, "test")
        return None if test is None else f"gate:{test}"
    return str(rule)


def entry_number(entry: LogEntry | None, name: str) -> float | None:
    """A numeric field of ``entry`` (``None`` when absent or not a number)."""
    if entry is None:
        return None
    value = entry_field(entry, name)
    return float(value) if isinstance(value, int | float) else None


def bad_window(w: WindowPoint, rollback: LogEntry) -> bool:
    """Whether a window already showed what the rollback acted on: it failed its gate, its
    canary was over a line the rollback names, or (a ratio test such as ``error_ratio``) its
    canary's 5xx share was over the baseline's times the threshold."""
    if w.verdict == "fail":
        return True
    threshold = entry_number(rollback, "threshold")
    signal = str(entry_field(rollback, "signal") or "")
    test = str(entry_field(rollback, "test") or entry_field(rollback, "rule") or "")
    if threshold is None:
        return False
    if "ratio" in test:
        base = w.baseline_error_rate
        return base is not None and w.error_rate is not None and w.error_rate > base * threshold
    if signal == "error_rate" or "error" in test:
        return w.error_rate is not None and w.error_rate > threshold
    if signal.startswith("latency") or "p95" in test:
        return w.p95_ms is not None and w.p95_ms > threshold
    return False


def runs_of(state: RolloutState, log: Sequence[LogEntry] | None = None) -> list[Run]:
    """The runs the decision log of ``state`` (or ``log``, e.g. with the history the
    state's log no longer holds) shows, oldest first."""
    builder = _Builder(state.flag_key)
    for entry in state.log if log is None else log:
        builder.feed(entry)
    return builder.finish(state.status.value)


class _Builder:
    """Walks a decision log once, closing stages and runs as their ending entries come."""

    def __init__(self, flag_key: str) -> None:
        self.flag_key = flag_key
        self.runs: list[Run] = []
        self._start: LogEntry | None = None
        self._started_at: float | None = None
        self._stages: list[StageRun] = []
        self._current: StageRun | None = None
        self._open = False

    def feed(self, entry: LogEntry) -> None:
        action = entry.action
        if action == "start":
            if self._open:
                self._close(entry, "reset")  # a start without a reset: the old run is over
            self._open, self._start, self._started_at = True, entry, entry.at
            self._stages, self._current = [], None
            self._enter(entry, 1)
            return
        if not self._open:
            if action.startswith("window_") or action in ("advance", "pause", "extend"):
                # The log lost this run's start (it keeps the newest entries only).
                self._open, self._start, self._started_at = True, None, None
                self._stages, self._current = [], None
            else:
                return
        self._feed_open(entry)

    def _feed_open(self, entry: LogEntry) -> None:
        action = entry.action
        numbers = entry.numbers
        if action.startswith("window_"):
            self._window(entry)
        elif action == "advance":
            self._end_stage(entry)
            self._enter(entry, _int(numbers.get("to_stage")))
        elif action == "pause" and self._current is not None:
            cur = self._current
            self._current = StageRun(
                cur.stage, cur.percent, cur.started_at, None, cur.windows, (*cur.paused, entry)
            )
        elif action in _RUN_ENDS and not (action == "rollback" and numbers.get("dry_run")):
            outcome = {"complete": "completed", "rollback": "rolled_back"}.get(action, "reset")
            self._close(entry, outcome)

    def _enter(self, entry: LogEntry, stage: int | None) -> None:
        pct = entry.numbers.get("to_pct")
        percent = float(pct) if isinstance(pct, int | float) else None
        self._current = StageRun(stage=stage or 0, percent=percent, started_at=entry.at)

    def _window(self, entry: LogEntry) -> None:
        n = entry.numbers
        span = _float(n.get("window_s")) or 0.0
        point = WindowPoint(
            start=entry.at - span,
            end=entry.at,
            verdict=entry.action.removeprefix("window_"),
            n=_int(n.get("n")) or 0,
            p95_ms=_float(n.get("p95_ms")),
            error_rate=_float(n.get("error_rate")),
            baseline_n=_int(n.get("baseline_n")) or 0,
            baseline_p95_ms=_float(n.get("baseline_p95_ms")),
            baseline_error_rate=_float(n.get("baseline_error_rate")),
        )
        if self._current is None:  # the log lost the stage's start: begin it at this window
            self._current = StageRun(stage=0, percent=None, started_at=point.start)
        cur = self._current
        self._current = StageRun(
            cur.stage, cur.percent, cur.started_at, None, (*cur.windows, point), cur.paused
        )

    def _end_stage(self, entry: LogEntry) -> None:
        cur = self._current
        if cur is not None:
            self._stages.append(
                StageRun(cur.stage, cur.percent, cur.started_at, entry, cur.windows, cur.paused)
            )
        self._current = None

    def _close(self, entry: LogEntry, outcome: str) -> None:
        self._end_stage(entry)
        self._emit(entry, outcome)

    def _emit(self, end: LogEntry | None, outcome: str) -> None:
        stages = list(self._stages)
        if self._current is not None:
            stages.append(self._current)
        self.runs.append(
            Run(
                flag_key=self.flag_key,
                index=len(self.runs) + 1,
                started_at=self._started_at,
                start=self._start,
                stages=tuple(stages),
                end=end,
                outcome=outcome,
            )
        )
        self._open, self._stages, self._current = False, [], None

    def finish(self, status: str) -> list[Run]:
        if self._open:
            self._emit(None, status)
        return self.runs


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    number = _float(value)
    return None if number is None or not number.is_integer() else int(number)
