"""The imperative shell around one flag's rollout: operator commands and the policy tick.

A :class:`Controller` turns a command (``start``, ``promote``, ``rollback`` …) or a policy
decision into a new :class:`RolloutState` and hands it to the rollout's one
:class:`~openfeature_canary.policy.Pipeline` (persist, then serve, announce, report, count).
Which commands are valid in which status is one table, :data:`ALLOWED`.

:class:`Rollout` groups the controllers of a plan over one store, one clock, one policy and
one pipeline, all given when it is built. Building it does no I/O; :meth:`Rollout.load`
reads the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, Protocol

from opentelemetry.metrics import MeterProvider

from openfeature_canary.clock import Clock, SystemClock
from openfeature_canary.errors import StaleStateError, StateStoreError, TransitionError
from openfeature_canary.events import EventSink, ReportSink
from openfeature_canary.plan import FlagPlan, RolloutPlan
from openfeature_canary.policy._decide import stage_evidence
from openfeature_canary.policy._metrics import RolloutMetrics
from openfeature_canary.policy._pipeline import Pipeline, TransitionListener
from openfeature_canary.state import LogEntry, Number, RolloutState, Status
from openfeature_canary.stores import StateStore, open_store
from openfeature_canary.stores._forksafe import renew_locks_after_fork

__all__ = ["ALLOWED", "Controller", "Policy", "Rollout"]

log = logging.getLogger("openfeature_canary")

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


class Policy(Protocol):
    """The policy seam of a rollout (the autopilot implements it; tests give small fakes)."""

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        """The state ``ctl``'s flag moves to at ``now`` (built from ``ctl.state``), or None."""
        ...

    def baseline_loud(self, ctl: Controller, now: float) -> list[str]:
        """Stage 0's gate: the triggers that breach on the flag's baseline now."""
        ...


_CAS_RETRIES: Final = 3


