"""What each operator command does to a state: pure functions of (flag, state, now).

The controller reads the store, checks the command against :data:`ALLOWED`, calls one of
these to build the new state, and hands it to :func:`~openfeature_canary.policy.apply`. Each
builds its state with the same transition functions as the autopilot
(:mod:`openfeature_canary.policy.transitions`); nothing here does I/O, logs or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Final

from openfeature_canary._format import format_span
from openfeature_canary.errors import TransitionError
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy import transitions
from openfeature_canary.policy._reasons import OPERATOR
from openfeature_canary.state import Number, RolloutState, Status

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


def _said(reason: str) -> dict[str, Number]:
    """An operator's own words, kept as the entry's ``note`` (its reason is ``operator``)."""
    return {"note": reason} if reason and reason != OPERATOR else {}


def started(flag: FlagPlan, cur: RolloutState, now: float, *, by: str = "") -> RolloutState:
    """Pending → stage 1."""
    return transitions.start(
        flag, cur, now, OPERATOR, {}, status_reason="started", rule="command:start", by=by
    )


def start_requested(key: str, cur: RolloutState, now: float, *, by: str = "") -> RolloutState:
    """Pending, with a start requested for the process that runs the policy."""
    if cur.requested == "start":
        raise TransitionError(f"cannot start {key}: a start is requested already")
    return transitions.request_start(cur, now, by=by)


def paused(cur: RolloutState, now: float, reason: str, *, by: str = "") -> RolloutState:
    """Hold the current stage; its gate windows start again."""
    numbers = {"stage": cur.stage, "pct": cur.percent, **_said(reason)}
    return transitions.pause(
        cur, now, OPERATOR, numbers, rule="command:pause", by=by, status_reason=reason
    )


def resumed(cur: RolloutState, now: float, *, by: str = "") -> RolloutState:
    """Continue a paused stage; its observation restarts now."""
    return transitions.resume(cur, now, by=by)


def promoted(
    flag: FlagPlan,
    cur: RolloutState,
    now: float,
    reason: str,
    *,
    to: int | None = None,
    skip_soak: bool = True,
    by: str = "",
) -> RolloutState:
    """The next stage now (``completed`` after the last), the ended stage's evidence logged.

    ``to``: straight into that later stage (one transition, from the current stage).
    ``skip_soak=False`` refuses to complete from the last stage before its planned duration
    (the soak) is over.
    """
    evidence = {**transitions.stage_numbers(flag, cur), **_said(reason)}
    rule = "command:promote"
    last = len(flag.stages)
    if to is not None and not cur.stage < to <= last:
        raise TransitionError(
            f"cannot promote {flag.key} to stage {to}: it is at stage {cur.stage} of {last}; "
            f"give a later stage ({cur.stage + 1}..{last})"
            if cur.stage < last
            else f"cannot promote {flag.key} to stage {to}: it is at the last stage ({last})"
        )
    if cur.stage >= last:
        soak_left = cur.since + flag.stages[-1].duration_s - now
        if not skip_soak and soak_left > 0:
            raise TransitionError(
                f"cannot promote {flag.key}: it is at the last stage ({last}) and completing "
                f"now would skip {format_span(math.ceil(soak_left))} of its "
                f"{format_span(flag.stages[-1].duration_s)} soak; give --skip-soak to do so"
            )
        numbers = {"stage": cur.stage, "pct": cur.percent, **evidence}
        return transitions.complete(flag, cur, now, OPERATOR, numbers, rule=rule, by=by)
    # Into stage ``to`` in one step: ``advance`` goes to the stage after the one it is given.
    base = cur if to is None else replace(cur, stage=to - 1)
    numbers = {"from_stage": cur.stage, **evidence}
    return transitions.advance(flag, base, now, OPERATOR, numbers, rule=rule, by=by)


def rolled_back(
    flag: FlagPlan,
    cur: RolloutState,
    now: float,
    reason: str,
    numbers: Mapping[str, Number] | None = None,
    *,
    by: str = "",
) -> RolloutState:
    """0 %, sticky until a reset, with the stage left and its evidence logged; the state
    shows the operator's ``reason``, the entry says ``operator`` (and keeps it as ``note``)."""
    extra = {**transitions.stage_numbers(flag, cur), **_said(reason), **dict(numbers or {})}
    return transitions.rollback(
        cur, now, OPERATOR, extra, rule="command:rollback", by=by, status_reason=reason
    )


def reset(cur: RolloutState, now: float, *, by: str = "") -> RolloutState:
    """Back to pending (0 %); a requested start is withdrawn."""
    return transitions.reset(cur, now, by=by)


def reasserted_rollback(
    key: str, stored: RolloutState | None, forced: RolloutState
) -> RolloutState | None:
    """See :func:`~openfeature_canary.policy.transitions.reassert_rollback`."""
    return transitions.reassert_rollback(key, stored, forced)
