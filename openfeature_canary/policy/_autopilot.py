"""The policy of a rollout: read the signals, call the pure ``decide``, build the target state.

:class:`Autopilot` is the :class:`~openfeature_canary.policy.Policy` a :class:`Rollout` is
built with. At each tick the controller asks it for the state its flag moves to; the
controller hands that state to the rollout's pipeline, which persists it and only then runs
the effects. Nothing decided here outlives the call: the numbers a results row needs travel in
the decision-log entry that is persisted with the state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.errors import SignalSourceError
from openfeature_canary.plan import FlagPlan, Trigger
from openfeature_canary.policy._controller import Controller
from openfeature_canary.policy._decide import (
    Action,
    Decision,
    Memory,
    Reading,
    Readings,
    baseline_breaches,
    baseline_signal,
    counts_samples,
    decide,
)
from openfeature_canary.policy._gates import current_evidence, stage_summary
from openfeature_canary.policy._windows import windows_due
from openfeature_canary.signals import EMPTY_COHORT, CountsReading, SignalSource
from openfeature_canary.state import (
    WINDOW_LIMIT,
    LogEntry,
    Number,
    RolloutState,
    Status,
    WindowRecord,
)

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
    """Runs the policy for every flag of a rollout, on one signal source.

    >>> rollout = Rollout(plan, store=url, policy=Autopilot(source))   # doctest: +SKIP
    >>> rollout.controller("dataservice-read-canary").tick()          # doctest: +SKIP
    """

    def __init__(
        self, source: SignalSource, *, may_decide: Callable[[float], bool] | None = None
    ) -> None:
        self.source = source
        #: Asked at each tick whether this process decides (a fleet's lease); ``None``: always.
        self.may_decide = may_decide
        self._deciding = True
        self._memory: dict[str, Memory] = {}
        self._last: dict[str, TickResult] = {}
        self._snapshot_at: float | None = None
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")

    def last(self, flag_key: str) -> TickResult | None:
        """The flag's last tick (decision and trigger readings), if any."""
        return self._last.get(flag_key)

    # ------------------------------------------------------------------ deciding

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        """The state ``ctl``'s flag moves to at ``now`` (``None``: nothing to change).

        Idempotent within a tick: asked twice for the same ``now``, it decides once. In a
        fleet, only while ``may_decide(now)`` holds (this process has the lease).
        """
        if self.may_decide is not None and not self.may_decide(now):
            self._deciding = False
            return None
        with self._lock:
            if not self._deciding:
                # Another process decided meanwhile: what this one remembered of sustained
                # breaches is stale (the evidence itself is in the store).
                self._memory.clear()
                self._deciding = True
            previous = self._last.get(ctl.key)
            if previous is not None and previous.at == now:
                return None
            if self._snapshot_at != now:
                self._snapshot_source(now)
            state, flag = ctl.state, ctl.flag
            readings = self._gather(flag, state, now)
            after_done = flag.after is None or (
                ctl.rollout.controller(flag.after).state.status is Status.COMPLETED
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
        deferred = decision.action == Action.HOLD and decision.reason.startswith("start deferred")
        if deferred and (previous is None or previous.decision.reason != decision.reason):
            log.warning("%s: %s", ctl.key, decision.reason)
        if not decision.changes_state:
            return None
        return _target(flag, state, decision, now)

    def _snapshot_source(self, now: float) -> None:
        self._snapshot_at = now
        try:
            self.source.snapshot(now)
        except SignalSourceError as exc:
            log.error("signal source snapshot failed: %s", exc)

    def baseline_loud(self, ctl: Controller, now: float) -> list[str]:
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
            state.status is Status.PENDING and flag.after is None and state.requested != "start"
        ):
            return Readings()
        pending = state.status is Status.PENDING
        triggers: dict[str, Reading] = {}
        baselines: dict[str, Reading] = {}
        for t in flag.triggers:
            signal = baseline_signal(t.signal) if pending else t.signal
            triggers[t.name] = self._read_trigger(flag.key, t, signal, now)
            if not pending and t.if_baseline_breaches == "pause":
                baselines[t.name] = self._read_trigger(flag.key, t, baseline_signal(t.signal), now)
        if state.status not in (Status.RUNNING, Status.PAUSED) or state.stage < 1:
            return Readings(MappingProxyType(triggers), MappingProxyType(baselines))
        evidence = current_evidence(state.stage, state.since, state.evidence)
        counts = self._counts(flag.key, evidence.through, now)
        windows = {
            span.index: self._counts(flag.key, span.start, span.end)
            for span in windows_due(flag, state, now)
        }
        return Readings(
            MappingProxyType(triggers),
            MappingProxyType(baselines),
            counts,
            MappingProxyType(windows),
        )

    def _counts(self, key: str, start: float, end: float) -> CountsReading:
        try:
            return self.source.counts_between(key, start, end)
        except SignalSourceError as exc:
            return CountsReading(EMPTY_COHORT, EMPTY_COHORT, start, end, str(exc))
        except Exception as exc:  # a source's bug must not stop the policy: no evidence
            return CountsReading(EMPTY_COHORT, EMPTY_COHORT, start, end, repr(exc))

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
            "error_low": w.error_low,
            "error_high": w.error_high,
            "baseline_n": w.baseline_n,
            "baseline_p95_ms": w.baseline_p95_ms,
            "baseline_error_rate": w.baseline_error_rate,
            "window_s": w.end - w.start,
        },
    )


