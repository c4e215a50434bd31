"""The one shell of a transition: persist, serve, announce, report, count, tell, log.

Every change of a flag's state goes through :meth:`Pipeline.apply`, whether the policy decided
it or an operator asked for it (in the service, or from the command line), and whether it was
decided in a policy round for several flags or by one command. Its steps are written out in
that one function, top to bottom (spec §7):

1. persist: the new states are saved with a compare-and-set (one write for a round's changes;
   a change that lost its race is dropped, a store that cannot be written raises and nothing
   below happens);
2. serve: the flag serves the new state (the provider swaps its view and emits
   ``PROVIDER_CONFIGURATION_CHANGED``);
3. the event for the telemetry ingest is queued in the durable outbox;
4. the reports: a results row when a stage ended, an abort entry on a rollback;
5. the controller's metrics count it;
6. observers (a PolicyHook, a test, the demo's printer) are told;
7. one log line says what happened.

Steps 3 to 5 happen once per transition, in the process that made it; a process that only
notices another's change in the store runs steps 2 and 6 (:attr:`How.OBSERVED`). A rollback
that could not be persisted still takes effect here (:attr:`How.FORCED`: every step but the
first), and is persisted later (:attr:`How.REASSERTED`: the first step and its event again).
Everything a step needs is read from the persisted states and the decision log, so nothing
decided before the write can leak into a later transition when a write loses its race.

A process killed between steps 1 and 3 has persisted a transition whose event is in no outbox.
The event is therefore a function of the persisted decision entry, with an id derived from it
(:func:`~openfeature_canary.policy.event_id`), and :meth:`Pipeline.reconcile` (called when a
process starts, after it reads the store) queues every event the recent decision logs imply
that the outbox does not know.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from openfeature_canary.errors import CanaryError, StaleStateError
from openfeature_canary.events import EventSink, ReportSink
from openfeature_canary.policy._announce import (
    abort_record,
    event_for,
    implied,
    implied_events,
    rolled_back,
    stage_result,
)
from openfeature_canary.state import LogEntry, RolloutState
from openfeature_canary.stores import StateStore

__all__ = [
    "RECONCILE_WINDOW_S",
    "Change",
    "How",
    "Pipeline",
    "RollbackCounter",
    "StateOwner",
    "TransitionListener",
    "transition_fields",
]

log = logging.getLogger("openfeature_canary")

#: Called with (old, new) after a transition. Must not raise (it is logged if it does).
TransitionListener = Callable[[RolloutState, RolloutState], None]

#: How far back (seconds of the rollout's clock) :meth:`Pipeline.reconcile` looks in the
#: decision logs: a transition persisted by a process that died before queueing its event is
#: announced by the next process that starts within this window.
RECONCILE_WINDOW_S: Final = 7 * 86400.0


class How(StrEnum):
    """Which of :meth:`Pipeline.apply`'s steps a change goes through."""

    #: This process's transition: every step.
    LOCAL = "local"
    #: A rollback the store could not take: every step but persisting (it serves 0 % here).
    FORCED = "forced"
    #: A forced rollback persisted once the store can be written: persist, queue its event.
    REASSERTED = "reasserted"
    #: Another process's change, read from the store: serve and tell the observers.
    OBSERVED = "observed"


class RollbackCounter(Protocol):
    """Step 5: the controller's metrics (``RolloutMetrics`` fits)."""

    def count_transition(self, old: RolloutState, new: RolloutState) -> None: ...


