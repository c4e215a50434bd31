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

A process killed between steps 1 and 3 has persisted a transition whose event is in no outbox.
The event is therefore a function of the persisted decision entry, with an id derived from it
(:func:`event_id`), and :meth:`Pipeline.reconcile` (called when a process starts, after it
reads the store) queues every event the recent decision logs imply that the outbox does not
know. The outbox drops an id it has pending or delivered recently, and the ingest drops a
repeated ``event_id``: each transition's event is delivered at least once, whoever queues it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from openfeature_canary._format import iso_utc
from openfeature_canary.errors import CanaryError
from openfeature_canary.events import AbortRecord, EventSink, ReportSink, StageResult
from openfeature_canary.state import LogEntry, RolloutState, Status
from openfeature_canary.stores import StateStore

__all__ = [
    "RECONCILE_WINDOW_S",
    "Pipeline",
    "RollbackCounter",
    "TransitionListener",
    "abort_record",
    "event_for",
    "event_id",
    "implied_events",
    "stage_result",
]

log = logging.getLogger("openfeature_canary")

#: Called with (old, new) after a transition. Must not raise (it is logged if it does).
TransitionListener = Callable[[RolloutState, RolloutState], None]

#: Decision-log actions that end the stage a flag was in.
_STAGE_ENDS = frozenset({"advance", "complete", "rollback"})

#: How far back (seconds of the rollout's clock) :meth:`Pipeline.reconcile` looks in the
#: decision logs: a transition persisted by a process that died before queueing its event is
#: announced by the next process that starts within this window.
RECONCILE_WINDOW_S: Final = 7 * 86400.0


class RollbackCounter(Protocol):
    """Step 5: the controller's metrics (``RolloutMetrics`` fits)."""

    def count_transition(self, old: RolloutState, new: RolloutState) -> None: ...


