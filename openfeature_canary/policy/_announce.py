"""The pure parts of announcing a transition: its event, its results row, its abort entry.

Each is a function of the persisted states and the decision entry a transition added, so
every process computes the same event (with the same :func:`event_id`) from what it reads,
and a transition's event can be rebuilt from the decision log (:func:`implied_events`) by a
process that starts after another died between persisting it and queueing its event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from openfeature_canary._format import iso_utc
from openfeature_canary.events import AbortRecord, StageResult
from openfeature_canary.state import LogEntry, RolloutState, Status

__all__ = [
    "abort_record",
    "event_for",
    "event_id",
    "implied",
    "implied_events",
    "rolled_back",
    "stage_result",
    "why",
]

#: Decision-log actions that end the stage a flag was in.
_STAGE_ENDS: Final = frozenset({"advance", "complete", "rollback"})


def rolled_back(old: RolloutState, new: RolloutState) -> bool:
    """True when ``new`` is the rollback of ``old`` (an abort entry is due)."""
    return new.status is Status.ROLLED_BACK and old.status is not Status.ROLLED_BACK


def event_id(flag_key: str, entry: LogEntry) -> str:
    """The ``event_id`` of the event a decision entry announces (32 hex digits).

    A digest of the flag key and the entry's time, action and reason: every process computes
    the same id from the persisted entry, so the outbox and the ingest can drop a second
    announcement of one transition. Two decisions of one flag at the same instant with the
    same action and reason (possible only under a virtual clock) are one event.

    >>> event_id("f", LogEntry(at=0.0, action="rollback", reason="p95_breach"))
    '00819505a95e88f24105b2e9deb75db6'
    """
    key = json.dumps([flag_key, float(entry.at), entry.action, entry.reason])
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:32]


def event_for(
    old: RolloutState, new: RolloutState, entry: LogEntry
) -> tuple[str, dict[str, Any]] | None:
    """The telemetry event a transition announces (name, properties with its
    :func:`event_id`), or ``None``."""
    return _event(new.flag_key, entry, before=(old.percent, old.stage), after=new)


def implied_events(
    state: RolloutState, *, since: float = float("-inf")
) -> list[tuple[str, dict[str, Any]]]:
    """The events that the decision entries of ``state`` logged at or after ``since``
    announce, oldest first: what :meth:`~openfeature_canary.policy.Pipeline.reconcile` queues.

    The newest entry gives exactly the event :func:`event_for` gave when it was made (the
    state after it is ``state``); an older one is rebuilt from the log (a percentage the log
    no longer shows is ``None``). The ids are always the same.
    """
    return [(name, props) for _at, name, props in implied(state, since)]


def implied(state: RolloutState, since: float) -> list[tuple[float, str, dict[str, Any]]]:
    """:func:`implied_events` with each event's time first (for sorting across flags)."""
    found = []
    log_ = state.log
    last = len(log_) - 1
    for i, entry in enumerate(log_):
        if entry.action not in _EVENTFUL or not entry.at >= since:
            continue
        event = _event(
            state.flag_key,
            entry,
            before=_before(log_, i),
            after=state if i == last else None,
        )
        if event is not None:
            found.append((entry.at, *event))
    return found


#: Numbers a rollback event carries besides value and threshold, when the entry has them.
_EVENT_NUMBERS: Final = ("unit", "n", "signal", "note")

#: Decision-log actions that may announce an event.
_EVENTFUL = frozenset({"rollback", "advance", "start", "complete", "pause"})


