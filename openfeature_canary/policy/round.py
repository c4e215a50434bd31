"""One policy round of a process, written out: the fleet, the signals and decisions, apply.

:func:`run_round` is what the background runner (and the ``controller`` command) does at each
of its rounds, top to bottom:

1. the flags whose ``tick`` has come (each flag's one schedule, shared with a PolicyHook);
2. the fleet: publish this process's signals and take or renew the decider lease
   (:meth:`~openfeature_canary.policy.Fleet.round`); a process that does not hold it stops
   here, and its policy forgets what it remembered between ticks;
3. read the signals and decide (the policy, per due flag, on the state this process knows);
   a process whose lease ran out meanwhile (a stall) drops its decisions;
4. apply every change at once (:meth:`~openfeature_canary.policy.Pipeline.apply`: one
   compare-and-set write, then each change's effects in plan order). A rollback the store
   could not take is forced in this process; the other changes wait for the next round.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from openfeature_canary.errors import StateStoreError
from openfeature_canary.policy.apply import Change
from openfeature_canary.state import Status

if TYPE_CHECKING:
    from openfeature_canary.policy._controller import Controller
    from openfeature_canary.policy._rollout import Rollout

__all__ = ["holds_lease", "run_round"]

log = logging.getLogger("openfeature_canary")


def holds_lease(rollout: Rollout, now: float) -> bool:
    """Step 2: publish this process's signals and hold the decider lease (True: decide now).

    Without a fleet, this process always decides. Idempotent within one ``now``.
    """
    fleet = rollout.fleet
    if fleet is None or fleet.round(now):
        return True
    if rollout.policy is not None:
        rollout.policy.stand_down()
    return False


def run_round(rollout: Rollout) -> list[Change]:
    """One round (see the module docstring); the changes it persisted, in plan order.

    A change another writer beat is dropped (their word wins; the next round decides again).
    One flag's failing decision is logged with its name and does not stop the others.
    """
    if rollout.policy is None:
        return []
    now = rollout.clock.now()
    # 1. the due flags
    due = [ctl for ctl in rollout.controllers() if ctl.claim_due(now)]
    # 2. the fleet: publish, hold the lease
    if not due or not holds_lease(rollout, now):
        return []
    # 3. read the signals and decide
    decided: list[tuple[Controller, Change]] = []
    for ctl in due:
        try:
            change = ctl.decide(now)
        except Exception:
            log.exception("openfeature-canary: the policy tick of %s failed", ctl.key)
            continue
        if change is not None:
            decided.append((ctl, change))
    if not decided:
        return []
    fleet = rollout.fleet
    if fleet is not None and not fleet.holds(rollout.clock.now()):
        # A decider that stalled past its lease while deciding does not act on what it read
        # (compare-and-set fences the rest: a write after another decider's is refused).
        log.warning("openfeature-canary: the decider lease ran out while deciding; dropped")
        return []
    # 4. apply: one write, then each change's effects
    changes = [change for _ctl, change in decided]
    try:
        applied = rollout.pipeline.apply(changes)
    except StateStoreError as exc:
        log.error("openfeature-canary: %s; this round's changes wait", exc)
        for ctl, change in decided:
            if change.new.status is Status.ROLLED_BACK:
                ctl.force(change.old, change.new)
        return []
    for (ctl, _change), ok in zip(decided, applied, strict=True):
        if not ok:
            log.info("%s: another writer changed the state first; re-read", ctl.key)
            ctl.refresh_quietly()
    return [change for change, ok in zip(changes, applied, strict=True) if ok]
