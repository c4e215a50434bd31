"""What each operator command does to a state: pure functions of (flag, state, now).

The controller reads the store, checks the command against :data:`ALLOWED`, calls one of
these to build the new state, and hands it to the pipeline. Nothing here does I/O, logs or
reads a clock, so each command's result is tested by value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Final

from openfeature_canary.errors import TransitionError
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy._gates import current_evidence, stage_summary
from openfeature_canary.state import LogEntry, Number, RolloutState, Status

__all__ = [
    "ALLOWED",
    "check_allowed",
    "paused",
    "promoted",
    "reasserted_rollback",
    "reset",
    "resumed",
    "rolled_back",
    "start_requested",
    "started",
]

#: Which statuses each operator command may start from.
ALLOWED: Final[Mapping[str, frozenset[Status]]] = MappingProxyType(
    {
        "start": frozenset({Status.PENDING}),
        "pause": frozenset({Status.RUNNING}),
        "resume": frozenset({Status.PAUSED}),
        "promote": frozenset({Status.RUNNING, Status.PAUSED}),
        "rollback": frozenset({Status.PENDING, Status.RUNNING, Status.PAUSED, Status.COMPLETED}),
        "reset": frozenset({Status.RUNNING, Status.PAUSED, Status.COMPLETED, Status.ROLLED_BACK}),
    }
)

_HINTS: Final = {
    Status.ROLLED_BACK: "reset it first",
    Status.COMPLETED: "it has finished; reset it to run again",
    Status.PENDING: "start it first",
    Status.PAUSED: "resume it first",
}

_ALREADY: Final = frozenset(
    {
        ("pause", Status.PAUSED),
        ("rollback", Status.ROLLED_BACK),
        ("reset", Status.PENDING),
        ("start", Status.RUNNING),
    }
)


def check_allowed(key: str, command: str, current: RolloutState) -> None:
    """Raise :class:`TransitionError` (with a hint) when ``command`` is not valid now."""
    if current.status in ALLOWED[command]:
        return
    if command == "reset" and current.requested:
        return  # a pending flag's requested start is withdrawn by a reset
    if (command, current.status) in _ALREADY:
        raise TransitionError(f"cannot {command} {key}: it is {current.status.value} already")
    msg = f"cannot {command} {key}: it is {current.status.value}"
    if current.status is Status.ROLLED_BACK and current.reason:
        msg += f" (reason: {current.reason})"
    hint = _HINTS.get(current.status)
    raise TransitionError(f"{msg}; {hint}" if hint else msg)


def _entry(at: float, action: str, reason: str, **numbers: Number) -> LogEntry:
    return LogEntry(at=at, action=action, reason=reason, numbers=MappingProxyType(numbers))


def _evidence(flag: FlagPlan, cur: RolloutState) -> dict[str, Number]:
    """The running stage's evidence, for the entry that ends it (its results row)."""
    if cur.status not in (Status.RUNNING, Status.PAUSED) or not 1 <= cur.stage <= len(flag.stages):
        return {}
    evidence = current_evidence(cur.stage, cur.since, cur.evidence)
    return stage_summary(flag, cur.stage, evidence, cur.windows)


def started(flag: FlagPlan, cur: RolloutState, now: float) -> RolloutState:
    """Pending → stage 1."""
    first = flag.stages[0]
    return cur.evolve(
        _entry(now, "start", "operator", to_stage=1, to_pct=first.percent),
        status=Status.RUNNING,
        stage=1,
        percent=flag.serving_percent(1),
        since=now,
        windows=(),
        reason="started",
        requested="",
        evidence=None,
    )


def start_requested(key: str, cur: RolloutState, now: float) -> RolloutState:
    """Pending, with a start requested for the process that runs the policy."""
    if cur.requested == "start":
        raise TransitionError(f"cannot start {key}: a start is requested already")
    return cur.evolve(
        _entry(now, "request_start", "operator"), requested="start", reason="start requested"
    )


def paused(cur: RolloutState, now: float, reason: str) -> RolloutState:
    """Hold the current stage."""
    return cur.evolve(
        _entry(now, "pause", reason, stage=cur.stage, pct=cur.percent),
        status=Status.PAUSED,
        since=now,
        windows=(),
        reason=reason,
    )


def resumed(cur: RolloutState, now: float) -> RolloutState:
    """Continue a paused stage; its observation restarts now."""
    return cur.evolve(
        _entry(now, "resume", "operator", stage=cur.stage, pct=cur.percent),
        status=Status.RUNNING,
        since=now,
        windows=(),
        reason="resumed",
    )


def promoted(flag: FlagPlan, cur: RolloutState, now: float, reason: str) -> RolloutState:
    """The next stage now (``completed`` after the last), the ended stage's evidence logged."""
    evidence = _evidence(flag, cur)
    if cur.stage >= len(flag.stages):
        return cur.evolve(
            _entry(now, "complete", reason, stage=cur.stage, pct=cur.percent, **evidence),
            status=Status.COMPLETED,
            percent=flag.stages[-1].percent,
            since=now,
            windows=(),
            reason="completed",
            evidence=None,
        )
    nxt = flag.stages[cur.stage]
    return cur.evolve(
        _entry(
            now,
            "advance",
            reason,
            from_stage=cur.stage,
            to_stage=cur.stage + 1,
            to_pct=nxt.percent,
            **evidence,
        ),
        status=Status.RUNNING,
        stage=cur.stage + 1,
        percent=flag.serving_percent(cur.stage + 1),
        since=now,
        windows=(),
        reason=reason,
    )


def rolled_back(
    flag: FlagPlan,
    cur: RolloutState,
    now: float,
    reason: str,
    numbers: Mapping[str, Number] | None = None,
) -> RolloutState:
    """0 %, sticky until a reset, with the stage left and its evidence logged."""
    extra = {**_evidence(flag, cur), **dict(numbers or {})}
    return cur.evolve(
        _entry(now, "rollback", reason, from_stage=cur.stage, from_pct=cur.percent, **extra),
        status=Status.ROLLED_BACK,
        stage=0,
        percent=0.0,
        since=now,
        windows=(),
        reason=reason,
        requested="",
        evidence=None,
    )


def reset(cur: RolloutState, now: float) -> RolloutState:
    """Back to pending (0 %); a requested start is withdrawn."""
    return cur.evolve(
        _entry(now, "reset", "operator", from_status=cur.status.value, from_pct=cur.percent),
        status=Status.PENDING,
        stage=0,
        percent=0.0,
        since=now,
        windows=(),
        reason="reset",
        requested="",
        evidence=None,
    )


def reasserted_rollback(
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
    entry = forced.last_decision
    target = base.evolve(
        *((entry,) if entry is not None else ()),
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
