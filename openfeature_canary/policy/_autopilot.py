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
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.errors import SignalSourceError
from openfeature_canary.plan import FlagPlan, Trigger
from openfeature_canary.plan._signals import QUANTILES
from openfeature_canary.policy import transitions
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
from openfeature_canary.policy._fleet import decider_id
from openfeature_canary.policy._gates import current_evidence
from openfeature_canary.policy._windows import windows_due
from openfeature_canary.signals import EMPTY_COHORT, CountsReading, SignalSource
from openfeature_canary.signals._histogram import line_not_a_bound
from openfeature_canary.state import RolloutState, Status

__all__ = ["Autopilot", "TickResult", "histogram_lines"]

log = logging.getLogger("openfeature_canary")

#: How a refusal names the histogram the gates and the latency triggers read.
_HISTOGRAM = "the request-duration histogram"


def histogram_lines(flag: FlagPlan) -> dict[str, float]:
    """Every latency line of ``flag`` (ms), by what it is: the stages' P95/P99 lines and the
    thresholds of its triggers on latency signals. Each must be a bound of the
    request-duration histogram, or it could only be interpolated."""
    lines: dict[str, float] = {}
    for index, stage in enumerate(flag.stages, start=1):
        for name, line in (("P95", stage.max_p95_ms), ("P99", stage.max_p99_ms)):
            if line is not None:
                lines[f"the {name} line of stage {index}"] = line
    for t in flag.triggers:
        if t.signal.removeprefix("baseline_") in QUANTILES:
            lines[f"trigger {t.name}'s threshold"] = t.threshold
    return lines


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

    def __init__(self, source: SignalSource) -> None:
        self.source = source
        self._memory: dict[str, Memory] = {}
        self._last: dict[str, TickResult] = {}
        self._snapshot_at: float | None = None
        # Per flag, why the histogram the source reads cannot judge its lines (see _bounded).
        self._refused: dict[str, str] = {}
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")

    def last(self, flag_key: str) -> TickResult | None:
        """The flag's last tick (decision and trigger readings), if any."""
        return self._last.get(flag_key)

    # ------------------------------------------------------------------ deciding

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        """The state ``ctl``'s flag moves to at ``now`` (``None``: nothing to change).

        Idempotent within a tick: asked twice for the same ``now``, it decides once. The
        target is built by :func:`~openfeature_canary.policy.transitions.from_decision`, the
        same transitions the operator commands use.
        """
        with self._lock:
            previous = self._last.get(ctl.key)
            if previous is not None and previous.at == now:
                return None
            if self._snapshot_at != now:
                self._snapshot_source(now)
            state, flag = ctl.state, ctl.flag
            readings = self._gather(flag, state, now)
            after_done = ctl.after_completed()
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
        return transitions.from_decision(
            flag, state, decision, now, by=decider_id(ctl.rollout.fleet)
        )

    def stand_down(self) -> None:
        """Another process decides now (it holds the fleet's lease): what this one remembered
        of sustained breaches is stale (the evidence itself is in the store)."""
        with self._lock:
            self._memory.clear()

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
        # Counts first: reading the buckets is where a line that is not a bound is found,
        # and a refused flag's latency triggers must not read an interpolated value.
        judged = state.status in (Status.RUNNING, Status.PAUSED) and state.stage >= 1
        counts = self._stage_counts(flag, state, now) if judged else None
        triggers: dict[str, Reading] = {}
        baselines: dict[str, Reading] = {}
        for t in flag.triggers:
            signal = baseline_signal(t.signal) if pending else t.signal
            triggers[t.name] = self._read_trigger(flag.key, t, signal, now)
            if not pending and t.if_baseline_breaches == "pause":
                baselines[t.name] = self._read_trigger(flag.key, t, baseline_signal(t.signal), now)
        if counts is None:
            return Readings(MappingProxyType(triggers), MappingProxyType(baselines))
        return Readings(MappingProxyType(triggers), MappingProxyType(baselines), *counts)

    def _stage_counts(
        self, flag: FlagPlan, state: RolloutState, now: float
    ) -> tuple[CountsReading, Mapping[int, CountsReading], CountsReading | None]:
        """The stage's counts since its evidence, of the windows due, and its trailing window
        (read only once a go is possible)."""
        evidence = current_evidence(state.stage, state.since, state.evidence)
        counts = self._counts(flag, evidence.through, now)
        windows = {
            span.index: self._counts(flag, span.start, span.end)
            for span in windows_due(flag, state, now)
        }
        stage = flag.stage(state.stage)
        tail = None
        if state.status is Status.RUNNING and now + 1e-9 >= state.since + stage.duration_s:
            tail = self._counts(flag, max(state.since, now - stage.window_s), now)
        return counts, MappingProxyType(windows), tail

    def _counts(self, flag: FlagPlan, start: float, end: float) -> CountsReading:
        try:
            return self._bounded(flag, self.source.counts_between(flag.key, start, end))
        except SignalSourceError as exc:
            return CountsReading(EMPTY_COHORT, EMPTY_COHORT, start, end, str(exc))
        except Exception as exc:  # a source's bug must not stop the policy: no evidence
            return CountsReading(EMPTY_COHORT, EMPTY_COHORT, start, end, repr(exc))

    def _bounded(self, flag: FlagPlan, counts: CountsReading) -> CountsReading:
        """The counts, or a refusal when their histogram lacks one of the flag's lines.

        Checked whenever buckets are read (the first time is the first tick with traffic):
        neither source knows its buckets before a request was recorded, and a redeploy can
        change them. A refused flag takes no evidence (its stage holds) and its latency
        triggers read as errors (their ``on_error`` acts), until the bounds are there.
        """
        if counts.error is not None:
            return counts
        lines = histogram_lines(flag)
        for cohort in (counts.canary, counts.baseline):
            problem = line_not_a_bound(lines, cohort.bounds, _HISTOGRAM) if cohort.n else None
            if problem:
                if self._refused.get(flag.key) != problem:
                    log.error("%s: refused: %s", flag.key, problem)
                self._refused[flag.key] = problem
                return CountsReading(EMPTY_COHORT, EMPTY_COHORT, counts.start, counts.end, problem)
        if counts.canary.n or counts.baseline.n:
            self._refused.pop(flag.key, None)
        return counts

    def _read_trigger(self, key: str, t: Trigger, signal: str, now: float) -> Reading:
        refused = self._refused.get(key)
        if refused is not None and signal.removeprefix("baseline_") in QUANTILES:
            return _ErrorReading(refused)
        try:
            if counts_samples(t):
                inclusive = t.op == "at_least"
                return self.source.count_beyond(
                    key, signal, t.threshold, inclusive, t.window_s, now
                )
            return self.source.read(key, signal, t.window_s, now)
        except SignalSourceError as exc:
            return _ErrorReading(str(exc))
