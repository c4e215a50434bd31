"""The one transition pipeline: persist, then serve, then announce, report and count.

Every change of a flag's state goes through :meth:`Pipeline.commit`, whether the policy decided
it or an operator asked for it (in the service, or from the command line). The order of spec §7
is written out in :meth:`Pipeline.after_persist`, top to bottom:

1. the new state is persisted with a compare-and-set (:meth:`commit`; a lost race raises and
   nothing below happens);
2. the flag serves it (the provider swaps its view and emits
   ``PROVIDER_CONFIGURATION_CHANGED``);
3. the event for the telemetry ingest is queued in the durable outbox;
4. the reports are written: a results row when a stage ended, an abort entry on a rollback;
5. the controller's metrics count it;
6. observers (a PolicyHook, a test, the demo's printer) are told.

Steps 3 to 5 happen once per transition, in the process that made it; a process that only notices
another's change in the store runs steps 2 and 6. Everything a step needs is read from the
persisted states and the decision log, so nothing decided before the write can leak into a
later transition when a write loses its race.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from openfeature_canary._format import iso_utc
from openfeature_canary.events import AbortRecord, EventSink, ReportSink, StageResult
from openfeature_canary.state import LogEntry, RolloutState, Status
from openfeature_canary.stores import StateStore

__all__ = [
    "Pipeline",
    "RollbackCounter",
    "TransitionListener",
    "abort_record",
    "event_for",
    "stage_result",
]

log = logging.getLogger("openfeature_canary")

#: Called with (old, new) after a transition. Must not raise (it is logged if it does).
TransitionListener = Callable[[RolloutState, RolloutState], None]

#: Decision-log actions that end the stage a flag was in.
_STAGE_ENDS = frozenset({"advance", "complete", "rollback"})


class RollbackCounter(Protocol):
    """Step 5: the controller's metrics (``RolloutMetrics`` fits)."""

    def count_transition(self, old: RolloutState, new: RolloutState) -> None: ...


@dataclass
class Pipeline:
    """The ordered effects of a transition; see the module docstring.

    Built once per process with everything it needs (no parts are added later)::

        pipeline = Pipeline(store, serve=provider_swap, events=sender, reports=writer)
        pipeline.commit(current, new)   # persist, then the effects in order
    """

    store: StateStore
    serve: TransitionListener | None = None
    events: EventSink | None = None
    reports: ReportSink | None = None
    metrics: RollbackCounter | None = None
    observers: list[TransitionListener] = field(default_factory=list)

    def commit(self, old: RolloutState, new: RolloutState) -> RolloutState:
        """Step 1, then the rest: persist ``new`` if the store still holds ``old``'s version.

        Raises :class:`~openfeature_canary.StaleStateError` (someone else wrote first) or
        :class:`~openfeature_canary.StateStoreError` (the store cannot be written); in both
        cases no effect has run.
        """
        self.store.save(new, expected_version=old.version)
        self.after_persist(old, new)
        return new

    def after_persist(self, old: RolloutState, new: RolloutState, *, local: bool = True) -> None:
        """Steps 2 to 6 for a transition already persisted (or forced locally, see the
        controller's rollback). ``local=False`` for a change another process made."""
        if self.serve is not None:
            _safely("serving the new state", self.serve, old, new)
        if local:
            entry = new.last_decision
            events = self.events
            event = event_for(old, new, entry) if entry is not None else None
            if event is not None and events is not None:
                name, props = event
                _safely("queueing the telemetry event", lambda: events.enqueue(name, props))
            reports = self.reports
            if reports is not None and entry is not None:
                result = stage_result(old, new, entry)
                if result is not None:
                    _safely("the results report", lambda: reports.record_stage(result))
                if _rolled_back(old, new):
                    record = abort_record(old, new, entry)
                    _safely("the abort report", lambda: reports.append_abort(record))
            if self.metrics is not None:
                _safely("the rollout metrics", self.metrics.count_transition, old, new)
        for observer in tuple(self.observers):
            _safely(f"observer {observer!r}", observer, old, new)


def _safely(what: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # an effect failing must not undo or block a persisted transition
        log.exception("openfeature-canary: %s failed", what)


def _rolled_back(old: RolloutState, new: RolloutState) -> bool:
    return new.status is Status.ROLLED_BACK and old.status is not Status.ROLLED_BACK


# --------------------------------------------------------------------------- pure parts


def event_for(
    old: RolloutState, new: RolloutState, entry: LogEntry
) -> tuple[str, dict[str, Any]] | None:
    """The telemetry event a transition announces (name, properties), or ``None``."""
    n = entry.numbers
    base: dict[str, Any] = {"flag": new.flag_key, "at": iso_utc(entry.at)}
    if n.get("dry_run"):
        base["dry_run"] = True
    if entry.action == "rollback" and (new.status is Status.ROLLED_BACK or n.get("dry_run")):
        return "canary_rollback", {
            "from_pct": _int_if_whole(old.percent),
            "reason": entry.reason,
            **base,
            "stage": old.stage,
            "value": n.get("value"),
            "threshold": n.get("threshold"),
        }
    if entry.action in ("advance", "start"):
        return "canary_stage_advanced", {
            **base,
            "from_pct": _int_if_whole(old.percent),
            "to_pct": _int_if_whole(new.percent),
            "stage": new.stage,
            "reason": entry.reason,
        }
    if entry.action == "complete":
        return "canary_completed", {**base, "pct": _int_if_whole(new.percent), "stage": new.stage}
    if entry.action == "pause" and new.status is Status.PAUSED:
        return "canary_paused", {
            **base,
            "pct": _int_if_whole(new.percent),
            "stage": new.stage,
            "reason": entry.reason,
        }
    return None


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
    gate_pause = entry.action == "pause" and entry.reason.startswith("gate_")
    if (entry.action not in _STAGE_ENDS and not gate_pause) or new.version <= old.version:
        return None
    if entry.action == "rollback" and not (
        new.status is Status.ROLLED_BACK or entry.numbers.get("dry_run")
    ):
        return None
    n = entry.numbers

    def num(key: str) -> float | None:
        value = n.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    def count(key: str) -> int:
        value = n.get(key)
        return int(value) if isinstance(value, (int, float)) else 0

    reason = entry.reason
    if n.get("dry_run"):
        reason = f"{reason} (dry run)"
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
    )


def abort_record(old: RolloutState, new: RolloutState, entry: LogEntry) -> AbortRecord:
    """The ``canary_abort.md`` entry of a rollback."""
    n = entry.numbers

    def num(key: str) -> float | None:
        value = n.get(key)
        return float(value) if isinstance(value, (int, float)) else None

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
        signal=str(n["signal"]) if n.get("signal") is not None else None,
        last_decisions=new.log[-8:],
    )


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x