def _event(
    flag_key: str,
    entry: LogEntry,
    *,
    before: tuple[float | None, int | None],
    after: RolloutState | None,
) -> tuple[str, dict[str, Any]] | None:
    """The event of ``entry``; ``before`` is the flag's (percent, stage) before it, ``after``
    the state it led to (``None`` when only the log is known: the values come from it)."""
    n = entry.numbers
    dry = bool(n.get("dry_run"))
    from_pct, from_stage = before
    # Where the flag is after the entry: the state, or what the log says.
    pct: float | None
    stage: int | None
    if after is not None:
        pct, stage = after.percent, after.stage
    elif entry.action in ("advance", "start"):  # a dry-run flag stays at 0 %
        pct, stage = 0.0 if dry else _num(n.get("to_pct")), _int(n.get("to_stage"))
    else:
        pct, stage = from_pct, from_stage
    base: dict[str, Any] = {"flag": flag_key, "at": iso_utc(entry.at)}
    # Who decided and by which rule (spec §7): on every event, as in the decision log.
    if entry.rule:
        base["rule"] = entry.rule
    if entry.by:
        base["by"] = entry.by
    if dry:
        base["dry_run"] = True
    props: dict[str, Any]
    if entry.action == "rollback":
        if after is not None and after.status is not Status.ROLLED_BACK and not dry:
            return None
        name = "canary_rollback"
        props = {"from_pct": _pct(from_pct), "reason": entry.reason, **base, "stage": from_stage}
        props.update(value=n.get("value"), threshold=n.get("threshold"))
        props.update({k: n[k] for k in _EVENT_NUMBERS if n.get(k) is not None})
    elif entry.action in ("advance", "start"):
        name = "canary_stage_advanced"
        props = {**base, "from_pct": _pct(from_pct), "to_pct": _pct(pct), "stage": stage}
        props["reason"] = entry.reason
    elif entry.action == "complete":
        name = "canary_completed"
        props = {**base, "pct": _pct(pct), "stage": stage}
    elif entry.action == "pause" and (after is None or after.status is Status.PAUSED):
        name = "canary_paused"
        props = {**base, "pct": _pct(pct), "stage": stage, "reason": entry.reason}
    else:
        return None
    props["event_id"] = event_id(flag_key, entry)
    return name, props


def _before(log_: tuple[LogEntry, ...], i: int) -> tuple[float | None, int | None]:
    """The flag's (percent, stage) just before ``log_[i]``, as far as the log shows."""
    n = log_[i].numbers
    if log_[i].action == "start":
        return 0.0, 0
    pct: float | None = None
    stage: int | None = None
    for entry in reversed(log_[:i]):
        action, m = entry.action, entry.numbers
        if action in ("start", "advance"):
            pct, stage = 0.0 if m.get("dry_run") else _num(m.get("to_pct")), _int(m.get("to_stage"))
            break
        if action == "reset" or (action == "rollback" and not m.get("dry_run")):
            pct, stage = 0.0, 0
            break
    # What the entry itself logs about where it started wins (a rollback logs both).
    logged_pct, logged_stage = _num(n.get("from_pct")), _int(n.get("from_stage"))
    return (
        pct if logged_pct is None else logged_pct,
        stage if logged_stage is None else logged_stage,
    )


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    number = _num(value)
    return None if number is None or not number.is_integer() else int(number)


def _pct(x: float | None) -> float | int | None:
    return None if x is None else _int_if_whole(x)


