"""The imperative shell around one flag's rollout: operator commands and the policy tick.

A :class:`Controller` turns a command (``start``, ``promote``, ``rollback`` …) or a policy
decision into a new :class:`RolloutState` and hands it to the rollout's one
:meth:`~openfeature_canary.policy.Pipeline.apply` (persist, then serve, announce, report,
count). What each command does to a state (:mod:`~openfeature_canary.policy.transitions`) and
which commands are valid in which status (one table, :data:`ALLOWED`) are pure.

The controllers of a plan live in a :class:`~openfeature_canary.policy.Rollout`
(``_rollout.py``), which owns the store, the clock, the policy and the pipeline; the background
round over all of them is :func:`~openfeature_canary.policy.run_round`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.errors import StateStoreError, TransitionError
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy import _commands as commands
from openfeature_canary.policy import transitions
from openfeature_canary.policy._reasons import operator_id
from openfeature_canary.policy.apply import Change, How
from openfeature_canary.policy.round import holds_lease
from openfeature_canary.state import (
    Number,
    RolloutState,
    Status,
    check_state_against_plan,
)

if TYPE_CHECKING:
    from openfeature_canary.policy._rollout import Rollout

__all__ = ["Controller", "Policy"]

log = logging.getLogger("openfeature_canary")


class Policy(Protocol):
    """The policy seam of a rollout (the autopilot implements it; tests give small fakes)."""

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        """The state ``ctl``'s flag moves to at ``now`` (built from ``ctl.state``), or None."""
        ...

    def baseline_loud(self, ctl: Controller, now: float) -> list[str]:
        """Stage 0's gate: the triggers that breach on the flag's baseline now."""
        ...

    def stand_down(self) -> None:
        """Another process decides now (a fleet's lease): forget what was remembered between
        ticks (the evidence itself is in the store)."""
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
        #: A rollback that took effect here while the store could not be written; persisted
        #: (re-asserted over what the store holds) as soon as the store can be read again.
        self._forced: RolloutState | None = None
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
        ignored, so a served rollback can never be undone by a slow reader. A rollback forced
        in this process while the store could not be written is written over ``stored``
        first, so that repairing the store cannot turn the canary back on.
        """
        if stored is not None:
            check_state_against_plan(self.flag, stored, source=self.rollout.store.url)
        with self._mutex:
            if self._forced is not None:
                self._reassert_forced(stored)
                return self._state
            if stored is not None and stored.version > self._state.version:
                self.rollout.pipeline.apply([Change(self._state, stored, self)], How.OBSERVED)
            return self._state

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """This flag's re-entrant lock: held while a change is built, taken and applied."""
        return self._mutex

    def take(self, old: RolloutState, new: RolloutState) -> bool:
        """Make ``new`` the state this process knows (called by the pipeline once ``new`` is
        persisted, or forced); False when this process already knows a newer state."""
        with self._mutex:
            if self._state.version > new.version:
                return False
            self._state = new
            return True

    def after_completed(self) -> bool:
        """True when the flag has no ``after`` flag or that flag has completed (as known)."""
        after = self.flag.after
        return after is None or self.rollout.controller(after).state.status is Status.COMPLETED

    # ------------------------------------------------------------------ commands

    def start(self, *, force: bool = False, by: str | None = None) -> RolloutState:
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
            return commands.started(self.flag, cur, now, by=operator_id(by))

        return self._change("start", build)

    def request_start(self, *, by: str | None = None) -> RolloutState:
        """Record that an operator asked for a start; the process that runs the policy carries
        it out at its next tick once every trigger is quiet on the baseline (stage 0's gate).

        This is what ``openfeature-canary start`` does: the command line has no signals, so it
        cannot check the baseline itself. The flag stays ``pending`` (0 %) until then.
        """
        now = self.rollout.clock.now()

        def build(cur: RolloutState) -> RolloutState:
            self._check_after()
            return commands.start_requested(self.key, cur, now, by=operator_id(by))

        return self._change("start", build)

    def pause(self, reason: str = "operator", *, by: str | None = None) -> RolloutState:
        """Hold the current stage: no automatic advance (triggers still roll back). ``by``:
        who asks (``operator:<by>``; default the login name), for every command."""
        now, who = self.rollout.clock.now(), operator_id(by)
        return self._change("pause", lambda cur: commands.paused(cur, now, reason, by=who))

    def resume(self, *, by: str | None = None) -> RolloutState:
        """Continue a paused stage; its observation restarts now."""
        now, who = self.rollout.clock.now(), operator_id(by)
        return self._change("resume", lambda cur: commands.resumed(cur, now, by=who))

    def promote(
        self,
        reason: str = "operator",
        *,
        to: int | None = None,
        skip_soak: bool = True,
        by: str | None = None,
    ) -> RolloutState:
        """Advance to the next stage now (``completed`` after the last one); ``to``: straight
        to that later stage; ``skip_soak=False``: refuse to complete from the last stage."""
        now, who = self.rollout.clock.now(), operator_id(by)
        return self._change(
            "promote",
            lambda cur: commands.promoted(
                self.flag, cur, now, reason, to=to, skip_soak=skip_soak, by=who
            ),
        )

    def rollback(
        self,
        reason: str,
        numbers: Mapping[str, Number] | None = None,
        *,
        by: str | None = None,
    ) -> RolloutState:
        """Force the flag to 0 % and keep it there until an operator resets it.

        The state is persisted first. If the store cannot be written, the rollback still
        takes effect in this process (it serves 0 % and the effects run), is persisted as soon
        as the store can be read again, and :class:`StateStoreError` is raised so that the
        caller can raise an alarm.
        """
        if not reason or not reason.strip():
            raise ValueError("rollback needs a reason")
        now, who = self.rollout.clock.now(), operator_id(by)
        return self._change(
            "rollback",
            lambda cur: commands.rolled_back(self.flag, cur, now, reason, numbers, by=who),
            sticky_on_store_error=True,
        )

    def reset(self, *, by: str | None = None) -> RolloutState:
        """Return to ``pending`` (0 %), e.g. after a rollback has been investigated; on a
        pending flag, withdraw a requested start."""
        now, who = self.rollout.clock.now(), operator_id(by)
        return self._change("reset", lambda cur: commands.reset(cur, now, by=who))

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
        now = self.rollout.clock.now()
        if not holds_lease(self.rollout, now):
            return None
        with self._mutex:
            change = self.decide(now)
            if change is None:
                return None
            try:
                applied = self.rollout.pipeline.apply([change])[0]
            except StateStoreError:
                if change.new.status is Status.ROLLED_BACK:
                    self.force(change.old, change.new)
                raise
            if not applied:
                log.info("%s: another writer changed the state first; re-read", self.key)
                self.refresh_quietly()
                return None
            return change.new

    def tick_if_due(self, *, refresh: bool = True) -> RolloutState | None:
        """Tick when the flag's ``tick`` has passed since the last due tick (by the rollout's
        clock). The one schedule of this process: the background runner and a PolicyHook both
        call this, so a flag is ticked once per period however many drivers there are."""
        if not self.claim_due(self.rollout.clock.now()):
            return None
        return self.tick(refresh=refresh)

    def claim_due(self, now: float) -> bool:
        """True (once per period) when the flag's ``tick`` has passed since its last due tick;
        the one schedule of this process, shared by every driver."""
        with self._due_lock:
            if now < self._next_due:
                return False
            self._next_due = now + self.flag.tick_s
            return True

    def decide(self, now: float) -> Change | None:
        """Ask the policy, on the state this process knows, where the flag moves at ``now``:
        the change to apply, or ``None`` (no policy here, or nothing to change)."""
        policy = self.rollout.policy
        if policy is None:
            return None
        with self._mutex:
            base = self._state
            target = policy.decide(self, now)
        return None if target is None else Change(base, target, self)

    def force(self, old: RolloutState, new: RolloutState) -> None:
        """Make a rollback the store could not take effective in this process (every effect
        but persisting, with an alarm); it is persisted once the store can be read again."""
        with self._mutex:
            self._forced = new
            self.rollout.pipeline.apply([Change(old, new, self)], How.FORCED)

    def refresh_quietly(self) -> None:
        """:meth:`refresh`, logging (not raising) a store that cannot be read."""
        try:
            self.refresh()
        except StateStoreError as exc:
            log.error("%s: %s", self.key, exc)

    # ------------------------------------------------------------------ internals

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
                    check_state_against_plan(self.flag, current, source=self.rollout.store.url)
                except StateStoreError:
                    if sticky_on_store_error:  # an unreadable store must not block a rollback
                        commands.check_allowed(self.key, command, self._state)
                        self.force(self._state, build(self._state))
                    raise
                if current.version < self._state.version:
                    current = self._state
                commands.check_allowed(self.key, command, current)
                new = build(current)
                try:
                    applied = self.rollout.pipeline.apply([Change(current, new, self)])[0]
                except StateStoreError:
                    if sticky_on_store_error:
                        self.force(current, new)
                    raise
                if applied:
                    return new
            raise StateStoreError(
                f"{self.rollout.store.url}: {self.key}: {command} lost {_CAS_RETRIES} "
                "compare-and-set races in a row; try again"
            )

    def _reassert_forced(self, stored: RolloutState | None) -> None:
        """Write the forced rollback over ``stored`` (no effects again: they ran when it was
        forced), unless the store shows it rolled back already or an operator reset it since."""
        forced = self._forced
        assert forced is not None
        target = transitions.reassert_rollback(self.key, stored, forced)
        pipeline = self.rollout.pipeline
        if target is None:  # rolled back in the store already, or reset by an operator since
            self._forced = None
            if stored is not None and stored.version > self._state.version:
                pipeline.apply([Change(self._state, stored, self)], How.OBSERVED)
            return
        base = stored or RolloutState(flag_key=self.key)
        try:
            persisted = pipeline.apply([Change(base, target, self)], How.REASSERTED)[0]
        except StateStoreError as exc:
            log.error("%s: the forced rollback is not persisted yet: %s", self.key, exc)
            return
        if persisted:
            self._forced = None
        else:
            log.error("%s: the forced rollback is not persisted yet: lost a race", self.key)

    def _check_after(self) -> None:
        after = self.flag.after
        if after is None:
            return
        peer = self.rollout.controller(after).refresh()
        if peer.status is not Status.COMPLETED:
            raise TransitionError(
                f"cannot start {self.key}: it runs after {after}, which is {peer.status.value}"
            )