@dataclass
class Pipeline:
    """The ordered effects of a transition; see the module docstring.

    Built once per process with everything it needs (no parts are added later)::

        pipeline = Pipeline(store, serve=provider_swap, events=sender, reports=writer)
        pipeline.commit(current, new, adopt)   # persist, adopt, then the effects in order
    """

    store: StateStore
    serve: TransitionListener | None = None
    events: EventSink | None = None
    reports: ReportSink | None = None
    metrics: RollbackCounter | None = None
    observers: list[TransitionListener] = field(default_factory=list)
    #: Event ids whose queueing failed in this process (e.g. an outbox in a store that was
    #: down): :meth:`requeue` tries them again.
    unqueued: set[str] = field(default_factory=set)

    def requeue(self, state: RolloutState) -> None:
        """Queue again the events of ``state``'s log whose queueing failed here before."""
        events = self.events
        if events is None or not self.unqueued:
            return
        for name, props in implied_events(state):
            event_id = str(props["event_id"])
            if event_id in self.unqueued and _safely(
                "queueing the telemetry event", events.enqueue, name, props
            ):
                self.unqueued.discard(event_id)

    def commit(
        self,
        old: RolloutState,
        new: RolloutState,
        adopt: Callable[[RolloutState], None] | None = None,
    ) -> RolloutState:
        """Step 1, then the rest: persist ``new`` if the store still holds ``old``'s version,
        let the caller ``adopt`` it (the controller's known state), then steps 2 to 6.

        Raises :class:`~openfeature_canary.StaleStateError` (someone else wrote first) or
        :class:`~openfeature_canary.StateStoreError` (the store cannot be written); in both
        cases no effect has run.
        """
        self.store.save(new, expected_version=old.version)
        if adopt is not None:
            adopt(new)
        self.after_persist(old, new)
        return new

    def reconcile(
        self,
        states: Iterable[RolloutState],
        *,
        now: float,
        window_s: float = RECONCILE_WINDOW_S,
    ) -> int:
        """Queue the events that persisted transitions imply and the event sink does not have:
        the events of a process that died between persisting a transition and queueing it.

        Call it when a process starts, with the states it has just read from the store (the
        provider does, in ``initialize``; a command-line tool may too). Every eventful decision
        entry logged at or after ``now - window_s`` (the rollout's clock) is handed to the sink,
        oldest first, with its :func:`event_id` and ``recovered: true``; the sink must drop an
        ``event_id`` it has pending or delivered recently (the durable
        :class:`~openfeature_canary.events.TelemetrySender` does, from the outbox's memory of the
        last :data:`~openfeature_canary.events.REMEMBERED_DELIVERED` delivered ids), so a restart
        does not announce old history again. Returns how many events were newly queued; a sink
        that fails is logged, never raised (starting must not depend on the ingest's outbox).
        """
        events = self.events
        if events is None:
            return 0
        since = now - window_s
        implied = sorted(
            (event for state in states for event in _implied(state, since)), key=lambda e: e[0]
        )
        queued: list[str] = []
        for _at, name, props in implied:
            try:
                result = events.enqueue(name, {**props, "recovered": True})
            except Exception as exc:  # the outbox cannot be written: the next start tries again
                log.error(
                    "openfeature-canary: cannot queue the %s event of %s found in the decision "
                    "log: %s",
                    name,
                    props["flag"],
                    exc,
                )
                continue
            if result is not None:
                queued.append(f"{name} of {props['flag']} at {props['at']}")
        if queued:
            log.warning(
                "openfeature-canary: queued %d event(s) of persisted transitions that the outbox "
                "did not have (a process died before queueing them, or the outbox is new): %s",
                len(queued),
                "; ".join(queued[:3]) + ("; …" if len(queued) > 3 else ""),
            )
        return len(queued)

    def after_persist(self, old: RolloutState, new: RolloutState, *, local: bool = True) -> None:
        """Steps 2 to 6 for a transition already persisted (or forced locally, see the
        controller's rollback). ``local=False`` for a change another process made."""
        if self.serve is not None:
            _safely("serving the new state", self.serve, old, new)
        if local:
            # Only an entry this change added announces or reports anything: a tick that just
            # brought the stage's evidence up to date adds none.
            added = new.entries_after(old)
            entry = added[-1] if added else None
            events = self.events
            event = event_for(old, new, entry) if entry is not None else None
            if event is not None and events is not None:
                name, props = event
                if not _safely("queueing the telemetry event", events.enqueue, name, props):
                    self.unqueued.add(str(props["event_id"]))
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


def _safely(what: str, fn: Callable[..., Any], *args: Any) -> bool:
    """Run one effect; False (logged) when it failed."""
    try:
        fn(*args)
    except CanaryError as exc:  # ours (an outbox, a report folder): the message says it all
        log.error("openfeature-canary: %s failed: %s", what, exc)
        return False
    except Exception:  # an effect failing must not undo or block a persisted transition
        log.exception("openfeature-canary: %s failed", what)
        return False
    return True


def _rolled_back(old: RolloutState, new: RolloutState) -> bool:
    return new.status is Status.ROLLED_BACK and old.status is not Status.ROLLED_BACK


# --------------------------------------------------------------------------- pure parts


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
    announce, oldest first: what :meth:`Pipeline.reconcile` queues.

    The newest entry gives exactly the event :func:`event_for` gave when it was made (the
    state after it is ``state``); an older one is rebuilt from the log (a percentage the log
    no longer shows is ``None``). The ids are always the same.
    """
    return [(name, props) for _at, name, props in _implied(state, since)]


def _implied(state: RolloutState, since: float) -> list[tuple[float, str, dict[str, Any]]]:
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
    if dry:
        base["dry_run"] = True
    props: dict[str, Any]
    if entry.action == "rollback":
        if after is not None and after.status is not Status.ROLLED_BACK and not dry:
            return None
        name = "canary_rollback"
        props = {"from_pct": _pct(from_pct), "reason": entry.reason, **base, "stage": from_stage}
        props.update(value=n.get("value"), threshold=n.get("threshold"))
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
    gate_pause = entry.action == "pause" and entry.reason.startswith("gate_")
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

    reason = entry.reason
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
        signal=str(n["signal"]) if n.get("signal") is not None else None,
        last_decisions=new.log[-8:],
    )


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x