class StateOwner(Protocol):
    """Who holds a flag's known state in this process (a ``Controller`` fits)."""

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Held while the change is taken and its effects run (one flag's effects in order)."""
        ...

    def take(self, old: RolloutState, new: RolloutState) -> bool:
        """Make ``new`` the known state; False (nothing changed) when a newer one is known."""
        ...


@dataclass(frozen=True)
class Change:
    """One flag's transition from ``old`` to ``new``; ``owner`` takes it once persisted."""

    old: RolloutState
    new: RolloutState
    owner: StateOwner | None = None


@dataclass
class Pipeline:
    """The ordered effects of a transition; see the module docstring.

    Built once per process with everything it needs (no parts are added later)::

        pipeline = Pipeline(store, serve=provider_swap, events=sender, reports=writer)
        pipeline.apply([Change(current, new, controller)])   # [True]: persisted and applied
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

    def apply(self, changes: Sequence[Change], how: How = How.LOCAL) -> list[bool]:
        """Every step of ``changes``, in order; per change, whether it was applied.

        Raises :class:`~openfeature_canary.StateStoreError` when the store cannot be written
        (``LOCAL``, ``REASSERTED``); then no step has run. A change that lost its
        compare-and-set (another writer first) is ``False`` and has no effect.
        """
        # 1. persist (compare-and-set; one write for all of a round's changes)
        persisted = how in (How.LOCAL, How.REASSERTED)
        written = self._persist(changes) if persisted else [True] * len(changes)
        local = how in (How.LOCAL, How.FORCED)
        for change, ok in zip(changes, written, strict=True):
            old, new, owner = change.old, change.new, change.owner
            with owner.lock if owner is not None else nullcontext():
                if not ok or (owner is not None and not owner.take(old, new)):
                    continue  # lost the race, or this process knows a newer state already
                # Only an entry this change added announces or reports anything: a tick that
                # just brought the stage's evidence up to date adds none.
                added = new.entries_after(old) if local else ()
                entry = added[-1] if added else None
                # 2. serve
                if self.serve is not None and how is not How.REASSERTED:
                    _safely("serving the new state", self.serve, old, new)
                # 3. the event (a reasserted rollback's only if it could not be queued)
                if how is How.REASSERTED:
                    self.requeue(new)
                elif entry is not None:
                    self._queue_event(old, new, entry)
                # 4. the reports
                if entry is not None and self.reports is not None:
                    self._write_reports(self.reports, old, new, entry)
                # 5. the metrics
                if local and self.metrics is not None:
                    _safely("the rollout metrics", self.metrics.count_transition, old, new)
                # 6. the observers
                if how is not How.REASSERTED:
                    for observer in tuple(self.observers):
                        _observe(observer, old, new)
                # 7. the one log line
                _log_line(how, old, new, entry, self.store.url)
        return written

    def _persist(self, changes: Sequence[Change]) -> list[bool]:
        if len(changes) == 1:  # one command: the store's single compare-and-set
            change = changes[0]
            try:
                self.store.save(change.new, expected_version=change.old.version)
            except StaleStateError:
                return [False]
            return [True]
        return list(self.store.save_many([(c.new, c.old.version) for c in changes]))

    def _queue_event(self, old: RolloutState, new: RolloutState, entry: LogEntry) -> None:
        event = event_for(old, new, entry)
        if event is None or self.events is None:
            return
        name, props = event
        if not _safely("queueing the telemetry event", self.events.enqueue, name, props):
            self.unqueued.add(str(props["event_id"]))

    @staticmethod
    def _write_reports(
        reports: ReportSink, old: RolloutState, new: RolloutState, entry: LogEntry
    ) -> None:
        result = stage_result(old, new, entry)
        if result is not None:
            _safely("the results report", reports.record_stage, result)
        if rolled_back(old, new):
            _safely("the abort report", reports.append_abort, abort_record(old, new, entry))

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
        oldest first, with its event id and ``recovered: true``; the sink must drop an
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
        found = sorted((e for state in states for e in implied(state, since)), key=lambda e: e[0])
        queued: list[str] = []
        for _at, name, props in found:
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


def _log_line(
    how: How, old: RolloutState, new: RolloutState, entry: LogEntry | None, store_url: str
) -> None:
    """Step 7: what happened, in one line (formatted only when it is logged).

    One INFO line per transition, by the process that made it: flag, from -> to, reason,
    rule, value, threshold, n and who decided; the same fields go to a JSON formatter as the
    record's ``canary`` attribute (:class:`~openfeature_canary.JsonLogFormatter`). A process
    that only observes another's change, and a judged gate window, log at DEBUG; a process
    that reads the store at start-up logs no transition (none happened).
    """
    key = new.flag_key
    if how is How.FORCED:
        log.critical(
            "ALARM: %s: could not persist %s to %s; the flag is off in this process only "
            "until the store can be written again",
            key,
            new.status.value,
            store_url,
        )
    elif how is How.REASSERTED:
        log.warning("%s: the rollback forced earlier is now persisted to %s", key, store_url)
    elif entry is not None and not entry.action.startswith("window_"):
        if log.isEnabledFor(logging.INFO):
            fields = transition_fields(old, new, entry)
            line, args = _line(fields)
            log.info(line, *args, extra={"canary": fields})
    elif log.isEnabledFor(logging.DEBUG):
        if how is How.OBSERVED and old.version == 0:
            log.debug("%s: read from the store: %s", key, _where(new))
            return
        seen = new.entries_after(old) if how is How.OBSERVED else (entry,) if entry else ()
        last = seen[-1] if seen else None
        log.debug(
            "%s: %s %s -> %s (version %d, %s)",
            key,
            last.summary() if last is not None else "no decision",
            _where(old),
            _where(new),
            new.version,
            how.value,
        )


def _line(fields: dict[str, Any]) -> tuple[str, list[Any]]:
    """The INFO line of a transition (format and arguments): flag, action, from -> to,
    reason, rule, value vs threshold and n when the decision judged numbers, note, by."""
    line = "%s: %s %s -> %s: reason=%s rule=%s"
    args = [fields[k] for k in ("flag", "action", "from", "to", "reason", "rule")]
    if fields["value"] is not None or fields["threshold"] is not None:
        line += " value=%s threshold=%s"
        args += [_short(fields["value"]), _short(fields["threshold"])]
        if fields["unit"] != "-":
            line += " %s"
            args.append(fields["unit"])
    if fields["n"] is not None:
        line += " n=%s"
        args.append(fields["n"])
    if fields["note"]:
        line += " note=%r"
        args.append(fields["note"])
    return line + " by=%s", [*args, fields["by"]]


def transition_fields(old: RolloutState, new: RolloutState, entry: LogEntry) -> dict[str, Any]:
    """A transition's log fields: the flag, the action, where it was and is (``running stage
    2 (25%)``), the entry's reason, rule, value, threshold, unit, n and who decided."""
    n = entry.numbers
    return {
        "flag": new.flag_key,
        "action": entry.action,
        "from": _where(old),
        "to": _where(new),
        "reason": entry.reason or "-",
        "rule": entry.rule or "-",
        "value": entry.value,
        "threshold": entry.threshold,
        "unit": entry.unit or "-",
        "n": n.get("n", n.get("samples")),
        "by": entry.by or "-",
        "note": n.get("note") or "",
        "version": new.version,
    }


def _short(value: object) -> object:
    """A float as people read it in a log line (4 significant digits); the rest unchanged."""
    return f"{value:.4g}" if isinstance(value, float) else value


def _where(state: RolloutState) -> str:
    return f"{state.status.value} stage {state.stage} ({state.percent:g}%)"


def _observe(observer: TransitionListener, old: RolloutState, new: RolloutState) -> None:
    """Step 6 for one observer; its repr is formatted only when it failed."""
    try:
        observer(old, new)
    except Exception:  # an observer failing must not undo or block a persisted transition
        log.exception("openfeature-canary: observer %r failed", observer)


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
