"""The controllers of one plan over one store, clock, policy and pipeline.

:class:`Rollout` is built with every part it needs (no part is added later) and does no I/O
until :meth:`Rollout.load` reads the store. The background round over its controllers is
:func:`~openfeature_canary.policy.run_round`.
"""

from __future__ import annotations

import logging

from opentelemetry.metrics import MeterProvider

from openfeature_canary.clock import Clock, SystemClock
from openfeature_canary.events import EventSink, ReportSink
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.policy._controller import Controller, Policy
from openfeature_canary.policy._fleet import Fleet
from openfeature_canary.policy._metrics import RolloutMetrics
from openfeature_canary.policy.apply import Pipeline, TransitionListener
from openfeature_canary.state import check_state_against_plan
from openfeature_canary.stores import StateStore, open_store

__all__ = ["Rollout"]

log = logging.getLogger("openfeature_canary")


class Rollout:
    """The controllers of one plan, sharing a store, a clock, a policy and a pipeline.

        ``store`` is a :class:`StateStore` or a URL (``memory://``, ``file:///path``); ``policy``
        decides at each tick (``None``: a rollout driven by operators only); ``serve``, ``events``
        and ``reports`` are the pipeline's steps 2 to 4 and ``meter_provider`` gets the
        controller's metrics (step 5; see :class:`~openfeature_canary.policy.Pipeline`); ``fleet``
    is this process's part in a fleet (the policy decides while it holds the lease). Building a
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
        fleet: Fleet | None = None,
    ) -> None:
        self.plan = plan
        self.store = open_store(store) if isinstance(store, str) else store
        self.clock: Clock = clock or SystemClock()
        self.policy = policy
        #: This process's part in a fleet: the policy decides only while it holds the lease
        #: (``None``: it always decides).
        self.fleet = fleet
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

    def load(self) -> None:
        """Read every flag's state from the store (one read); raises
        :class:`StateStoreError` naming the store when it cannot."""
        states = self.store.load_all()
        for key, ctl in self._controllers.items():  # every state checked before any is adopted
            state = states.get(key)
            if state is not None:
                check_state_against_plan(ctl.flag, state, source=self.store.url)
        for key, ctl in self._controllers.items():
            ctl.adopt(states.get(key))

    def reconcile_events(self) -> int:
        """Queue the events of transitions a process persisted but died before queueing
        (:meth:`~openfeature_canary.policy.Pipeline.reconcile`); how many were queued. Call it
        only with a sink that drops an ``event_id`` it has seen (the durable outbox does)."""
        return self.pipeline.reconcile(
            [ctl.state for ctl in self._controllers.values()], now=self.clock.now()
        )

    def refresh(self) -> None:
        """:meth:`load`, under its other name: re-read what other processes may have done."""
        self.load()
