"""The policy: pure functions of (plan, state, readings, memory, now) that return a decision.

Two kinds of rule (spec §7):

- **Hard triggers** are guardrails checked at every tick, at every stage, and act at once:
  a breach sustained ``for`` a duration, an immediate breach, the Nth breach (``occurrences``)
  within a window, and a signal source that keeps failing (``on_error``). A rate breaches
  only on ``min_events`` events (one 5xx in 150 requests is not evidence).
- **Stage gates** are sequential tests on the evidence the stage accumulates (:mod:`._gates`,
  docs/decisions.md): a no-go (``on_no_go``: rollback or pause) acts at the tick a test's
  evidence crosses its boundary; a go needs the stage's duration and the information to have
  caught the stated regression; too little information extends the stage, then pauses it after
  its duration again, saying how many requests it still needs. Silence never passes. A go
  also needs evidence that covers the stage: its counts read up to its end (a failing source
  holds it) and its trailing window not failing a line (a breach in its last seconds holds
  it). Gate windows are recorded as they close, for the decision log and the reports. The
  stage-end rule (go, extend, pause) is :mod:`._stage_end`.

Nothing here does I/O, logging or clock reads: the shell (:mod:`._autopilot`) gathers readings,
calls :func:`decide`, and applies the :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final

from openfeature_canary.plan import FlagPlan, Trigger
from openfeature_canary.plan._signals import COHORT_SIGNALS
from openfeature_canary.policy._decision import Action, Decision, Memory, Reading, Readings
from openfeature_canary.policy._gates import (
    current_evidence,
    fold,
    judge,
)
from openfeature_canary.policy._numbers import stage_summary, test_numbers
from openfeature_canary.policy._stage_end import StageTick, decide_end
from openfeature_canary.policy._windows import judge_window, windows_due
from openfeature_canary.state import Number, RolloutState, Status

__all__ = [
    "COUNTABLE_SIGNALS",
    "Action",
    "Decision",
    "Memory",
    "Reading",
    "Readings",
    "baseline_breaches",
    "baseline_signal",
    "counts_samples",
    "decide",
]

#: Histogram signals for which ``occurrences`` counts samples beyond the threshold exactly.
COUNTABLE_SIGNALS: Final = frozenset(
    {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "event_loop_lag_ms"}
)


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
    if value is None or not _enough(trigger, value, n) or not trigger.breached(value):
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
    - ``running``/``paused``/``completed`` with traffic: a fired trigger rolls back at once
      (or pauses, when its ``if_baseline_breaches`` says so and the baseline breaches too).
    - ``running``/``paused``: the tick's counts are folded into the stage's evidence; a breached
      gate test acts at once (``on_no_go``); a running stage goes once its duration has passed
      and it has the information the plan asks for (see :mod:`._gates`).
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
        return _on_fired(fired, state, readings, memory)
    if state.status not in (Status.RUNNING, Status.PAUSED) or state.stage < 1:
        return Decision(Action.HOLD, state.status.value, memory)
    return _decide_gate(flag, state, readings, memory, now)


def _on_fired(fired: _Fired, state: RolloutState, readings: Readings, memory: Memory) -> Decision:
    trigger = fired.trigger
    if trigger.if_baseline_breaches == "pause":
        twin = readings.baselines.get(trigger.name)
        if twin is not None and _breaches(trigger, twin):
            if state.status is Status.PAUSED:
                return Decision(Action.HOLD, "paused: the baseline breaches too", memory)
            numbers = {**fired.numbers, "baseline_value": twin.value, "baseline_n": twin.n}
            reason = f"{fired.reason}: the baseline breaches too"
            return Decision(Action.PAUSE, reason, memory, numbers)
    return Decision(Action.ROLLBACK, fired.reason, Memory(), fired.numbers)


def _breaches(trigger: Trigger, reading: Reading) -> bool:
    if reading.error or reading.value is None:
        return False
    if counts_samples(trigger):
        return reading.value >= trigger.occurrences
    return _enough(trigger, reading.value, reading.n) and trigger.breached(reading.value)


def _enough(trigger: Trigger, value: float, n: int) -> bool:
    """Whether a reading holds the evidence a breach needs: ``min_samples`` requests, and for
    a rate ``min_events`` events (one 5xx in 150 requests reads 0.67 %, and says nothing)."""
    if n < trigger.min_samples:
        return False
    events = trigger.events(value, n)
    # Rounded: a rate times n from Prometheus comes back as 2.9999999 for three 5xx.
    return events is None or round(events, 6) >= trigger.min_events


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
        if reading is not None and _breaches(trigger, reading):
            loud.append(f"{trigger.name} ({baseline_signal(trigger.signal)}={reading.value:g})")
    return loud


def _decide_gate(
    flag: FlagPlan, state: RolloutState, readings: Readings, memory: Memory, now: float
) -> Decision:
    index = state.stage
    stage = flag.stage(index)
    before = current_evidence(index, state.since, state.evidence)
    evidence = fold(flag, before, readings.counts, state.percent)
    changed = evidence if evidence is not state.evidence else None
    judged = tuple(
        judge_window(stage, span, readings.windows[span.index])
        for span in windows_due(flag, state, now)
        if span.index in readings.windows
    )
    judgement = judge(flag, index, evidence)
    breach = judgement.breach
    if breach is not None:
        numbers = {
            **stage_summary(flag, index, evidence),
            **test_numbers(flag, index, evidence, breach),
        }
        action = Action.ROLLBACK if stage.on_no_go == "rollback" else Action.PAUSE
        reason = "gate_no_go"
        if breach.baseline_breached:
            action, reason = Action.PAUSE, "gate_no_go: the baseline breaches the line too"
        if action == Action.PAUSE and state.status is Status.PAUSED:
            return Decision(Action.HOLD, "paused", memory, windows=judged, evidence=changed)
        return Decision(action, reason, replace(memory, extended=-1), numbers, judged, changed)
    end = state.since + stage.duration_s
    if state.status is Status.PAUSED or now + 1e-9 < end:
        return Decision(Action.HOLD, "observing", memory, windows=judged, evidence=changed)
    return decide_end(
        flag, state, StageTick(readings, memory, now, judged, changed, evidence), judgement.tests
    )
