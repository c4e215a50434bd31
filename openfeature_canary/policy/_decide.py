"""The policy: pure functions of (plan, state, readings, memory, now) that return a decision.

Two kinds of rule (spec §7):

- **Hard triggers** are guardrails checked at every tick, at every stage, and act at once:
  a breach sustained ``for`` a duration, an immediate breach, the Nth breach (``occurrences``)
  within a window, and a signal source that keeps failing (``on_error``).
- **Stage gates** are judged per gate window as it closes (pass / fail / inconclusive) and
  decided when the stage's duration has passed: go (advance or complete), no-go
  (``on_no_go``: rollback or pause), or extend window by window when too few windows were
  conclusive — and pause for an operator after the stage's duration again. Silence never passes.

Nothing here does I/O, logging or clock reads: the shell (:mod:`._autopilot`) gathers readings,
calls :func:`decide`, and applies the :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Protocol

from openfeature_canary.plan import FlagPlan, Stage, Trigger
from openfeature_canary.signals._names import COHORT_SIGNALS
from openfeature_canary.state import Number, RolloutState, Status, Verdict, WindowRecord

__all__ = [
    "COUNTABLE_SIGNALS",
    "Action",
    "Decision",
    "GateReadings",
    "Memory",
    "Reading",
    "Readings",
    "WindowSpan",
    "baseline_signal",
    "counts_samples",
    "decide",
    "judge_window",
    "stage_evidence",
    "windows_due",
]

#: Histogram signals for which ``occurrences`` counts samples beyond the threshold exactly.
COUNTABLE_SIGNALS: Final = frozenset(
    {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "event_loop_lag_ms"}
)


class Reading(Protocol):
    """What the policy needs of a signal reading (``signals.SignalReading`` fits)."""

    @property
    def value(self) -> float | None: ...

    @property
    def n(self) -> int: ...

    @property
    def error(self) -> str | None: ...


class Action:
    """The actions a decision can take (plain strings, shown in logs and reports)."""

    HOLD: Final = "hold"
    ADVANCE: Final = "advance"
    COMPLETE: Final = "complete"
    EXTEND: Final = "extend"
    PAUSE: Final = "pause"
    ROLLBACK: Final = "rollback"
    START: Final = "start"


@dataclass(frozen=True)
class WindowSpan:
    """A gate window of the current stage: ``[start, end)`` in clock seconds."""

    index: int
    start: float
    end: float


@dataclass(frozen=True)
class GateReadings:
    """The gate signals of one closed window (canary cohort)."""

    p95: Reading
    error_rate: Reading
    p99: Reading | None = None


@dataclass(frozen=True)
class Readings:
    """Everything the shell read for one tick: per trigger, and per gate window due."""

    triggers: Mapping[str, Reading] = field(default_factory=lambda: MappingProxyType({}))
    windows: Mapping[int, GateReadings] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Memory:
    """What the policy remembers between ticks (not persisted: a restart re-arms ``for``).

    ``breach_since``: when each sustained trigger's current breach began; ``breach_ticks``:
    tick times at which an ``occurrences`` trigger breached; ``error_since``: when each
    trigger's signal source started failing; ``extended``: the stage already logged as extended.
    """

    breach_since: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    breach_ticks: Mapping[str, tuple[float, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    error_since: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    extended: int = -1


@dataclass(frozen=True)
class Decision:
    """What to do now, why, and the numbers behind it (Argo's verdict with a reason).

    ``action`` is one of :class:`Action`; ``reason`` names the trigger or gate
    (``p95_breach``, ``gate_no_go``, ``gate_passed`` …); ``numbers`` carries value, threshold,
    window and n; ``windows`` are the gate windows judged at this tick; ``memory`` is what
    the next tick must be given.
    """

    action: str
    reason: str
    memory: Memory
    numbers: Mapping[str, Number] = field(default_factory=lambda: MappingProxyType({}))
    windows: tuple[WindowRecord, ...] = ()

    @property
    def changes_state(self) -> bool:
        """True when applying it changes the persisted state."""
        return self.action != Action.HOLD or bool(self.windows)


def baseline_signal(signal: str) -> str:
    """The baseline (``off`` cohort) twin of a cohort signal; flag-level signals unchanged."""
    return f"baseline_{signal}" if signal in COHORT_SIGNALS else signal


def counts_samples(trigger: Trigger) -> bool:
    """True when the trigger's ``occurrences`` are counted as samples beyond its threshold."""
    return (
        trigger.occurrences > 1
        and trigger.signal in COUNTABLE_SIGNALS
        and trigger.op in ("above", "at_least")
    )


# --------------------------------------------------------------------------- gate windows


def windows_due(flag: FlagPlan, state: RolloutState, now: float) -> tuple[WindowSpan, ...]:
    """Gate windows of the current stage that have closed by ``now`` and are not judged yet."""
    if state.status is not Status.RUNNING or not 1 <= state.stage <= len(flag.stages):
        return ()
    width = flag.stage(state.stage).window_s
    judged = {w.index for w in state.windows}
    due = []
    index = 0
    while state.since + (index + 1) * width <= now + 1e-9:
        if index not in judged:
            start = state.since + index * width
            due.append(WindowSpan(index, start, start + width))
        index += 1
    return tuple(due)


def judge_window(stage: Stage, span: WindowSpan, gate: GateReadings) -> WindowRecord:
    """Pass when the window has ``min_samples`` and meets the thresholds; fail when it has
    them and breaches; inconclusive otherwise (too few samples, or a source error)."""
    n = gate.p95.n
    p95, rate = gate.p95.value, gate.error_rate.value
    base = WindowRecord(span.index, span.start, span.end, Verdict.INCONCLUSIVE, n, p95, rate)
    errors = [r.error for r in (gate.p95, gate.error_rate, gate.p99) if r is not None and r.error]
    if errors:
        return replace(base, reason=f"signal source error: {errors[0]}")
    if n < stage.min_samples:
        return replace(base, reason=f"{n} samples < min_samples {stage.min_samples}")
    breaches = []
    if stage.max_p95_ms is not None and p95 is not None and p95 > stage.max_p95_ms:
        breaches.append(f"P95 {p95:.1f} ms > {stage.max_p95_ms:g} ms")
    p99 = gate.p99.value if gate.p99 is not None else None
    if stage.max_p99_ms is not None and p99 is not None and p99 > stage.max_p99_ms:
        breaches.append(f"P99 {p99:.1f} ms > {stage.max_p99_ms:g} ms")
    if stage.max_error_rate is not None and rate is not None and rate > stage.max_error_rate:
        breaches.append(f"5xx {rate:.3%} > {stage.max_error_rate:.3%}")
    if breaches:
        return replace(base, verdict=Verdict.FAIL, reason="; ".join(breaches))
    return replace(base, verdict=Verdict.PASS, reason="within thresholds")


# --------------------------------------------------------------------------- triggers


@dataclass(frozen=True)
class _Fired:
    trigger: Trigger
    reason: str
    numbers: Mapping[str, Number]


@dataclass
class _Work:
    """A mutable working copy of :class:`Memory` for one tick (never escapes ``decide``)."""

    since: dict[str, float]
    ticks: dict[str, tuple[float, ...]]
    errors: dict[str, float]


def _check_trigger(
    flag: FlagPlan, trigger: Trigger, reading: Reading | None, work: _Work, now: float
) -> _Fired | None:
    since, ticks, errors = work.since, work.ticks, work.errors
    name = trigger.name
    base: dict[str, Number] = {
        "trigger": name,
        "signal": trigger.signal,
        "threshold": trigger.threshold,
        "window_s": trigger.window_s,
    }
    if reading is None or reading.error:
        first = errors.setdefault(name, now)
        if trigger.on_error == "rollback" and now - first >= flag.source_error_for_s:
            error = reading.error if reading is not None else "no reading"
            return _Fired(
                trigger,
                "signal_source_error",
                {**base, "error": error, "failing_for_s": now - first, "value": None, "n": 0},
            )
        return None
    errors.pop(name, None)
    value, n = reading.value, reading.n
    numbers = {**base, "value": value, "n": n}
    if counts_samples(trigger):
        # The reading is the number of samples beyond the threshold within the window.
        if value is not None and value >= trigger.occurrences:
            return _Fired(trigger, name, {**numbers, "occurrences": trigger.occurrences})
        return None
    if value is None or n < trigger.min_samples or not trigger.breached(value):
        # No data resets a sustained breach, like a Prometheus alert whose query went empty.
        since.pop(name, None)
        return None
    if trigger.for_s:
        began = since.setdefault(name, now)
        if now - began >= trigger.for_s:
            return _Fired(
                trigger, name, {**numbers, "for_s": trigger.for_s, "breach_s": now - began}
            )
        return None
    if trigger.occurrences > 1:
        recent = (*(t for t in ticks.get(name, ()) if t > now - trigger.window_s), now)
        ticks[name] = recent
        if len(recent) >= trigger.occurrences:
            return _Fired(trigger, name, {**numbers, "occurrences": len(recent)})
        return None
    return _Fired(trigger, name, numbers)


def _check_triggers(
    flag: FlagPlan, readings: Readings, memory: Memory, now: float
) -> tuple[_Fired | None, Memory]:
    work = _Work(dict(memory.breach_since), dict(memory.breach_ticks), dict(memory.error_since))
    fired: _Fired | None = None
    for trigger in flag.triggers:
        result = _check_trigger(flag, trigger, readings.triggers.get(trigger.name), work, now)
        if result is not None and fired is None:
            fired = result
    new_memory = Memory(
        breach_since=MappingProxyType(work.since),
        breach_ticks=MappingProxyType(work.ticks),
        error_since=MappingProxyType(work.errors),
        extended=memory.extended,
    )
    return fired, new_memory


# --------------------------------------------------------------------------- decide


def decide(
    flag: FlagPlan,
    state: RolloutState,
    readings: Readings,
    memory: Memory,
    now: float,
    *,
    after_completed: bool = True,
) -> Decision:
    """Decide what the flag's rollout does at ``now``.

    - ``pending``: a flag with ``after`` starts once that flag has completed
      (``after_completed``) and every trigger is quiet on the baseline cohort; a flag without
      ``after`` waits for an operator's ``start`` (hold). A start an operator requested from a
      process without signals (``state.requested == "start"``) is carried out here once every
      trigger is quiet on the baseline.
    - ``running``/``paused``/``completed`` with traffic: a fired trigger rolls back at once.
    - ``running``: closed gate windows are judged; at the stage's end the gate decides.
    - ``rolled_back``: hold (sticky until an operator acts).
    """
    if state.status is Status.ROLLED_BACK:
        return Decision(Action.HOLD, "rolled back", Memory())
    if state.status is Status.PENDING:
        if state.requested == "start":
            return _decide_requested_start(flag, readings, memory)
        return _decide_pending(flag, readings, memory, now, after_completed)
    fired, memory = _check_triggers(flag, readings, memory, now)
    if fired is not None:
        return Decision(Action.ROLLBACK, fired.reason, Memory(), fired.numbers)
    if state.status is not Status.RUNNING:
        return Decision(Action.HOLD, state.status.value, memory)
    return _decide_gate(flag, state, readings, memory, now)


def _decide_pending(
    flag: FlagPlan, readings: Readings, memory: Memory, now: float, after_completed: bool
) -> Decision:
    if flag.after is None:
        return Decision(Action.HOLD, "waiting for an operator's start", memory)
    if not after_completed:
        return Decision(Action.HOLD, f"waiting for {flag.after} to complete", memory)
    loud = baseline_breaches(flag, readings)
    if loud:
        return Decision(
            Action.HOLD, "baseline not quiet: " + ", ".join(loud), memory, {"breaches": len(loud)}
        )
    return Decision(Action.START, f"{flag.after} completed; baseline quiet", Memory())


def _decide_requested_start(flag: FlagPlan, readings: Readings, memory: Memory) -> Decision:
    """An operator asked for a start from a process without signals: stage 0's gate is
    applied here, by the process that runs the policy (the baseline must be quiet)."""
    loud = baseline_breaches(flag, readings)
    if loud:
        return Decision(
            Action.HOLD,
            "start deferred: baseline not quiet: " + ", ".join(loud),
            memory,
            {"breaches": len(loud)},
        )
    return Decision(Action.START, "start requested; baseline quiet", Memory())


def baseline_breaches(flag: FlagPlan, readings: Readings) -> list[str]:
    """Triggers that breach on the baseline (stage 0's precondition): names with values.

    ``readings.triggers`` must hold the baseline readings (see :func:`baseline_signal`).
    A trigger without data is quiet; ``for``/``occurrences`` are not waited for here.
    """
    loud = []
    for trigger in flag.triggers:
        reading = readings.triggers.get(trigger.name)
        if reading is None or reading.error or reading.value is None:
            continue
        if counts_samples(trigger):
            breached = reading.value >= trigger.occurrences
        else:
            breached = reading.n >= trigger.min_samples and trigger.breached(reading.value)
        if breached:
            loud.append(f"{trigger.name} ({baseline_signal(trigger.signal)}={reading.value:g})")
    return loud


def _decide_gate(
    flag: FlagPlan, state: RolloutState, readings: Readings, memory: Memory, now: float
) -> Decision:
    stage = flag.stage(state.stage)
    judged = tuple(
        judge_window(stage, span, readings.windows[span.index])
        for span in windows_due(flag, state, now)
        if span.index in readings.windows
    )
    windows = (*state.windows, *judged)
    end = state.since + stage.duration_s
    if now + 1e-9 < end:
        return Decision(Action.HOLD, "observing", memory, windows=judged)
    passed = sum(w.verdict is Verdict.PASS for w in windows)
    failed = sum(w.verdict is Verdict.FAIL for w in windows)
    inconclusive = len(windows) - passed - failed
    numbers: dict[str, Number] = {
        "stage": state.stage,
        "pct": state.percent,
        "passed": passed,
        "failed": failed,
        "inconclusive": inconclusive,
        "window_s": stage.window_s,
        "n": sum(w.n for w in windows),
    }
    if failed > stage.max_failed_windows:
        worst = next(w for w in reversed(windows) if w.verdict is Verdict.FAIL)
        numbers.update(max_failed_windows=stage.max_failed_windows, last_failure=worst.reason)
        action = Action.ROLLBACK if stage.on_no_go == "rollback" else Action.PAUSE
        return Decision(action, "gate_no_go", replace(memory, extended=-1), numbers, judged)
    if passed + failed >= stage.windows:
        last = state.stage >= len(flag.stages)
        action = Action.COMPLETE if last else Action.ADVANCE
        # Trigger memory survives an advance: a breach that began at the end of the last stage
        # must keep counting towards its ``for``.
        return Decision(action, "gate_passed", replace(memory, extended=-1), numbers, judged)
    if now + 1e-9 >= end + stage.duration_s:
        numbers["needed"] = stage.windows
        return Decision(
            Action.PAUSE, "gate_inconclusive", replace(memory, extended=-1), numbers, judged
        )
    if memory.extended != state.stage:
        numbers["needed"] = stage.windows
        return Decision(
            Action.EXTEND,
            "too few conclusive windows",
            replace(memory, extended=state.stage),
            numbers,
            judged,
        )
    return Decision(Action.HOLD, "extended", memory, windows=judged)


def stage_evidence(stage: Stage, windows: tuple[WindowRecord, ...]) -> dict[str, Number]:
    """What a stage gathered, as decision-log numbers: the results row of a stage is built
    from these once the transition that ends the stage is persisted.

    ``observed_p95_ms`` is the worst P95 of the conclusive windows; ``observed_error_rate`` the
    5xx share over every window's samples.
    """
    conclusive = [w for w in windows if w.verdict is not Verdict.INCONCLUSIVE]
    p95s = [w.p95_ms for w in conclusive if w.p95_ms is not None]
    samples = sum(w.n for w in windows)
    errors = sum((w.error_rate or 0.0) * w.n for w in windows)
    return {
        "planned_p95_ms": stage.max_p95_ms,
        "observed_p95_ms": max(p95s) if p95s else None,
        "planned_error_rate": stage.max_error_rate,
        "observed_error_rate": errors / samples if samples else None,
        "samples": samples,
        "windows_passed": sum(w.verdict is Verdict.PASS for w in windows),
        "windows_failed": sum(w.verdict is Verdict.FAIL for w in windows),
        "windows_inconclusive": sum(w.verdict is Verdict.INCONCLUSIVE for w in windows),
    }
