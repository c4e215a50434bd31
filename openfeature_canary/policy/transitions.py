"""One pure function per kind of transition: ``(flag, state, …, now) -> the next state``.

The autopilot (:func:`from_decision`, for a :class:`~openfeature_canary.policy.Decision`) and the
operator commands (``_commands.py``) build every next state here, so a rollback is one state
whoever asks for it. Nothing here does I/O, logs or reads a clock: each result is tested by
value. The shell that persists and announces a transition is :mod:`.apply`.

>>> from openfeature_canary.state import RolloutState
>>> state = RolloutState(flag_key="f")
>>> rollback(state, 10.0, "operator", {}).status.value
'rolled_back'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from openfeature_canary.evidence import StageEvidence
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy._decision import Action, Decision
from openfeature_canary.policy._gates import current_evidence
from openfeature_canary.policy._numbers import stage_summary
from openfeature_canary.policy._reasons import explain
from openfeature_canary.state import (
    WINDOW_LIMIT,
    LogEntry,
    Number,
    RolloutState,
    Status,
    WindowRecord,
)

__all__ = [
    "advance",
    "complete",
    "entry",
    "from_decision",
    "pause",
    "reassert_rollback",
    "record",
    "request_start",
    "reset",
    "resume",
    "rollback",
    "stage_numbers",
    "start",
]


def entry(
    at: float,
    action: str,
    reason: str,
    numbers: Mapping[str, Number],
    *,
    rule: str = "",
    by: str = "",
) -> LogEntry:
    """A decision-log entry (the action as plain text: it is persisted and printed), with the
    rule that acted and who decided (:mod:`._reasons`)."""
    return LogEntry(
        at=at,
        action=str(action),
        reason=reason,
        numbers=MappingProxyType(dict(numbers)),
        rule=rule,
        by=by,
    )


def stage_numbers(flag: FlagPlan, state: RolloutState) -> dict[str, Number]:
    """The evidence of the stage a running or paused ``state`` is in, for the entry an
    operator's command ends it with (its results row); ``{}`` outside a stage."""
    if state.status not in (Status.RUNNING, Status.PAUSED) or not 1 <= state.stage <= len(
        flag.stages
    ):
        return {}
    evidence = current_evidence(state.stage, state.since, state.evidence)
    return stage_summary(flag, state.stage, evidence, state.windows)


# --------------------------------------------------------------------------- the kinds


def start(
    flag: FlagPlan,
    state: RolloutState,
    now: float,
    reason: str,
    numbers: Mapping[str, Number],
    *,
    dry: bool = False,
    status_reason: str | None = None,
    logged: tuple[LogEntry, ...] = (),
    rule: str = "",
    by: str = "",
) -> RolloutState:
    """Pending → stage 1 (a dry-run flag keeps its percentage)."""
    nums = {**numbers, "to_stage": 1, "to_pct": flag.stages[0].percent}
    return state.evolve(
        *logged,
        entry(now, Action.START, reason, nums, rule=rule, by=by),
        status=Status.RUNNING,
        stage=1,
        percent=state.percent if dry else flag.serving_percent(1),
        since=now,
        windows=(),
        reason=reason if status_reason is None else status_reason,
        requested="",
        evidence=None,
    )


def request_start(state: RolloutState, now: float, *, by: str = "") -> RolloutState:
    """Pending, with a start requested for the process that runs the policy."""
    return state.evolve(
        entry(now, "request_start", "operator", {}, rule="command:start", by=by),
        requested="start",
        reason="start requested",
    )


def advance(
    flag: FlagPlan,
    state: RolloutState,
    now: float,
    reason: str,
    numbers: Mapping[str, Number],
    *,
    dry: bool = False,
    logged: tuple[LogEntry, ...] = (),
    evidence: StageEvidence | None = None,
    rule: str = "",
    by: str = "",
) -> RolloutState:
    """Into the next stage. The ended stage's evidence (``evidence``, else the state's) stays
    until the new stage's first tick: its baseline is the reference of a final stage at 100 %."""
    stage = state.stage + 1
    nums = {**numbers, "to_stage": stage, "to_pct": flag.stage(stage).percent}
    return state.evolve(
        *logged,
        entry(now, Action.ADVANCE, reason, nums, rule=rule, by=by),
        status=Status.RUNNING,
        stage=stage,
        percent=state.percent if dry else flag.serving_percent(stage),
        since=now,
        windows=(),
        reason=reason,
        requested="",
        evidence=state.evidence if evidence is None else evidence,
    )


def complete(
    flag: FlagPlan,
    state: RolloutState,
    now: float,
    reason: str,
    numbers: Mapping[str, Number],
    *,
    dry: bool = False,
    logged: tuple[LogEntry, ...] = (),
    rule: str = "",
    by: str = "",
) -> RolloutState:
    """The last stage passed: the flag serves its final percentage for good."""
    return state.evolve(
        *logged,
        entry(now, Action.COMPLETE, reason, numbers, rule=rule, by=by),
        status=Status.COMPLETED,
        percent=state.percent if dry else flag.stages[-1].percent,
        since=now,
        windows=(),
        reason="completed",
        evidence=None,
    )


def rollback(
    state: RolloutState,
    now: float,
    reason: str,
    numbers: Mapping[str, Number],
    *,
    dry: bool = False,
    logged: tuple[LogEntry, ...] = (),
    rule: str = "",
    by: str = "",
    status_reason: str | None = None,
) -> RolloutState:
    """0 %, sticky until a reset, with the stage left logged. A dry-run flag only logs it and
    restarts the stage's observation (and its evidence). ``status_reason`` is what the state
    shows (an operator's own words; default ``reason``)."""
    nums = {**numbers, "from_stage": state.stage, "from_pct": state.percent}
    logged = (*logged, entry(now, Action.ROLLBACK, reason, nums, rule=rule, by=by))
    if dry:
        return state.evolve(*logged, since=now, windows=(), evidence=None)
    return state.evolve(
        *logged,
        status=Status.ROLLED_BACK,
        stage=0,
        percent=0.0,
        since=now,
        windows=(),
        reason=reason if status_reason is None else status_reason,
        requested="",
        evidence=None,
    )