class Controller:
    """Operator commands and the policy tick for one flag.

    >>> rollout = Rollout(plan, store="memory://", clock=ManualClock())  # doctest: +SKIP
    >>> ctl = rollout.controller("dataservice-read-canary")               # doctest: +SKIP
    >>> ctl.start().percent                                               # doctest: +SKIP
    5.0

    Each command goes through the rollout's pipeline (persisted before any effect) and raises
    :class:`TransitionError` when it is not valid in the current status (``promote`` on a
    rolled-back flag, …).
    """

    def __init__(self, flag: FlagPlan, rollout: Rollout) -> None:
        self.flag = flag
        self.key = flag.key
        self.rollout = rollout
        # Until the store is read (Rollout.load), the flag is pending: the safe side (0 %).
        self._state = RolloutState(flag_key=flag.key)
        self._mutex = threading.RLock()
        self._due_lock = threading.Lock()
        renew_locks_after_fork(self, "_mutex", factory=threading.RLock)
        renew_locks_after_fork(self, "_due_lock")
        self._next_due = float("-inf")

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> RolloutState:
        """The last state this process knows (refreshed by :meth:`refresh` and by commands)."""
        return self._state

    def refresh(self) -> RolloutState:
        """Re-read the store; serve (and tell observers) when another process changed it."""
        return self.adopt(self.rollout.store.load(self.key))

    def adopt(self, stored: RolloutState | None) -> RolloutState:
        """Take ``stored`` (read from the store) when it is newer than what this process knows.

        States only move forward: an older version (a read that raced a newer write) is
        ignored, so a served rollback can never be undone by a slow reader.
        """
        with self._mutex:
            if stored is not None and stored.version > self._state.version:
                old, self._state = self._state, stored
                self.rollout.pipeline.after_persist(old, stored, local=False)
            return self._state

    # ------------------------------------------------------------------ commands

    def start(self, *, force: bool = False) -> RolloutState:
        """Move from ``pending`` (0 %) to stage 1, once any ``after`` flag has completed.

        With a policy in this process, stage 0's gate applies first: every trigger must be
        quiet on the baseline (the traffic that does not get the canary), otherwise
        :class:`TransitionError` names the loud ones. ``force=True`` skips that check. Without
        a policy there is no baseline to check here: use :meth:`request_start` to have the
        process that runs the policy apply the check and start the flag.
        """
        now = self.rollout.clock.now()
        policy = self.rollout.policy

        def build(cur: RolloutState) -> RolloutState:
            self._check_after()
            if not force and policy is not None:
                loud = policy.baseline_loud(self, now)
                if loud:
                    raise TransitionError(
                        f"cannot start {self.key}: the baseline is not quiet ({', '.join(loud)}); "
                        "fix it or start with force"
                    )
            first = self.flag.stages[0]
            return cur.evolve(
                _entry(now, "start", "operator", to_stage=1, to_pct=first.percent),
                status=Status.RUNNING,
                stage=1,
                percent=first.percent,
                since=now,
                windows=(),
                reason="started",
                requested="",
            )

        return self._change("start", build)

    def request_start(self) -> RolloutState:
        """Record that an operator asked for a start; the process that runs the policy carries
        it out at its next tick once every trigger is quiet on the baseline (stage 0's gate).

        This is what ``openfeature-canary start`` does: the command line has no signals, so it
        cannot check the baseline itself. The flag stays ``pending`` (0 %) until then.
        """
        now = self.rollout.clock.now()

        def build(cur: RolloutState) -> RolloutState:
            self._check_after()
            if cur.requested == "start":
                raise TransitionError(f"cannot start {self.key}: a start is requested already")
            return cur.evolve(
                _entry(now, "request_start", "operator"),
                requested="start",
                reason="start requested",
            )

        return self._change("start", build)

    def pause(self, reason: str = "operator") -> RolloutState:
        """Hold the current stage: no automatic advance (triggers still roll back)."""
        now = self.rollout.clock.now()
        return self._change(
            "pause",
            lambda cur: cur.evolve(
                _entry(now, "pause", reason, stage=cur.stage, pct=cur.percent),
                status=Status.PAUSED,
                since=now,
                windows=(),
                reason=reason,
            ),
        )

    def resume(self) -> RolloutState:
        """Continue a paused stage; its observation restarts now."""
        now = self.rollout.clock.now()
        return self._change(
            "resume",
            lambda cur: cur.evolve(
                _entry(now, "resume", "operator", stage=cur.stage, pct=cur.percent),
                status=Status.RUNNING,
                since=now,
                windows=(),
                reason="resumed",
            ),
        )

    def promote(self, reason: str = "operator") -> RolloutState:
        """Advance to the next stage now (``completed`` after the last one)."""
        now = self.rollout.clock.now()
        return self._change("promote", lambda cur: self._promoted(cur, now, reason))

    def rollback(self, reason: str, numbers: Mapping[str, Number] | None = None) -> RolloutState:
        """Force the flag to 0 % and keep it there until an operator resets it.

        The state is persisted first. If the store cannot be written, the rollback still
        takes effect in this process (it serves 0 % and the effects run) and
        :class:`StateStoreError` is raised so that the caller can raise an alarm.
        """
        if not reason or not reason.strip():
            raise ValueError("rollback needs a reason")
        now = self.rollout.clock.now()

        def build(cur: RolloutState) -> RolloutState:
            extra = {**self._evidence(cur), **dict(numbers or {})}
            return cur.evolve(
                _entry(
                    now, "rollback", reason, from_stage=cur.stage, from_pct=cur.percent, **extra
                ),
                status=Status.ROLLED_BACK,
                stage=0,
                percent=0.0,
                since=now,
                windows=(),
                reason=reason,
                requested="",
            )

        return self._change("rollback", build, sticky_on_store_error=True)

    def reset(self) -> RolloutState:
        """Return to ``pending`` (0 %), e.g. after a rollback has been investigated; on a
        pending flag, withdraw a requested start."""
        now = self.rollout.clock.now()

        def build(cur: RolloutState) -> RolloutState:
            return cur.evolve(
                _entry(
                    now, "reset", "operator", from_status=cur.status.value, from_pct=cur.percent
                ),
                status=Status.PENDING,
                stage=0,
                percent=0.0,
                since=now,
                windows=(),
                reason="reset",
                requested="",
            )

        return self._change("reset", build)

    # ------------------------------------------------------------------ the policy

    def tick(self, *, refresh: bool = True) -> RolloutState | None:
        """Evaluate the policy now; return the new state when it changed something.

        The store is re-read first (``refresh=False``: the caller has just read it, as the
        background runner does once per round for every flag). Without a policy this only
        re-reads the store. An unreadable store does not stop the policy: it decides on the
        last known state (a rollback then takes effect in this process and raises
        :class:`StateStoreError` for the alarm). Losing the compare-and-set to another writer
        is not an error: their word wins and the next tick decides again from it.
        """
        policy = self.rollout.policy
        try:
            if refresh:
                self.refresh()
        except StateStoreError:
            if policy is None:
                raise
            log.error("%s: store unreadable; deciding on the last known state", self.key)
        if policy is None:
            return None
        with self._mutex:
            base = self._state
            target = policy.decide(self, self.rollout.clock.now())
            if target is None:
                return None
            try:
                return self._commit(base, target)
            except StaleStateError:
                log.info("%s: another writer changed the state first; re-read", self.key)
                self._refresh_quietly()
                return None
            except StateStoreError:
                if target.status is Status.ROLLED_BACK:
                    self._force_local(base, target)
                raise

    def tick_if_due(self, *, refresh: bool = True) -> RolloutState | None:
        """Tick when the flag's ``tick`` has passed since the last due tick (by the rollout's
        clock). The one schedule of this process: the background runner and a PolicyHook both
        call this, so a flag is ticked once per period however many drivers there are."""
        now = self.rollout.clock.now()
        with self._due_lock:
            if now < self._next_due:
                return None
            self._next_due = now + self.flag.tick_s
        return self.tick(refresh=refresh)

    def decide_if_due(self) -> tuple[RolloutState, RolloutState] | None:
        """The background round's half of :meth:`tick_if_due`: when the flag is due, ask the
        policy, on the state this process knows, and return ``(base, target)`` to be
        committed by :meth:`Rollout.tick_due` together with the other flags' (or ``None``)."""
        policy = self.rollout.policy
        if policy is None:
            return None
        now = self.rollout.clock.now()
        with self._due_lock:
            if now < self._next_due:
                return None
            self._next_due = now + self.flag.tick_s
        with self._mutex:
            base = self._state
            target = policy.decide(self, now)
        return None if target is None else (base, target)

    def committed(self, base: RolloutState, target: RolloutState) -> None:
        """``target`` was persisted over ``base`` (by a batched write): serve it and run the
        effects, unless this process already knows a newer state."""
        with self._mutex:
            if self._state.version != base.version:
                return
            self._state = target
            self.rollout.pipeline.after_persist(base, target)

    # ------------------------------------------------------------------ internals

    def _commit(self, base: RolloutState, target: RolloutState) -> RolloutState:
        with self._mutex:
            self.rollout.pipeline.store.save(target, expected_version=base.version)
            self._state = target
            self.rollout.pipeline.after_persist(base, target)
            return target

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except StateStoreError as exc:
            log.error("%s: %s", self.key, exc)

    def _change(
        self,
        command: str,
        build: Callable[[RolloutState], RolloutState],
        *,
        sticky_on_store_error: bool = False,
    ) -> RolloutState:
        with self._mutex:
            for _ in range(_CAS_RETRIES):
                try:
                    current = self.rollout.store.load(self.key) or self._state
                except StateStoreError:
                    if sticky_on_store_error:  # an unreadable store must not block a rollback
                        self._check_allowed(command, self._state)
                        self._force_local(self._state, build(self._state))
                    raise
                if current.version < self._state.version:
                    current = self._state
                self._check_allowed(command, current)
                new = build(current)
                try:
                    return self._commit(current, new)
                except StaleStateError:
                    continue
                except StateStoreError:
                    if sticky_on_store_error:
                        self._force_local(current, new)
                    raise
            raise StateStoreError(
                f"{self.rollout.store.url}: {self.key}: {command} lost {_CAS_RETRIES} "
                "compare-and-set races in a row; try again"
            )

    def _force_local(self, old: RolloutState, new: RolloutState) -> None:
        log.critical(
            "ALARM: %s: could not persist %s to %s; the flag is off in this process only",
            self.key,
            new.status.value,
            self.rollout.store.url,
        )
        self._state = new
        self.rollout.pipeline.after_persist(old, new)

    def _check_allowed(self, command: str, current: RolloutState) -> None:
        if current.status in ALLOWED[command]:
            return
        if command == "reset" and current.requested:
            return  # a pending flag's requested start is withdrawn by a reset
        if _already(command, current.status):
            raise TransitionError(
                f"cannot {command} {self.key}: it is {current.status.value} already"
            )
        msg = f"cannot {command} {self.key}: it is {current.status.value}"
        if current.status is Status.ROLLED_BACK and current.reason:
            msg += f" (reason: {current.reason})"
        hint = _HINTS.get(current.status)
        raise TransitionError(f"{msg}; {hint}" if hint else msg)

    def _check_after(self) -> None:
        after = self.flag.after
        if after is None:
            return
        peer = self.rollout.controller(after).refresh()
        if peer.status is not Status.COMPLETED:
            raise TransitionError(
                f"cannot start {self.key}: it runs after {after}, which is {peer.status.value}"
            )

    def _evidence(self, cur: RolloutState) -> dict[str, Number]:
        if cur.status not in (Status.RUNNING, Status.PAUSED) or cur.stage < 1:
            return {}
        return stage_evidence(self.flag.stage(cur.stage), cur.windows)

    def _promoted(self, cur: RolloutState, now: float, reason: str) -> RolloutState:
        stages = self.flag.stages
        evidence = self._evidence(cur)
        if cur.stage >= len(stages):
            return cur.evolve(
                _entry(now, "complete", reason, stage=cur.stage, pct=cur.percent, **evidence),
                status=Status.COMPLETED,
                since=now,
                windows=(),
                reason="completed",
            )
        nxt = stages[cur.stage]
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
            percent=nxt.percent,
            since=now,
            windows=(),
            reason=reason,
        )


