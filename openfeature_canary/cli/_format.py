"""Text and JSON shapes of the command line's output (pure functions, no I/O).

Kept apart from the argument parsing in :mod:`openfeature_canary.cli._main` so that each output
format can be tested by value.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from openfeature_canary._format import format_number, format_percent, format_span, iso_utc
from openfeature_canary.bucketing import bucket, in_rollout
from openfeature_canary.cli._views import left_text, next_decision, short_decision, stage_clock
from openfeature_canary.evidence import StageEvidence
from openfeature_canary.plan import FlagPlan
from openfeature_canary.plan._guards import PER_REQUEST
from openfeature_canary.policy._gates import alpha_per_test, stage_power
from openfeature_canary.policy._guards import guard_information, guard_of
from openfeature_canary.state import RolloutState, Status
from openfeature_canary.stores import Lease

__all__ = [
    "bucket_lines",
    "decider_json",
    "decider_line",
    "flag_summary",
    "format_pct",
    "state_line",
    "status_json",
    "status_table",
]

_NONE = "-"
STATUS_COLUMNS = (
    "FLAG",
    "STATUS",
    "STAGE",
    "PERCENT",
    "SINCE",
    "LEFT",
    "REASON",
    "LAST DECISION",
)


def format_pct(percent: float) -> str:
    """``5.0`` → ``"5%"``, ``12.5`` → ``"12.5%"`` (compact, for aligned columns)."""
    return format_percent(percent, sep="")


def _status_written(state: RolloutState) -> bool:
    """Whether the state's status was ever written (so that its ``since`` means something).

    A state never written keeps the pending default's ``since``; so does one whose only
    changes are an operator's start request, which records the request and leaves the
    status (and its ``since``) as they were.
    """
    if state.version == 0:
        return False
    return not state.log or any(entry.action != "request_start" for entry in state.log)


def _since(state: RolloutState) -> str | None:
    return iso_utc(state.since) if _status_written(state) else None


def state_line(flag: FlagPlan, state: RolloutState) -> str:
    """One line after a state change: ``"x: running, stage 1/4, 5%"`` (+ the reason when
    rolled back or paused)."""
    line = (
        f"{flag.key}: {state.status.value}, stage {state.stage}/{len(flag.stages)}, "
        f"{format_pct(state.percent)}"
    )
    if state.status in (Status.ROLLED_BACK, Status.PAUSED) and state.reason:
        line += f" (reason: {state.reason})"
    if state.requested:
        line += f" ({state.requested} requested)"
    return line


def _status_text(state: RolloutState) -> str:
    """``pending``, or ``pending (start requested)`` while the policy has not carried it out."""
    if state.requested:
        return f"{state.status.value} ({state.requested} requested)"
    return state.status.value


def status_table(flags: Sequence[FlagPlan], states: Mapping[str, RolloutState], now: float) -> str:
    """An aligned text table, one row per flag (columns :data:`STATUS_COLUMNS`): LEFT is the
    time left in the stage at ``now``, LAST DECISION at most ~60 characters."""
    rows = [STATUS_COLUMNS]
    for flag in flags:
        s = states[flag.key]
        rows.append(
            (
                flag.key,
                _status_text(s),
                f"{s.stage}/{len(flag.stages)}",
                format_pct(s.percent),
                _since(s) or _NONE,
                left_text(flag, s, now),
                s.reason or _NONE,
                short_decision(s.last_decision),
            )
        )
    return _align(rows)


def status_json(
    flags: Sequence[FlagPlan],
    states: Mapping[str, RolloutState],
    *,
    plan_source: str,
    store_url: str,
    now: float,
) -> dict[str, Any]:
    """Machine-readable status: ``{"plan", "store", "flags": [{...}, ...]}``; ``left_s`` and
    ``next_tick_epoch`` are ``null`` outside a running stage."""
    out: list[dict[str, Any]] = []
    for flag in flags:
        s = states[flag.key]
        last = s.last_decision
        clock = stage_clock(flag, s, now)
        out.append(
            {
                "flag": flag.key,
                "status": s.status.value,
                "stage": s.stage,
                "stages": len(flag.stages),
                "percent": s.percent,
                "since": _since(s),
                "since_epoch": s.since if _status_written(s) else None,
                "reason": s.reason,
                "requested": s.requested or None,
                "version": s.version,
                "left_s": None if clock is None else round(clock.left_s, 3),
                "next_tick_epoch": None if clock is None else clock.next_tick_at,
                "next": next_decision(flag, s, now),
                "last_decision": None
                if last is None
                else {
                    "at": iso_utc(last.at),
                    "at_epoch": last.at,
                    "action": last.action,
                    "reason": last.reason,
                    # Always present (null: not logged, as by older versions): a stable shape.
                    "rule": last.rule or None,
                    "by": last.by or None,
                    "numbers": dict(last.numbers),
                },
            }
        )
    return {"plan": plan_source, "store": store_url, "flags": out}


def decider_line(lease: Lease | None, now: float, *, error: str | None = None) -> str | None:
    """The status's line on who decides (``None``: no process has taken the decider lease):

    >>> decider_line(Lease("web-1:4242:9f3a01bc", 1_000_006.25), 1_000_000.0)
    'decider: web-1:4242:9f3a01bc (lease 6.2 s left)'
    """
    if error is not None:
        return f"decider: unknown (cannot read the lease: {error})"
    if lease is None:
        return None
    left = lease.left_s(now)
    if left > 0:
        return f"decider: {lease.holder} (lease {left:.1f} s left)"
    return f"decider: none (the lease of {lease.holder} expired {-left:.1f} s ago)"


def decider_json(
    lease: Lease | None, now: float, *, error: str | None = None
) -> dict[str, Any] | None:
    """The decider for ``status --json``: ``{"process", "lease_left_s", "lease_expires",
    "lease_expires_epoch", "error"}``; ``process`` is ``null`` once the lease expired; the
    whole is ``null`` when no process has taken the lease."""
    if error is None and lease is None:
        return None
    left = None if lease is None else round(lease.left_s(now), 3)
    return {
        "process": lease.holder if lease is not None and lease.held_at(now) else None,
        "lease_left_s": left,
        "lease_expires": None if lease is None else iso_utc(lease.expires),
        "lease_expires_epoch": None if lease is None else lease.expires,
        "error": error,
    }


def flag_summary(flag: FlagPlan) -> str:
    """One line for ``plan check``: stages with percent and duration, trigger count, guards."""
    stages = ", ".join(
        f"{format_pct(s.percent)} for {format_span(s.duration_s)}" for s in flag.stages
    )
    n_stages, n_triggers = len(flag.stages), len(flag.triggers)
    line = (
        f"{flag.key}: {n_stages} stage{'s' if n_stages != 1 else ''} ({stages}), "
        f"{n_triggers} trigger{'s' if n_triggers != 1 else ''}"
    )
    if flag.guards:
        n = len(flag.guards)
        line += f", {n} guard{'s' if n != 1 else ''} ({', '.join(g.describe for g in flag.guards)})"
    if flag.after:
        line += f", after {flag.after}"
    if flag.env_override:
        line += f", env override {flag.env_override}"
    return line


#: How ``plan check --rps`` names each line's effect (three times the line).
_EFFECT = {
    "error_line": "5xx {:.3g} %",
    "p95_line": "{:.3g} % over the P95 line",
    "p99_line": "{:.3g} % over the P99 line",
}


def rps_value(text: str) -> float:
    """``--rps``: a finite number of requests per second above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of requests/s above 0, got {text!r}")
    return value


