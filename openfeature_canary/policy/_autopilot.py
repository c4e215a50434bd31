"""The shell that runs the policy: read signals, call ``decide``, apply, then the effects.

:class:`Autopilot` plugs into a :class:`Rollout`: it becomes every controller's decider (so
``controller.tick()`` evaluates the policy) and a transition listener. The order of a
rollback's effects (spec §7) follows from registration: the state is persisted by the
controller first, then the provider's listener emits the OpenFeature event, then this
listener queues the telemetry event in the durable outbox and writes the reports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from openfeature_canary._controller import Controller, Rollout
from openfeature_canary._effects import Effects
from openfeature_canary._errors import SignalSourceError
from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary._policy import (
    Action,
    Decision,
    GateReadings,
    Memory,
    Reading,
    Readings,
    baseline_breaches,
    baseline_signal,
    counts_samples,
    decide,
    windows_due,
)
from openfeature_canary._reports import StageResult
from openfeature_canary._state import LogEntry, Number, RolloutState, Status, Verdict, WindowRecord
from openfeature_canary.plan import FlagPlan, Trigger
from openfeature_canary.signals import SignalSource

__all__ = ["Autopilot", "TickResult"]

log = logging.getLogger("openfeature_canary")


@dataclass(frozen=True)
class _ErrorReading:
    error: str
    value: float | None = None
    n: int = 0


@dataclass(frozen=True)
class TickResult:
    """The last tick of one flag: its decision and the trigger readings behind it."""

    at: float
    decision: Decision
    triggers: Mapping[str, Reading]


class Autopilot:
    """Runs the policy for every flag of a rollout.

    >>> autopilot = Autopilot(rollout, source, effects=Effects(events=sender))  # doctest: +SKIP
    >>> rollout.controller("dataservice-read-canary").tick()                  # doctest: +SKIP
    """

    def __init__(
        self,
        rollout: Rollout,
        source: SignalSource,
        *,
        effects: Effects | None = None,
        on_decision: Callable[[str, Decision], None] | None = None,
    ) -> None:
        self.rollout = rollout
        self.source = source
        self.effects = effects
        self.on_decision = on_decision
        self._memory: dict[str, Memory] = {}
        self._last: dict[str, TickResult] = {}
        self._snapshot_at: float | None = None
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        for ctl in rollout.controllers():
            ctl.decider = self._decide
            ctl.start_guard = self._baseline_loud

    def last(self, flag_key: str) -> TickResult | None:
        """The flag's last tick (decision and trigger readings), if any."""
        return self._last.get(flag_key)

    # ------------------------------------------------------------------ deciding

    def _decide(self, ctl: Controller, now: float) -> RolloutState | None:
        with self._lock:
            previous = self._last.get(ctl.key)
            if previous is not None and previous.at == now:
                return None  # idempotent within a tick
            if self._snapshot_at != now:
                self._snapshot_source(now)
            state, flag = ctl.state, ctl.flag
            readings = self._gather(flag, state, now)
            after_done = flag.after is None or (
                self.rollout.controller(flag.after).state.status is Status.COMPLETED
            )
            decision = decide(
                flag,
                state,
                readings,
                self._memory.get(ctl.key, Memory()),
                now,
                after_completed=after_done,
            )
            self._memory[ctl.key] = decision.memory
            self._last[ctl.key] = TickResult(now, decision, readings.triggers)
        if self.on_decision is not None and decision.changes_state:
            self.on_decision(ctl.key, decision)
        if not decision.changes_state:
            return None
        if self.effects is not None:
            # A stage ending with this decision gets its results row once it is persisted.
            ending = state.status is Status.RUNNING and decision.reason.startswith("gate_")
            result = _stage_result(flag, state, decision, now) if ending else None
            self.effects.stage_ending(ctl.key, result)
        return _target(flag, state, decision, now)

    def _snapshot_source(self, now: float) -> None:
        self._snapshot_at = now
        try:
            self.source.snapshot(now)
        except SignalSourceError as exc:
            log.error("signal source snapshot failed: %s", exc)

    def _baseline_loud(self, ctl: Controller, now: float) -> list[str]:
        """Stage 0's gate for an operator's ``start``: triggers breaching on the baseline."""
        with self._lock:
            if self._snapshot_at != now:
                self._snapshot_source(now)
            readings = Readings(
                MappingProxyType(
                    {
                        t.name: self._read_trigger(ctl.key, t, baseline_signal(t.signal), now)
                        for t in ctl.flag.triggers
                    }
                )
            )
        return baseline_breaches(ctl.flag, readings)

    def _gather(self, flag: FlagPlan, state: RolloutState, now: float) -> Readings:
        if state.status is Status.ROLLED_BACK or (
            state.status is Status.PENDING and flag.after is None
        ):
            return Readings()
        pending = state.status is Status.PENDING
        triggers: dict[str, Reading] = {}
        for t in flag.triggers:
            signal = baseline_signal(t.signal) if pending else t.signal
            triggers[t.name] = self._read_trigger(flag.key, t, signal, now)
        windows: dict[int, GateReadings] = {}
        for span in windows_due(flag, state, now):
            stage = flag.stage(state.stage)

            def between(sig: str, s: Any = span) -> Reading:
                return self._read(lambda: self.source.read_between(flag.key, sig, s.start, s.end))

            p99 = between("latency_p99_ms") if stage.max_p99_ms is not None else None
            windows[span.index] = GateReadings(
                between("latency_p95_ms"), between("error_rate"), p99
            )
        return Readings(MappingProxyType(triggers), MappingProxyType(windows))

    def _read_trigger(self, key: str, t: Trigger, signal: str, now: float) -> Reading:
        try:
            if counts_samples(t):
                inclusive = t.op == "at_least"
                return self.source.count_beyond(
                    key, signal, t.threshold, inclusive, t.window_s, now
                )
            return self.source.read(key, signal, t.window_s, now)
        except SignalSourceError as exc:
            return _ErrorReading(str(exc))

    @staticmethod
    def _read(fn: Callable[[], Reading]) -> Reading:
        try:
            return fn()
        except SignalSourceError as exc:
            return _ErrorReading(str(exc))