def _target(flag: FlagPlan, state: RolloutState, d: Decision, now: float) -> RolloutState:
    """The state a decision leads to. A dry-run flag never changes its percentage: a
    rollback is logged and restarts the stage's observation (and its evidence) instead."""
    dry = flag.dry_run
    numbers: dict[str, Number] = dict(d.numbers)
    if dry:
        numbers["dry_run"] = 1
    entries = [*(_window_entry(w) for w in d.windows)]
    windows = (*state.windows, *d.windows)[-WINDOW_LIMIT:]
    evidence = d.evidence if d.evidence is not None else state.evidence
    if d.action in (Action.HOLD, Action.EXTEND):
        if d.action == Action.EXTEND:
            entries.append(_entry(now, d.action, d.reason, numbers))
        return state.evolve(*entries, windows=windows, evidence=evidence)
    if (
        d.action in (Action.ROLLBACK, Action.PAUSE)
        and state.stage >= 1
        and "samples" not in numbers
    ):
        # A trigger ended the stage: its evidence goes into the persisted entry, from which
        # the results row is built once the transition is persisted.
        ev = current_evidence(state.stage, state.since, evidence)
        numbers.update(stage_summary(flag, state.stage, ev, windows))
    if d.action == Action.ROLLBACK:
        numbers.update(from_stage=state.stage, from_pct=state.percent)
        entries.append(_entry(now, d.action, d.reason, numbers))
        if dry:
            return state.evolve(*entries, since=now, windows=(), evidence=None)
        return state.evolve(
            *entries,
            status=Status.ROLLED_BACK,
            stage=0,
            percent=0.0,
            since=now,
            windows=(),
            reason=d.reason,
            requested="",
            evidence=None,
        )
    if d.action == Action.PAUSE:
        entries.append(_entry(now, d.action, d.reason, numbers))
        return state.evolve(
            *entries,
            status=Status.PAUSED,
            since=now,
            reason=d.reason,
            windows=windows,
            evidence=evidence,
        )
    if d.action == Action.COMPLETE:
        entries.append(_entry(now, d.action, d.reason, numbers))
        return state.evolve(
            *entries,
            status=Status.COMPLETED,
            percent=state.percent if dry else flag.stages[-1].percent,
            since=now,
            windows=(),
            reason="completed",
            evidence=None,
        )
    # ADVANCE or START: into the next stage. The ended stage's evidence stays until the new
    # stage's first tick: its baseline becomes the reference of a final stage at 100 %.
    stage = 1 if d.action == Action.START else state.stage + 1
    pct = state.percent if dry else flag.serving_percent(stage)
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
        requested="",
        evidence=evidence if d.action == Action.ADVANCE else None,
    )