def power_lines(flag: FlagPlan, rps: float) -> list[str]:
    """For ``plan check --rps``: per stage, the canary requests it gets at ``rps`` within its
    duration, and per line its power against three times the line and the time it would need
    for the plan's power."""
    out = []
    want = f"{100 * flag.decisions.power:.3g} %"
    for index in range(1, len(flag.stages) + 1):
        sp = stage_power(flag, index, rps)
        parts = []
        for info in sp.lines:
            if info.power_3x is None:
                continue
            effect = _EFFECT[info.name].format(300 * info.line)
            needs = sp.seconds_needed(info)
            need = "never" if needs is None else format_span(needs)
            if needs is not None and needs > 2 * sp.duration_s:
                need += " (over twice the stage)"
            parts.append(
                f"{info.name} ({effect}): power {100 * info.power_3x:.3g} %, {want} needs {need}"
            )
        stage = flag.stage(index)
        parts.extend(_guard_parts(flag, index, rps))
        out.append(
            f"  stage {index} ({format_pct(flag.serving_percent(index))} for "
            f"{format_span(stage.duration_s)}) at {format_number(rps)} rps: "
            f"{sp.canary} canary requests; " + "; ".join(parts)
        )
    return out


def _guard_parts(flag: FlagPlan, index: int, rps: float) -> list[str]:
    """What each guard of stage ``index`` needs to catch its ``detect_drop`` with the plan's
    power: events in both cohorts within the stage (a rate; per request also as a share of the
    requests), or canary values (a mean, for values whose spread equals their mean)."""
    empty = StageEvidence(index, 0.0, 0.0)
    duration = flag.stage(index).duration_s
    out = []
    for info in guard_information(flag, index, empty, alpha_per_test(flag)):
        guard = guard_of(flag, info.name)
        assert guard is not None
        way = "drop" if guard.higher_is_better else "rise"
        head = f"{info.name} (a {100 * guard.detect_drop:.3g} % {way}): "
        if guard.measure == "mean":
            out.append(head + f"needs {info.needed} canary values (spread = mean assumed)")
            continue
        rate = info.needed / duration
        text = head + f"needs {info.needed} {guard.event} events in {format_span(duration)} "
        text += f"({rate:.3g}/s"
        if guard.per == PER_REQUEST:
            text += f", {100 * rate / rps:.3g} % of the requests"
        out.append(text + ")")
    return out


def bucket_lines(flag: FlagPlan, unit: str, state: RolloutState | None = None) -> list[str]:
    """Where ``unit`` lands for ``flag``: its bucket, then in/out for every stage.

    With ``state``, a last line tells whether the unit is in at the flag's current percent
    (the env override of the serving process is not known here and not applied).
    """
    b = bucket(flag.key, unit, flag.scheme)
    lines = [
        f"{flag.key}: unit {unit!r} is in bucket {b} of 0..9999 "
        f"(scheme {flag.scheme}, bucket_by {flag.bucket_by})"
    ]
    width = max(len(format_pct(s.percent)) for s in flag.stages)
    for i, s in enumerate(flag.stages, start=1):
        inside = in_rollout(flag.key, unit, s.percent, flag.scheme)
        lines.append(f"stage {i:<3} {format_pct(s.percent):>{width}}  {'in' if inside else 'out'}")
    if state is not None:
        inside = state.percent > 0 and in_rollout(flag.key, unit, state.percent, flag.scheme)
        lines.append(
            f"now: {state.status.value}, stage {state.stage}/{len(flag.stages)}, "
            f"{format_pct(state.percent)}  {'in' if inside else 'out'}"
        )
    return lines


def _align(rows: Iterable[Sequence[str]]) -> str:
    table = [list(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