# --------------------------------------------------------------------------- targets


def _entry(at: float, action: str, reason: str, numbers: Mapping[str, Number]) -> LogEntry:
    return LogEntry(at=at, action=action, reason=reason, numbers=MappingProxyType(dict(numbers)))


def _window_entry(w: WindowRecord) -> LogEntry:
    return _entry(
        w.end,
        f"window_{w.verdict.value}",
        w.reason,
        {
            "window": w.index,
            "n": w.n,
            "p95_ms": w.p95_ms,
            "error_rate": w.error_rate,
            "window_s": w.end - w.start,
        },
    )


def _target(flag: FlagPlan, state: RolloutState, d: Decision, now: float) -> RolloutState:
    """The state a decision leads to. A dry-run flag never changes its percentage: a
    rollback is logged and restarts the stage's observation instead."""
    dry = flag.dry_run
    numbers: dict[str, Number] = dict(d.numbers)
    if dry:
        numbers["dry_run"] = 1
    entries = [*(_window_entry(w) for w in d.windows)]
    windows = (*state.windows, *d.windows)
    if d.action in (Action.HOLD, Action.EXTEND):
        if d.action == Action.EXTEND:
            entries.append(_entry(now, d.action, d.reason, numbers))
        return state.evolve(*entries, windows=windows)
    if d.action == Action.ROLLBACK:
        numbers.update(from_stage=state.stage, from_pct=state.percent)
        entries.append(_entry(now, d.action, d.reason, numbers))
        if dry:
            return state.evolve(*entries, since=now, windows=())
        return state.evolve(
            *entries,
            status=Status.ROLLED_BACK,
            stage=0,
            percent=0.0,
            since=now,
            windows=(),
            reason=d.reason,
        )
    if d.action == Action.PAUSE:
        entries.append(_entry(now, d.action, d.reason, numbers))
        return state.evolve(
            *entries, status=Status.PAUSED, since=now, reason=d.reason, windows=windows
        )
    if d.action == Action.COMPLETE:
        entries.append(_entry(now, d.action, d.reason, numbers))
        return state.evolve(
            *entries, status=Status.COMPLETED, since=now, windows=(), reason="completed"
        )
    # ADVANCE or START: into the next stage.
    stage = 1 if d.action == Action.START else state.stage + 1
    pct = state.percent if dry else flag.stage(stage).percent
    numbers.update(to_stage=stage, to_pct=flag.stage(stage).percent)
    entries.append(_entry(now, d.action, d.reason, numbers))
    return state.evolve(
        *entries,
        status=Status.RUNNING,
        stage=stage,
        percent=pct,
        since=now,
        windows=(),
        reason=d.reason,
    )


def _stage_result(flag: FlagPlan, state: RolloutState, d: Decision, now: float) -> StageResult:
    stage = flag.stage(state.stage)
    windows = (*state.windows, *d.windows)
    conclusive = [w for w in windows if w.verdict is not Verdict.INCONCLUSIVE]
    p95s = [w.p95_ms for w in conclusive if w.p95_ms is not None]
    samples = sum(w.n for w in windows)
    errors = sum((w.error_rate or 0.0) * w.n for w in windows)
    return StageResult(
        flag_key=flag.key,
        stage=state.stage,
        percent=state.percent,
        started_at=state.since,
        ended_at=now,
        planned_p95_ms=stage.max_p95_ms,
        observed_p95_ms=max(p95s) if p95s else None,
        planned_error_rate=stage.max_error_rate,
        observed_error_rate=errors / samples if samples else None,
        samples=samples,
        windows_passed=sum(w.verdict is Verdict.PASS for w in windows),
        windows_failed=sum(w.verdict is Verdict.FAIL for w in windows),
        windows_inconclusive=sum(w.verdict is Verdict.INCONCLUSIVE for w in windows),
        decision=d.action,
        # A dry run's decisions are reported but never applied: say so in the results.
        reason=f"{d.reason} (dry run)" if flag.dry_run else d.reason,
    )
