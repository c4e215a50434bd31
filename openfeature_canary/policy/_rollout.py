"""The controllers of one plan over one store, clock, policy and pipeline.

:class:`Rollout` is built with every part it needs (no part is added later) and does no I/O
until :meth:`Rollout.load` reads the store. :meth:`Rollout.tick_due` is the background round:
every due flag decides, and all changes are written in one compare-and-set of the store.
"""

from __future__ import annotations

import logging

from opentelemetry.metrics import MeterProvider

from openfeature_canary.clock import Clock, SystemClock
from openfeature_canary.errors import StateStoreError
from openfeature_canary.events import EventSink, ReportSink
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.policy._controller import Controller, Policy
from openfeature_canary.policy._metrics import RolloutMetrics
from openfeature_canary.policy._pipeline import Pipeline, TransitionListener
from openfeature_canary.state import RolloutState, Status, check_state_against_plan
from openfeature_canary.stores import StateStore, open_store

__all__ = ["Rollout"]

log = logging.getLogger("openfeature_canary")


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
