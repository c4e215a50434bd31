"""The policy: pure decisions, the controllers that apply them, and what each flag serves.

- :func:`decide` is a pure function of (plan, state, readings, memory, now) → :class:`Decision`;
  its stage gates are sequential tests on the stage's evidence (:func:`judge`,
  docs/decisions.md).
- :class:`Autopilot` is the policy a :class:`Rollout` is built with: it reads a
  :class:`~openfeature_canary.signals.SignalSource` and calls :func:`decide`.
- :mod:`.transitions`: one pure function per kind of transition (start, advance, rollback …),
  used by the autopilot and the operator commands alike.
- :class:`Controller` (one per flag) applies operator commands and policy decisions through
  the rollout's one :meth:`Pipeline.apply`: persist, serve, announce, report, count, log.
- :func:`run_round` is one policy round: the fleet's lease, the signals, decide, apply.
- :class:`BackgroundRunner` is the one tick schedule of a process.
- :class:`Fleet` is this process's part in a fleet: it publishes its signals, and the policy
  decides only while it holds the store's decider lease.
- :class:`FlagView` is what a flag serves now (the provider's immutable snapshot).
"""

from __future__ import annotations

from openfeature_canary.policy import transitions
from openfeature_canary.policy._announce import event_id, implied_events
from openfeature_canary.policy._autopilot import Autopilot, TickResult
from openfeature_canary.policy._commands import ALLOWED
from openfeature_canary.policy._controller import Controller, Policy
from openfeature_canary.policy._decide import (
    Action,
    Decision,
    Memory,
    Reading,
    Readings,
    decide,
)
from openfeature_canary.policy._fleet import DEFAULT_LEASE_TTL_S, Fleet
from openfeature_canary.policy._gates import GateTest, Information, Judgement, judge
from openfeature_canary.policy._metrics import RolloutMetrics
from openfeature_canary.policy._rollout import Rollout
from openfeature_canary.policy._schedule import BackgroundRunner, StoreHealth
from openfeature_canary.policy._view import OFF, ON, FlagView, Resolution, build_view
from openfeature_canary.policy.apply import (
    RECONCILE_WINDOW_S,
    Change,
    How,
    Pipeline,
    RollbackCounter,
    StateOwner,
    TransitionListener,
)
from openfeature_canary.policy.round import holds_lease, run_round

__all__ = [
    "ALLOWED",
    "DEFAULT_LEASE_TTL_S",
    "OFF",
    "ON",
    "RECONCILE_WINDOW_S",
    "Action",
    "Autopilot",
    "BackgroundRunner",
    "Change",
    "Controller",
    "Decision",
    "FlagView",
    "Fleet",
    "GateTest",
    "How",
    "Information",
    "Judgement",
    "Memory",
    "Pipeline",
    "Policy",
    "Reading",
    "Readings",
    "Resolution",
    "RollbackCounter",
    "Rollout",
    "RolloutMetrics",
    "StateOwner",
    "StoreHealth",
    "TickResult",
    "TransitionListener",
    "build_view",
    "decide",
    "event_id",
    "holds_lease",
    "implied_events",
    "judge",
    "run_round",
    "transitions",
]