def _already(command: str, status: Status) -> bool:
    return (command, status) in {
        ("pause", Status.PAUSED),
        ("rollback", Status.ROLLED_BACK),
        ("reset", Status.PENDING),
        ("start", Status.RUNNING),
    }


class Rollout:
    """The controllers of one plan, sharing a store, a clock, a policy and a pipeline.

    ``store`` is a :class:`StateStore` or a URL (``memory://``, ``file:///path``); ``policy``
    decides at each tick (``None``: a rollout driven by operators only); ``serve``, ``events``
    and ``reports`` are the pipeline's steps 2 to 4 and ``meter_provider`` gets the
    controller's metrics (step 5; see :class:`~openfeature_canary.policy.Pipeline`). Building a
    rollout does no I/O: every flag is ``pending`` until :meth:`load` reads the store.
    """

    def __init__(
        self,
        plan: RolloutPlan,
        *,
        store: StateStore | str = "memory://",
        clock: Clock | None = None,
        policy: Policy | None = None,
        serve: TransitionListener | None = None,
        events: EventSink | None = None,
        reports: ReportSink | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.plan = plan
        self.store = open_store(store) if isinstance(store, str) else store
        self.clock: Clock = clock or SystemClock()
        self.policy = policy
        self._controllers = {key: Controller(flag, self) for key, flag in plan.flags.items()}
        #: The controller's own metrics (spec §7), when a meter provider is given.
        self.metrics = None if meter_provider is None else RolloutMetrics(self, meter_provider)
        self.pipeline = Pipeline(
            self.store, serve=serve, events=events, reports=reports, metrics=self.metrics
        )

    def controller(self, flag_key: str) -> Controller:
        """The flag's controller; :class:`UnknownFlagError` for a flag not in the plan."""
        self.plan.flag(flag_key)
        return self._controllers[flag_key]

    def controllers(self) -> tuple[Controller, ...]:
        """All controllers, in plan order."""
        return tuple(self._controllers.values())

    def add_observer(self, observer: TransitionListener) -> None:
        """Call ``observer(old, new)`` after every transition of any flag, this process's or
        another's seen in the store, after the pipeline's ordered effects. For watchers (a
        PolicyHook, a printer, a test), not for effects whose order matters."""
        self.pipeline.observers.append(observer)

    def tick_due(self) -> None:
        """One policy round: every flag that is due decides, and every change is persisted in
        one write of the store (a file store parses and writes its file once, however many
        flags changed); then each committed transition runs its effects, in plan order.

        A change another writer beat is dropped (their word wins; the next round decides
        again). If the store cannot be written, rollbacks still take effect in this process
        (with an alarm) and the other changes wait for the next round. One flag's failing
        decision is logged with its name and does not stop the others.
        """
        decided: list[tuple[Controller, RolloutState, RolloutState]] = []
        for ctl in self._controllers.values():
            try:
                pair = ctl.decide_if_due()
            except Exception:
                log.exception("openfeature-canary: the policy tick of %s failed", ctl.key)
                continue
            if pair is not None:
                decided.append((ctl, *pair))
        if not decided:
            return
        try:
            written = self.store.save_many([(target, base.version) for _, base, target in decided])
        except StateStoreError as exc:
            log.error("openfeature-canary: %s; this round's changes wait", exc)
            for ctl, base, target in decided:
                if target.status is Status.ROLLED_BACK:
                    ctl._force_local(base, target)
            return
        for (ctl, base, target), ok in zip(decided, written, strict=True):
            if ok:
                ctl.committed(base, target)
            else:
                log.info("%s: another writer changed the state first; re-read", ctl.key)
                ctl._refresh_quietly()

    def load(self) -> None:
        """Read every flag's state from the store (one read); raises
        :class:`StateStoreError` naming the store when it cannot."""
        states = self.store.load_all()
        for key, ctl in self._controllers.items():
            ctl.adopt(states.get(key))

    def refresh(self) -> None:
        """:meth:`load`, under its other name: re-read what other processes may have done."""
        self.load()


def _entry(at: float, action: str, reason: str, **numbers: Number) -> LogEntry:
    return LogEntry(at=at, action=action, reason=reason, numbers=MappingProxyType(numbers))
