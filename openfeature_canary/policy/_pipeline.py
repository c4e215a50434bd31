"""The effects of a transition, after it is persisted: telemetry event, then reports.

:class:`Effects` is a transition listener. It is registered after the provider's listener, so
for a rollback the order is the one of spec §7: state persisted (by the controller), the
OpenFeature event (provider), the telemetry event queued in the durable outbox, and the
entry appended to ``canary_abort.md``. The autopilot and the CLI share it, so an operator's
``rollback`` from the command line is announced and reported like an automatic one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary._policy import Action
from openfeature_canary._reports import AbortRecord, StageResult
from openfeature_canary._state import LogEntry, RolloutState, Status

__all__ = ["Effects", "EventSink", "ReportSink"]

log = logging.getLogger("openfeature_canary")


class EventSink(Protocol):
    """Where telemetry events go (``TelemetrySender.enqueue`` fits): durable, never slow."""

    def enqueue(self, event_name: str, properties: Mapping[str, Any]) -> Any: ...


class ReportSink(Protocol):
    """Where stage results and aborts are written (``ReportWriter`` fits)."""

    def record_stage(self, result: StageResult) -> None: ...

    def append_abort(self, record: AbortRecord) -> None: ...


class Effects:
    """Announce and report transitions; never raises into the controller."""

    def __init__(
        self,
        *,
        events: EventSink | None = None,
        reports: ReportSink | None = None,
        extra_properties: Mapping[str, Any] | None = None,
    ) -> None:
        self.events = events
        self.reports = reports
        self._extra = dict(extra_properties or {})
        self._stage_results: dict[str, StageResult] = {}
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")

    def stage_ending(self, flag_key: str, result: StageResult | None) -> None:
        """Remember the results row of a stage whose ending decision is being applied."""
        with self._lock:
            if result is None:
                self._stage_results.pop(flag_key, None)
            else:
                self._stage_results[flag_key] = result

    def __call__(self, old: RolloutState, new: RolloutState) -> None:
        """The transition listener."""
        entry = new.last_decision
        if entry is None:
            return
        with self._lock:
            result = self._stage_results.pop(new.flag_key, None)
        reports = self.reports
        if result is not None and reports is not None:
            _safely("results report", lambda: reports.record_stage(result))
        event = _event_for(old, new, entry)
        events = self.events
        if event is not None and events is not None:
            name, props = event
            props.update(self._extra)
            _safely("telemetry event", lambda: events.enqueue(name, props))
        rolled_back = new.status is Status.ROLLED_BACK and old.status is not Status.ROLLED_BACK
        if rolled_back and reports is not None:
            record = _abort_record(old, new, entry)
            _safely("abort report", lambda: reports.append_abort(record))


def _safely(what: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # an effect failing must not undo or block the rollback
        log.exception("openfeature-canary: %s failed", what)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z")


def _event_for(
    old: RolloutState, new: RolloutState, entry: LogEntry
) -> tuple[str, dict[str, Any]] | None:
    n = entry.numbers
    base: dict[str, Any] = {"flag": new.flag_key, "at": _iso(entry.at)}
    if n.get("dry_run"):
        base["dry_run"] = True
    if entry.action == Action.ROLLBACK and (new.status is Status.ROLLED_BACK or n.get("dry_run")):
        return "canary_rollback", {
            "from_pct": _int_if_whole(old.percent),
            "reason": entry.reason,
            **base,
            "stage": old.stage,
            "value": n.get("value"),
            "threshold": n.get("threshold"),
        }
    if entry.action in (Action.ADVANCE, Action.START, "start"):
        return "canary_stage_advanced", {
            **base,
            "from_pct": _int_if_whole(old.percent),
            "to_pct": _int_if_whole(new.percent),
            "stage": new.stage,
            "reason": entry.reason,
        }
    if entry.action == Action.COMPLETE:
        return "canary_completed", {**base, "pct": _int_if_whole(new.percent), "stage": new.stage}
    if entry.action == Action.PAUSE and new.status is Status.PAUSED:
        return "canary_paused", {
            **base,
            "pct": _int_if_whole(new.percent),
            "stage": new.stage,
            "reason": entry.reason,
        }
    return None


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _abort_record(old: RolloutState, new: RolloutState, entry: LogEntry) -> AbortRecord:
    n = entry.numbers

    def num(key: str) -> float | None:
        value = n.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    return AbortRecord(
        flag_key=new.flag_key,
        at=entry.at,
        from_pct=old.percent,
        from_stage=old.stage,
        trigger=entry.reason,
        value=num("value"),
        threshold=num("threshold"),
        window_s=num("window_s"),
        n=None if num("n") is None else int(num("n") or 0),
        signal=str(n["signal"]) if n.get("signal") is not None else None,
        last_decisions=new.log[-8:],
    )
