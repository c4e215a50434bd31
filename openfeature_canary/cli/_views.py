"""What an operator reads at a glance: the time left in a stage, the next decision, a short
last decision, a flag's history and the ``status --watch`` frame (pure functions, no I/O).

Kept apart from :mod:`openfeature_canary.cli._format` (the one-shot outputs) so that each file
stays small; both are tested by value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from openfeature_canary._format import format_number, format_span, iso_utc
from openfeature_canary.plan import FlagPlan
from openfeature_canary.state import LogEntry, Number, RolloutState, Status

__all__ = [
    "SHORT_DECISION_MAX",
    "TRANSITIONS",
    "StageClock",
    "history_json",
    "history_lines",
    "left_text",
    "next_decision",
    "short_decision",
    "stage_clock",
    "watch_lines",
]

#: The longest ``status`` LAST DECISION cell (longer reasons are cut with an ellipsis).
SHORT_DECISION_MAX: Final = 60

#: Log actions that change the status, stage or percent (the rest are windows, extensions,
#: requests: decisions that kept the flag where it was).
TRANSITIONS: Final = frozenset(
    {"start", "advance", "complete", "rollback", "pause", "resume", "reset"}
)

_NONE: Final = "-"


@dataclass(frozen=True)
class StageClock:
    """Where a running flag stands in its stage at ``now``.

    ``left_s``: seconds until the stage's planned duration is over (0 once it is: the gate
    then decides at each tick); ``next_tick_at``: when the decider is due to look again
    (the last tick that folded data in plus the flag's ``tick``; ``None`` before the first).
    """

    left_s: float
    next_tick_at: float | None


def stage_clock(flag: FlagPlan, state: RolloutState, now: float) -> StageClock | None:
    """The stage's clock while ``state`` runs a stage (``None`` when pending, paused, done)."""
    if state.status is not Status.RUNNING or not 1 <= state.stage <= len(flag.stages):
        return None
    end = state.since + flag.stage(state.stage).duration_s
    through = state.evidence.through if state.evidence is not None else None
    next_at = None if through is None else through + flag.tick_s
    return StageClock(left_s=max(0.0, end - now), next_tick_at=next_at)


def left_text(flag: FlagPlan, state: RolloutState, now: float) -> str:
    """``status``'s LEFT cell: ``"7m 30s"``, ``"gate due"`` once over, ``"-"`` outside a stage."""
    clock = stage_clock(flag, state, now)
    if clock is None:
        return _NONE
    return format_span(math.ceil(clock.left_s)) if clock.left_s > 0 else "gate due"


def next_decision(flag: FlagPlan, state: RolloutState, now: float) -> str:
    """One line on what happens next: when the decider looks again and what the gate needs.

    ``needed``/``needed_s`` come from the newest decision that logged them (a gate short of
    information), so the line says how many more canary requests, and roughly how long at
    the stage's rate so far, the gate waits for.
    """
    if state.status is Status.PAUSED:
        return "paused: no automatic advance (triggers still roll back); resume to continue"
    if state.status is Status.PENDING:
        return "start requested: waits for a quiet baseline" if state.requested else "pending"
    clock = stage_clock(flag, state, now)
    if clock is None:
        return f"{state.status.value}: nothing more is decided until a reset"
    parts = []
    if clock.next_tick_at is None:
        parts.append(f"next tick within {format_span(flag.tick_s)}")
    else:
        parts.append(f"next tick in {_span(clock.next_tick_at - now)}")
    last = flag.stage(state.stage)
    if clock.left_s > 0:
        what = "complete" if state.stage >= len(flag.stages) else "advance"
        parts.append(
            f"gate may {what} in {_span(clock.left_s)} ({format_span(last.duration_s)} stage)"
        )
    else:
        parts.append("gate due at each tick")
    needs = _needs(state)
    if needs:
        parts.append(needs)
    return "; ".join(parts)


def _needs(state: RolloutState) -> str:
    for entry in reversed(state.log):
        if entry.at < state.since:
            break
        needed = entry.numbers.get("needed")
        if isinstance(needed, int | float) and not isinstance(needed, bool):
            unit = entry.numbers.get("needed_unit")
            unit = unit if isinstance(unit, str) else "canary requests"
            text = f"gate needs {format_number(float(needed))} more {unit}"
            needed_s = entry.numbers.get("needed_s")
            if isinstance(needed_s, int | float) and not isinstance(needed_s, bool):
                text += f" (~{_span(float(needed_s))} at this rate)"
            return text
    return ""


def _span(seconds: float) -> str:
    return format_span(max(0, math.ceil(seconds))) if seconds > 0 else "0s"


def short_decision(entry: LogEntry | None, limit: int = SHORT_DECISION_MAX) -> str:
    """A decision in at most ``limit`` characters: action, reason, value vs threshold.

    >>> from openfeature_canary.state import LogEntry
    >>> short_decision(LogEntry(1.0, "rollback", "p95_breach", {"value": 162.0, "threshold": 150,
    ...     "unit": "ms"}))
    'rollback p95_breach 162 ms vs 150 ms'

    An operator's own words (``note``) follow the reason: ``rollback operator: bad data``.
    """
    if entry is None:
        return _NONE
    value, threshold = entry.numbers.get("value"), entry.numbers.get("threshold")
    unit = f" {entry.unit}" if entry.unit else ""
    versus = ""
    if _is_number(value) and _is_number(threshold):
        versus = f" {_num(value)}{unit} vs {_num(threshold)}{unit}"
    note = entry.numbers.get("note")
    said = f": {note}" if note else ""
    head = f"{entry.action} {entry.reason}{said}".strip() if entry.reason else entry.action
    room = limit - len(versus)
    if len(head) > room:
        head = head[: max(1, room - 1)].rstrip() + "…"
    return f"{head}{versus}"[:limit]


def history_lines(
    flag: FlagPlan, state: RolloutState, *, transitions_only: bool = False
) -> list[str]:
    """``history``: one line per logged decision (only the transitions with
    ``transitions_only``), oldest first: time, action, reason and the numbers behind it; a
    transition is marked ``*``."""
    entries = [e for e in state.log if not transitions_only or e.action in TRANSITIONS]
    what = "transition" if transitions_only else "decision"
    lines = [
        f"{flag.key}: {state.status.value}, stage {state.stage}/{len(flag.stages)}, "
        f"version {state.version}; {len(entries)} {what}{'s' if len(entries) != 1 else ''}"
        " (the store keeps the newest ones), oldest first"
    ]
    for e in entries:
        numbers = " ".join(f"{k}={_num(v)}" for k, v in e.numbers.items() if v is not None)
        note = e.numbers.get("note")
        said = f"{e.reason}: {note}" if note else e.reason
        why = "; ".join(str(w) for w in (said, e.rule, e.by and f"by {e.by}") if w)
        reason = f" ({why})" if why else ""
        mark = "*" if e.action in TRANSITIONS else " "
        lines.append(f"{iso_utc(e.at)} {mark} {e.action}{reason}  {numbers}".rstrip())
    return lines


def history_json(
    flag: FlagPlan, state: RolloutState, *, transitions_only: bool = False
) -> dict[str, Any]:
    """``history --json``: ``{"flag", "status", "stage", "version", "entries": [...]}``."""
    entries = [e for e in state.log if not transitions_only or e.action in TRANSITIONS]
    return {
        "flag": flag.key,
        "status": state.status.value,
        "stage": state.stage,
        "stages": len(flag.stages),
        "version": state.version,
        "entries": [
            {
                "at": iso_utc(e.at),
                "at_epoch": e.at,
                "action": e.action,
                "transition": e.action in TRANSITIONS,
                "reason": e.reason,
                "rule": e.rule,
                "by": e.by,
                "numbers": dict(e.numbers),
            }
            for e in entries
        ],
    }


def watch_lines(
    flags: Sequence[FlagPlan], states: Mapping[str, RolloutState], now: float
) -> list[str]:
    """Per flag, the lines ``status --watch`` adds under the table: the next decision."""
    return [f"{f.key}: {next_decision(f, states[f.key], now)}" for f in flags]


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Number | object) -> str:
    if isinstance(v, float):
        return format_number(v)
    return str(v)