def pause(
    state: RolloutState,
    now: float,
    reason: str,
    numbers: Mapping[str, Number],
    *,
    windows: tuple[WindowRecord, ...] = (),
    evidence: StageEvidence | None = None,
    logged: tuple[LogEntry, ...] = (),
    rule: str = "",
    by: str = "",
    status_reason: str | None = None,
) -> RolloutState:
    """Hold the current stage (no automatic advance; triggers still roll back)."""
    return state.evolve(
        *logged,
        entry(now, Action.PAUSE, reason, numbers, rule=rule, by=by),
        status=Status.PAUSED,
        since=now,
        windows=windows,
        reason=reason if status_reason is None else status_reason,
        evidence=state.evidence if evidence is None else evidence,
    )


def resume(state: RolloutState, now: float, *, by: str = "") -> RolloutState:
    """Continue a paused stage; its observation restarts now."""
    nums = {"stage": state.stage, "pct": state.percent}
    return state.evolve(
        entry(now, "resume", "operator", nums, rule="command:resume", by=by),
        status=Status.RUNNING,
        since=now,
        windows=(),
        reason="resumed",
    )


def reset(state: RolloutState, now: float, *, by: str = "") -> RolloutState:
    """Back to pending (0 %); a requested start is withdrawn."""
    nums = {"from_status": state.status.value, "from_pct": state.percent}
    return state.evolve(
        entry(now, "reset", "operator", nums, rule="command:reset", by=by),
        status=Status.PENDING,
        stage=0,
        percent=0.0,
        since=now,
        windows=(),
        reason="reset",
        requested="",
        evidence=None,
    )


def record(
    state: RolloutState,
    *entries: LogEntry,
    windows: tuple[WindowRecord, ...],
    evidence: StageEvidence | None,
) -> RolloutState:
    """No change of stage: the tick's judged windows and evidence (and an ``extend``)."""
    return state.evolve(*entries, windows=windows, evidence=evidence)


def reassert_rollback(
    key: str, stored: RolloutState | None, forced: RolloutState
) -> RolloutState | None:
    """A rollback forced while the store could not be written, rebuilt over what the store
    holds now; ``None`` when the store shows it rolled back already or an operator reset it
    since. Its version is never below the forced one, so states only move forward."""
    if stored is not None and (
        stored.status is Status.ROLLED_BACK
        or any(e.action == "reset" and e.at >= forced.since for e in stored.log)
    ):
        return None
    base = stored or RolloutState(flag_key=key)
    last = forced.last_decision
    target = base.evolve(
        *((last,) if last is not None else ()),
        status=Status.ROLLED_BACK,
        stage=0,
        percent=0.0,
        since=forced.since,
        windows=(),
        reason=forced.reason,
        requested="",
        evidence=None,
    )
    return replace(target, version=max(target.version, forced.version))


# --------------------------------------------------------------------------- decisions


def _window_entry(w: WindowRecord) -> LogEntry:
    numbers: dict[str, Number] = {
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
    }
    return entry(w.end, f"window_{w.verdict.value}", w.reason, numbers)


def from_decision(
    flag: FlagPlan, state: RolloutState, d: Decision, now: float, *, by: str = ""
) -> RolloutState:
    """The state a policy decision leads to, through the same kinds as the operator
    commands, its entry in the plan's words (:func:`~._reasons.explain`) and by ``by`` (the
    deciding process's id). A dry-run flag never changes its percentage."""
    dry = flag.dry_run
    why = explain(flag, d.reason, d.numbers)
    reason, rule = why.reason, why.rule
    numbers: dict[str, Number] = dict(why.numbers)
    if dry:
        numbers["dry_run"] = 1
    logged = tuple(_window_entry(w) for w in d.windows)
    windows = (*state.windows, *d.windows)[-WINDOW_LIMIT:]
    evidence = d.evidence if d.evidence is not None else state.evidence
    action = d.action
    if action in (Action.HOLD, Action.EXTEND):
        if action == Action.EXTEND:
            logged = (*logged, entry(now, action, reason, numbers, rule=rule, by=by))
        return record(state, *logged, windows=windows, evidence=evidence)
    if action in (Action.ROLLBACK, Action.PAUSE) and state.stage >= 1 and "samples" not in numbers:
        # A trigger ended the stage: its evidence goes into the persisted entry, from which
        # the results row is built once the transition is persisted.
        ev = current_evidence(state.stage, state.since, evidence)
        numbers.update(stage_summary(flag, state.stage, ev, windows))
    if action == Action.ROLLBACK:
        return rollback(state, now, reason, numbers, dry=dry, logged=logged, rule=rule, by=by)
    if action == Action.PAUSE:
        return pause(
            state,
            now,
            reason,
            numbers,
            windows=windows,
            evidence=evidence,
            logged=logged,
            rule=rule,
            by=by,
        )
    if action == Action.COMPLETE:
        return complete(flag, state, now, reason, numbers, dry=dry, logged=logged, rule=rule, by=by)
    if action == Action.START:
        return start(flag, state, now, reason, numbers, dry=dry, logged=logged, rule=rule, by=by)
    return advance(
        flag,
        state,
        now,
        reason,
        numbers,
        dry=dry,
        logged=logged,
        evidence=evidence,
        rule=rule,
        by=by,
    )
