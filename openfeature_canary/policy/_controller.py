"""The imperative shell around one flag's rollout: operator commands, persistence, effects.

A :class:`Controller` turns a command (``start``, ``promote``, ``rollback`` …) into a new
:class:`RolloutState`, persists it with a compare-and-set, and only then tells its listeners
(the provider swaps its snapshot and emits ``PROVIDER_CONFIGURATION_CHANGED``). Which
commands are valid in which status is one table, :data:`ALLOWED`.

:class:`Rollout` groups the controllers of a plan over one store and clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from openfeature_canary._errors import StaleStateError, StateStoreError, TransitionError
from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary._state import LogEntry, Number, RolloutState, Status
from openfeature_canary._store import StateStore, open_store
from openfeature_canary.clock import Clock, SystemClock
from openfeature_canary.plan import FlagPlan, RolloutPlan

__all__ = ["ALLOWED", "Controller", "Decider", "Rollout", "TransitionListener"]

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

#: Called after every applied transition with (old, new). Must not raise.
TransitionListener = Callable[[RolloutState, RolloutState], None]

#: The policy seam: given the controller and now, return the state to move to (or ``None``).
Decider = Callable[["Controller", float], "RolloutState | None"]

#: Stage 0's gate: given the controller and now, the triggers loud on the baseline.
StartGuard = Callable[["Controller", float], "list[str]"]

_CAS_RETRIES: Final = 3


class Controller:
    """Operator commands and the policy tick for one flag.

    >>> rollout = Rollout(plan, store="memory://", clock=ManualClock())  # doctest: +SKIP
    >>> ctl = rollout.controller("dataservice-read-canary")               # doctest: +SKIP
    >>> ctl.start().percent                                               # doctest: +SKIP
    5.0

    Each command is persisted before its effects run and raises :class:`TransitionError` when
    it is not valid in the current status (``promote`` on a rolled-back flag, …).
    """

    def __init__(
        self,
        flag: FlagPlan,
        rollout: Rollout,
    ) -> None:
        self.flag = flag
        self.key = flag.key
        self._rollout = rollout
        try:
            stored = rollout.store.load(flag.key)
        except StateStoreError:
            if not rollout.serve_unreadable:
                raise
            # Serving must not depend on a readable store: start on the safe side (0 %);
            # commands will report the store error until it is repaired.
            log.critical(
                "%s: cannot read %s; serving 0 %% until it is repaired",
                flag.key,
                rollout.store.url,
                exc_info=True,
            )
            stored = None
        self._state = stored or RolloutState(flag_key=flag.key)
        self._mutex = threading.RLock()
        self._due_lock = threading.Lock()
        renew_locks_after_fork(self, "_mutex", factory=threading.RLock)
        renew_locks_after_fork(self, "_due_lock")
        self._next_due = float("-inf")
        self.decider: Decider | None = None
        #: Stage 0's gate: returns the triggers that are loud on the baseline (set by the policy).
        self.start_guard: StartGuard | None = None

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> RolloutState:
        """The last state this process knows (refreshed by :meth:`refresh` and by commands)."""
        return self._state

    def refresh(self) -> RolloutState:
        """Re-read the store; tell listeners when another process changed the state."""
        with self._mutex:
            stored = self._rollout.store.load(self.key)
            if stored is not None and stored.version > self._state.version:
                old, self._state = self._state, stored
                self._rollout._notify(old, stored, local=False)
            return self._state

    # ------------------------------------------------------------------ commands

    def start(self, *, force: bool = False) -> RolloutState:
        """Move from ``pending`` (0 %) to stage 1, once any ``after`` flag has completed.

        With a policy attached, stage 0's gate applies first: every trigger must be quiet on
        the baseline (the traffic that does not get the canary), otherwise
        :class:`TransitionError` names the loud ones. ``force=True`` skips that check.
        """
        now = self._rollout.clock.now()

        def build(cur: RolloutState) -> RolloutState:
            self._check_after()
            if not force and self.start_guard is not None:
                loud = self.start_guard(self, now)
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
            )

        return self._change("start", build)

    def pause(self, reason: str = "operator") -> RolloutState:
        """Hold the current stage: no automatic advance (triggers still roll back)."""
        now = self._rollout.clock.now()
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
        now = self._rollout.clock.now()
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
        now = self._rollout.clock.now()
        return self._change("promote", lambda cur: self._promoted(cur, now, reason))

    def rollback(self, reason: str, numbers: Mapping[str, Number] | None = None) -> RolloutState:
        """Force the flag to 0 % and keep it there until an operator resets it.

        The state is persisted first. If the store cannot be written, the rollback still
        takes effect in this process (listeners are told) and :class:`StateStoreError` is
        raised so that the caller can raise an alarm.
        """
        if not reason or not reason.strip():
            raise ValueError("rollback needs a reason")
        now = self._rollout.clock.now()

        def build(cur: RolloutState) -> RolloutState:
            extra = dict(numbers or {})
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
            )

        return self._change("rollback", build, sticky_on_store_error=True)

    def reset(self) -> RolloutState:
        """Return to ``pending`` (0 %), e.g. after a rollback has been investigated."""
        now = self._rollout.clock.now()
        return self._change(
            "reset",
            lambda cur: cur.evolve(
                _entry(
                    now, "reset", "operator", from_status=cur.status.value, from_pct=cur.percent
                ),
                status=Status.PENDING,
                stage=0,
                percent=0.0,
                since=now,
                windows=(),
                reason="reset",
            ),
        )

    def tick(self) -> RolloutState | None:
        """Evaluate the policy now; return the new state when it changed something.

        Without a decider (no policy configured) this only re-reads the store. An unreadable
        store does not stop the policy: it decides on the last known state (a rollback then
        takes effect in this process and raises for the alarm).
        """
        try:
            self.refresh()
        except StateStoreError:
            if self.decider is None:
                raise
            log.error("%s: store unreadable; deciding on the last known state", self.key)
        if self.decider is None:
            return None
        with self._mutex:
            target = self.decider(self, self._rollout.clock.now())
            if target is None:
                return None
            return self.apply(target)

    def tick_if_due(self) -> RolloutState | None:
        """Tick when the flag's ``tick`` has passed since the last due tick (by the rollout's
        clock). The background runner and the PolicyHook share this schedule, so a flag is
        ticked once per period however many drivers there are."""
        now = self._rollout.clock.now()
        with self._due_lock:
            if now < self._next_due:
                return None
            self._next_due = now + self.flag.tick_s
        return self.tick()

    # ------------------------------------------------------------------ internals

    def apply(self, target: RolloutState) -> RolloutState:
        """Persist a state the policy built from :attr:`state`, then run the effects."""
        with self._mutex:
            base = self._state
            try:
                self._rollout.store.save(target, expected_version=base.version)
            except StaleStateError:
                # Someone else (an operator, another process) acted first; their word wins.
                self.refresh()
                raise
            except StateStoreError:
                if target.status is Status.ROLLED_BACK:
                    self._force_local(base, target)
                raise
            self._state = target
            self._rollout._notify(base, target)
            return target

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
                    current = self._rollout.store.load(self.key) or self._state
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
                    self._rollout.store.save(new, expected_version=current.version)
                except StaleStateError:
                    continue
                except StateStoreError:
                    if sticky_on_store_error:
                        self._force_local(current, new)
                    raise
                old, self._state = self._state, new
                self._rollout._notify(old, new)
                return new
            raise StateStoreError(
                f"{self._rollout.store.url}: {self.key}: {command} lost {_CAS_RETRIES} "
                "compare-and-set races in a row; try again"
            )

    def _force_local(self, old: RolloutState, new: RolloutState) -> None:
        log.critical(
            "ALARM: %s: could not persist %s to %s; the flag is off in this process only",
            self.key,
            new.status.value,
            self._rollout.store.url,
        )
        self._state = new
        self._rollout._notify(old, new)

    def _check_allowed(self, command: str, current: RolloutState) -> None:
        if current.status in ALLOWED[command]:
            return
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
        peer = self._rollout.controller(after).refresh()
        if peer.status is not Status.COMPLETED:
            raise TransitionError(
                f"cannot start {self.key}: it runs after {after}, which is {peer.status.value}"
            )

    def _promoted(self, cur: RolloutState, now: float, reason: str) -> RolloutState:
        stages = self.flag.stages
        if cur.stage >= len(stages):
            return cur.evolve(
                _entry(now, "complete", reason, stage=cur.stage, pct=cur.percent),
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
    """The controllers of one plan, sharing a store and a clock.

    ``store`` is a :class:`StateStore` or a URL (``memory://``, ``file:///path``).
    ``serve_unreadable``: see the attribute.
    """

    def __init__(
        self,
        plan: RolloutPlan,
        *,
        store: StateStore | str = "memory://",
        clock: Clock | None = None,
        serve_unreadable: bool = False,
    ) -> None:
        self.plan = plan
        self.store = open_store(store) if isinstance(store, str) else store
        self.clock: Clock = clock or SystemClock()
        #: True (the provider) starts flags whose stored state cannot be read at 0 % instead
        #: of raising: serving the old path beats not serving at all.
        self.serve_unreadable = serve_unreadable
        self._listeners: list[tuple[TransitionListener, bool]] = []
        self._controllers = {key: Controller(flag, self) for key, flag in plan.flags.items()}

    def controller(self, flag_key: str) -> Controller:
        """The flag's controller; :class:`UnknownFlagError` for a flag not in the plan."""
        self.plan.flag(flag_key)
        return self._controllers[flag_key]

    def controllers(self) -> tuple[Controller, ...]:
        """All controllers, in plan order."""
        return tuple(self._controllers.values())

    def add_listener(self, listener: TransitionListener, *, local_only: bool = False) -> None:
        """Call ``listener(old, new)`` after every transition of any flag.

        By default also for transitions another process made (seen in the store).
        ``local_only=True`` is for effects that must happen once per transition, not once per
        process that notices it: the telemetry event, the reports, the rollback counter.
        """
        self._listeners.append((listener, local_only))

    def refresh(self) -> None:
        """Re-read every flag from the store (another process may have acted)."""
        for ctl in self._controllers.values():
            ctl.refresh()

    def _notify(self, old: RolloutState, new: RolloutState, *, local: bool = True) -> None:
        for listener, local_only in tuple(self._listeners):
            if local_only and not local:
                continue
            try:
                listener(old, new)
            except Exception:  # a failing listener must not undo a persisted change
                log.exception("listener %r failed for %s", listener, new.flag_key)


def _entry(at: float, action: str, reason: str, **numbers: Number) -> LogEntry:
    return LogEntry(at=at, action=action, reason=reason, numbers=MappingProxyType(numbers))