def stage_result(old: RolloutState, new: RolloutState, entry: LogEntry) -> StageResult | None:
    """The results row of the stage this transition ended, or ``None``.

    A stage ends when the flag leaves it while running or paused: an advance, a completion or a
    rollback (automatic or by an operator); a gate that pauses the stage also gets its row.
    The row is built only from the persisted states and the decision entry (whose numbers
    carry the stage's evidence, see :func:`~openfeature_canary.policy.stage_evidence`), never
    from anything kept aside.
    """
    if old.status not in (Status.RUNNING, Status.PAUSED) or old.stage < 1:
        return None
    gate_pause = entry.action == "pause" and (
        entry.rule.startswith("gate:") or entry.reason.startswith("gate_")
    )
    if (entry.action not in _STAGE_ENDS and not gate_pause) or new.version <= old.version:
        return None
    if entry.action == "rollback" and not (
        new.status is Status.ROLLED_BACK or entry.numbers.get("dry_run")
    ):
        return None
    n = entry.numbers

    def num(key: str) -> float | None:
        return _num(n.get(key))

    def count(key: str) -> int:
        value = _num(n.get(key))
        return 0 if value is None else int(value)

    reason = why(entry)
    if n.get("dry_run"):
        reason = f"{reason} (dry run)"
    power = "; ".join(
        f"{label}: {_share(n.get(key))}"
        for key, label in _power_labels(n)
        if _num(n.get(key)) is not None
    )
    return StageResult(
        flag_key=new.flag_key,
        stage=old.stage,
        percent=old.percent,
        started_at=old.since,
        ended_at=entry.at,
        planned_p95_ms=num("planned_p95_ms"),
        observed_p95_ms=num("observed_p95_ms"),
        planned_error_rate=num("planned_error_rate"),
        observed_error_rate=num("observed_error_rate"),
        samples=count("samples"),
        windows_passed=count("windows_passed"),
        windows_failed=count("windows_failed"),
        windows_inconclusive=count("windows_inconclusive"),
        decision=entry.action,
        reason=reason,
        power=power,
    )


def _power_labels(n: Mapping[str, object]) -> list[tuple[str, str]]:
    """(number key, label) of the powers a stage-ending entry logged."""
    labels = []
    for name, what in (
        ("error_line", "5xx"),
        ("p95_line", "over P95 line"),
        ("p99_line", "over P99 line"),
    ):
        detect = _num(n.get(f"detect_{name}"))
        if detect is not None:
            labels.append((f"power_{name}", f"{what} {_share(detect)}"))
    if _num(n.get("power_error_line_3x")) is not None:
        labels.append(("power_error_line_3x", "5xx 3x line"))
    return labels


def _share(value: object) -> str:
    number = _num(value)
    return "?" if number is None else f"{number * 100:.3g} %"


def abort_record(old: RolloutState, new: RolloutState, entry: LogEntry) -> AbortRecord:
    """The ``canary_abort.md`` entry of a rollback."""
    n = entry.numbers

    def num(key: str) -> float | None:
        return _num(n.get(key))

    samples = num("n")
    return AbortRecord(
        flag_key=new.flag_key,
        at=entry.at,
        from_pct=old.percent,
        from_stage=old.stage,
        trigger=entry.reason,
        value=num("value"),
        threshold=num("threshold"),
        window_s=num("window_s"),
        n=None if samples is None else int(samples),
        signal=str(n["signal"]) if n.get("signal") is not None else _UNIT_SIGNAL.get(entry.unit),
        last_decisions=new.log[-8:],
        rule=entry.rule,
        by=entry.by,
        note=str(n["note"]) if n.get("note") else "",
    )


#: A signal of each unit, for the abort report's formatting when the entry names none.
_UNIT_SIGNAL: Final = {"ms": "latency_p95_ms", "fraction": "error_rate"}


def why(entry: LogEntry) -> str:
    """Why a stage ended, for its results row: the reason, the rule, value vs threshold.

    >>> why(LogEntry(0.0, "rollback", "error_rate_breach", {"value": 0.0081,
    ...     "threshold": 0.001, "unit": "fraction"}, rule="gate:error_line"))
    'error_rate_breach (gate:error_line: 0.81 % vs 0.1 %)'
    """
    value, threshold = _num(entry.value), _num(entry.threshold)
    detail = entry.rule
    if value is not None and threshold is not None and entry.action in ("rollback", "pause"):
        unit = entry.unit
        shown = [
            f"{x * 100:.3g} %" if unit == "fraction" else f"{x:.4g}{' ' + unit if unit else ''}"
            for x in (value, threshold)
        ]
        detail = f"{detail}: {shown[0]} vs {shown[1]}" if detail else f"{shown[0]} vs {shown[1]}"
    note = entry.numbers.get("note")
    reason = f"{entry.reason}: {note}" if note else entry.reason
    return f"{reason} ({detail})" if detail else reason


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x
