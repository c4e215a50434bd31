"""``CanaryProvider``: an OpenFeature provider that serves canary flags from a rollout plan."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from openfeature.contrib.provider.canary._answers import (
    Answers,
    invalid_unit,
    missing_unit,
    not_a_unit,
    rebuilt,
)
from openfeature.contrib.provider.canary._arguments import check_arguments
from openfeature.contrib.provider.canary._health import StoreHealth
from openfeature.contrib.provider.canary._tracking import tracker_for
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import (
    ErrorCode,
    FlagNotFoundError,
    ProviderFatalError,
    ProviderNotReadyError,
    TypeMismatchError,
)
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.hook import Hook
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails
from opentelemetry.metrics import MeterProvider, get_meter_provider

from openfeature_canary import (
    Clock,
    Controller,
    RolloutPlan,
    RolloutState,
    StateStore,
    StateStoreError,
    UnknownFlagError,
    load_plan,
)
from openfeature_canary._forksafe import hold_locks_across_fork
from openfeature_canary.engine import EngineOptions, build_engine
from openfeature_canary.events import EventQueue, EventSink, render_plan_markdown
from openfeature_canary.policy import FlagView
from openfeature_canary.signals import SignalSource
from openfeature_canary.stores import FileStateStore
from openfeature_canary.telemetry import Telemetry
from openfeature_canary.web import DEFAULT_HOST, DecidingStatusPage

__all__ = ["CanaryProvider"]

log = logging.getLogger("openfeature_canary")


class CanaryProvider(AbstractProvider):
    """Resolves the boolean canary flags of a rollout plan with stable murmur3 bucketing.

    Use it as the OpenFeature provider of a service (or of a domain)::

        telemetry = setup_telemetry(plan, prometheus_port=9464)
        provider = CanaryProvider(plan, store="file:///var/lib/canary/state.json",
                                  telemetry=telemetry)
        api.set_provider_and_wait(provider)     # reads the store; the policy starts ticking
        on = api.get_client().get_boolean_value("dataservice-read-canary", False,
                                                EvaluationContext(targeting_key=request_id))

    Answers: variant ``on``/``off``; reason ``SPLIT`` for 0 < p < 100, ``STATIC`` at 100 %,
    ``DISABLED`` at 0 % (pending or rolled back, with the trigger in ``flag_metadata``).
    ``flag_metadata`` carries ``stage``, ``percent`` and ``status``. Errors: ``FLAG_NOT_FOUND``,
    ``TYPE_MISMATCH``, ``TARGETING_KEY_MISSING`` (no unit at 0 < p < 100), ``PARSE_ERROR`` (an
    invalid env override, named in the message; ignored on a rolled-back flag, which stays
    off), ``INVALID_CONTEXT`` (a unit the provider cannot bucket: text that is not valid
    Unicode, e.g. a lone surrogate from JSON, never hashed, never a crash; or a value that is
    neither text nor a number); OpenFeature then returns the caller's default. A store that
    cannot be read for longer than ``max_staleness`` serves 0 % (``False``, ``DISABLED``, the
    reason in ``flag_metadata["unavailable"]``), whatever default the caller passed.

    **The policy.** Give ``telemetry`` (what :func:`~openfeature_canary.setup_telemetry`
    returns) and the provider runs the policy on this process's traffic: it reads the
    signals from ``telemetry.reader``, brings its own
    :class:`~openfeature.contrib.hook.canary.MetricsHook` (``get_provider_hooks``; do not add
    another for the same meter provider) and exposes the controller's metrics. ``signals`` is
    for another :class:`~openfeature_canary.signals.SignalSource` (with ``meter_provider`` for
    the metrics). Without either, the provider only serves: an operator (or the process that
    runs the policy) moves the rollout.

    **Tracking.** ``client.track(event, ctx, TrackingEventDetails(value=…))`` reaches
    :meth:`track`: for every flag whose guards read ``event`` and that serves a split, the event
    counts in the cohort ``ctx``'s unit is in (docs/metrics.md, "Tracked events"), on the meter
    provider of ``telemetry``/``meter_provider`` (else OpenTelemetry's global one).

    **Effects.** Every transition this process makes is persisted, then served (with
    ``PROVIDER_CONFIGURATION_CHANGED`` and ``flags_changed``), then its event goes to ``events``
    (by default a durable outbox drained to the plan's ingest URL) and the reports to
    ``reports_dir`` (by default the plan's).

    **Lifecycle.** The constructor reads the plan file and nothing else. ``initialize`` reads
    the store (``ProviderNotReadyError`` naming it when it cannot be read, ``ProviderFatalError``
    when its folder does not exist), writes ``canary_plan.md`` when the policy runs here, and
    starts the background thread (``background=False`` leaves ticking to the caller, e.g. a
    virtual-time driver). A store that later cannot be read emits ``PROVIDER_STALE`` (the last
    known state is served for up to ``max_staleness`` seconds), then ``PROVIDER_ERROR`` and the
    old path; ``PROVIDER_READY`` when it is readable again. :meth:`flush_events` and
    :meth:`shutdown` are the ways to drain and stop.

    **Status page.** ``status_page_port`` (``0``: a free port) serves the read-only live page
    (:mod:`openfeature_canary.web`) on ``status_page_host`` (``127.0.0.1``) while this process
    decides: in a fleet, the lease holder binds it and a new decider takes it over.

    The evaluation path reads an immutable snapshot: no I/O, no lock.
    """

    def __init__(
        self,
        plan: RolloutPlan | str | Path,
        *,
        store: StateStore | str | None = None,
        clock: Clock | None = None,
        telemetry: Telemetry | None = None,
        signals: SignalSource | None = None,
        meter_provider: MeterProvider | None = None,
        environ: Mapping[str, str] | None = None,
        events: EventSink | None = None,
        reports_dir: str | Path | None = None,
        background: bool = True,
        refresh_interval: float | None = None,
        max_staleness: float = 10.0,
        name: str = "CanaryProvider",
        fleet: bool | None = None,
        decide: bool = True,
        lease_ttl: float | None = None,
        status_page_port: int | None = None,
        status_page_host: str = DEFAULT_HOST,
    ) -> None:
        super().__init__()
        check_arguments(telemetry, signals, meter_provider, max_staleness, refresh_interval)
        if fleet and telemetry is None:
            raise ValueError("CanaryProvider: fleet=True needs telemetry= (its signals publish)")
        self.plan = plan if isinstance(plan, RolloutPlan) else load_plan(plan)
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        options = EngineOptions(
            store=store,
            clock=clock,
            telemetry=telemetry,
            signals=signals,
            meter_provider=meter_provider,
            environ=self._environ,
            events=events,
            reports_dir=reports_dir,
            ingest_metrics=True,
            refresh_interval=refresh_interval,
            fleet=fleet,
            decide=decide,
            lease_ttl=lease_ttl,
            rounds=background,
        )
        try:
            self.engine = build_engine(
                self.plan,
                options,
                serve=self._serve,
                on_poll=self._rebuild,
                on_health=self._on_store_health,
            )
        except ValueError as exc:
            raise ValueError(f"CanaryProvider: {exc}") from exc
        engine = self.engine
        self.rollout, self.runner, self.fleet = engine.rollout, engine.runner, engine.fleet
        self.reports = engine.reports
        self.meter_provider = telemetry.meter_provider if telemetry is not None else meter_provider
        self._background = background
        self._metadata = Metadata(name=name)
        self._swap_lock = threading.Lock()
        hold_locks_across_fork(self, "_swap_lock")  # a child must be able to serve changes
        self._health = StoreHealth(max_staleness)
        self._answers: Mapping[str, Answers] = MappingProxyType(
            rebuilt({}, self._states(), self.plan, self._environ, None)[0]
        )
        #: The live status page, served while this process decides (docs/status-page.md).
        self.status_page = (
            None
            if status_page_port is None
            else DecidingStatusPage(self.rollout, port=status_page_port, host=status_page_host)
        )
        #: ``track()``'s attribution (None: no flag has guards, nothing is ever recorded).
        self._tracker = tracker_for(self.plan, self.meter_provider or get_meter_provider())
        self._hooks = self._instrument(telemetry)

    def _instrument(self, telemetry: Telemetry | None) -> list[Hook]:
        """The store-health gauge on the meter provider, and the provider's hooks: a
        ``MetricsHook`` on the telemetry's meter provider (none without ``telemetry``)."""
        if self.meter_provider is not None:
            self.meter_provider.get_meter("openfeature_canary.provider").create_observable_gauge(
                "canary.store.health",
                [self._health.observe],
                description="1 for how the state store reads now: ready, stale (the last "
                "known state is served) or error (every flag serves the old path)",
            )
        if telemetry is None:
            return []
        from openfeature.contrib.hook.canary import MetricsHook

        return [MetricsHook(meter_provider=telemetry.meter_provider)]

    # ------------------------------------------------------------------ lifecycle

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Read the store, write ``canary_plan.md`` (policy here), start background work.

        Once the store is read and served, the events of transitions that a process persisted
        but died before queueing are queued (see
        :meth:`~openfeature_canary.policy.Pipeline.reconcile`).

        Raises ``ProviderFatalError`` when the store's folder does not exist and
        ``ProviderNotReadyError`` when the store cannot be read; in the latter case the
        background thread still starts, and the provider emits ``PROVIDER_READY`` once the
        store can be read (meanwhile every flag serves the old path).
        """
        store = self.rollout.store
        if isinstance(store, FileStateStore) and not store.path.parent.is_dir():
            raise ProviderFatalError(
                f"{store.url}: folder {store.path.parent} does not exist; create it or fix "
                "the store URL"
            )
        if self.status_page is not None:
            self.status_page.start()
        if self._tracker is not None:  # the answers decide what is recorded (none while unread)
            self._tracker.live = True
        try:
            self.rollout.load()
        except StateStoreError as exc:
            self._health.unreadable(exc)
            self._rebuild()
            self.engine.start(background=self._background)
            raise ProviderNotReadyError(str(exc)) from exc
        self._health.read()
        self._rebuild()
        self.engine.reconcile_events()
        if self.rollout.policy is not None and self.reports is not None:
            try:
                self.reports.write_plan(render_plan_markdown(self.plan))
            except Exception as exc:  # a report must not stop a service from serving
                log.error("openfeature-canary: cannot write canary_plan.md: %s", exc)
        self.engine.start(background=self._background)

    def shutdown(self) -> None:
        """Stop background work (undelivered telemetry events stay in the outbox) and give
        the decider lease up, so that another process takes over at once."""
        if self._tracker is not None:
            self._tracker.live = False
        if self.status_page is not None:
            self.status_page.stop()
        self.engine.stop()

    def flush_events(self, timeout_s: float = 5.0) -> bool:
        """Deliver the queued telemetry events now; True when none is left undelivered.

        Blocks for at most about ``timeout_s`` seconds.
        """
        sender = self.engine.sender
        return True if sender is None else sender.flush(timeout_s)

    @property
    def outbox(self) -> EventQueue | None:
        """The durable outbox of this provider's events (``None`` with ``events=``)."""
        sender = self.engine.sender
        return None if sender is None else sender.outbox

    def get_metadata(self) -> Metadata:
        """Provider metadata (``name``)."""
        return self._metadata

    def get_provider_hooks(self) -> list[Hook]:
        """With ``telemetry=``: the MetricsHook that records every evaluation of this
        provider's flags (the signals the policy reads need it)."""
        return list(self._hooks)

    def controller(self, flag_key: str) -> Controller:
        """The flag's controller (commands, ``tick()``, ``state``); ``UnknownFlagError`` if
        the plan has no such flag."""
        return self.rollout.controller(flag_key)

    def view(self, flag_key: str) -> FlagView:
        """What the provider currently serves for ``flag_key`` (percent, status, override)."""
        answers = self._answers.get(flag_key)
        if answers is None:
            raise UnknownFlagError(f"unknown flag {flag_key!r}")
        return answers.view

    # ------------------------------------------------------------------ the snapshot

    def _serve(self, _old: RolloutState, new: RolloutState) -> None:
        """Step 2 of the pipeline: serve a persisted state (and announce it)."""
        self._swap({new.flag_key: new})

    def _rebuild(self) -> None:
        """Rebuild every view from the controllers' states and the environment."""
        self._swap(self._states())

    def _states(self) -> dict[str, RolloutState]:
        return {ctl.key: ctl.state for ctl in self.rollout.controllers()}

    def _swap(self, states: Mapping[str, RolloutState]) -> None:
        with self._swap_lock:  # writers only: evaluations never wait
            new, changed = rebuilt(
                self._answers, states, self.plan, self._environ, self._health.unavailable
            )
            if not changed:
                return
            self._answers = MappingProxyType(new)
        if log.isEnabledFor(logging.DEBUG):  # every process serves: the decider logs at INFO
            for key in changed:
                view = new[key].view
                log.debug("%s now serves %s%% (%s)", key, view.percent, view.status)
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=changed, message="canary rollout changed")
        )

    def _on_store_health(self, error: StateStoreError | None) -> None:
        """The runner read the store (``error=None``) or could not: STALE, ERROR, READY."""
        health = self._health
        if error is None:
            if health.read():
                self._rebuild()
                self.engine.reconcile_events()
                log.warning("openfeature-canary: %s is readable again", self.rollout.store.url)
                self.emit_provider_ready(ProviderEventDetails(message="state store readable"))
            return
        stale, erred = health.failed(error, self.rollout.clock.now())
        if stale:
            log.error("openfeature-canary: %s; serving the last known state", error)
            self.emit_provider_stale(
                ProviderEventDetails(
                    message=f"{error}; serving the last known state for up to "
                    f"{health.max_staleness:g}s"
                )
            )
        if erred:
            self._rebuild()
            log.critical("openfeature-canary: %s; every flag serves the old path (0 %%)", error)
            self.emit_provider_error(
                ProviderEventDetails(message=health.unavailable, error_code=ErrorCode.GENERAL)
            )

    # ------------------------------------------------------------------ tracking

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        """Count a tracked event in the cohort the context's unit is in, for every flag whose
        guards read it and that serves a split now (docs/metrics.md, "Tracked events").

        The cohort is the one evaluation gives the same context (same unit, same snapshot).
        ``details.value``, when a finite number >= 0, is added to the cohort's sums. Never
        raises: an event that cannot be attributed (no unit, a unit that cannot be bucketed,
        provider not initialised) is dropped and counted in ``canary.tracking.dropped``.
        """
        tracker = self._tracker
        if tracker is not None:
            tracker.track(
                self._answers, tracking_event_name, evaluation_context, tracking_event_details
            )

    # ------------------------------------------------------------------ resolution

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Resolve a canary flag (see the class docstring for the answers)."""
        answers = self._answers.get(flag_key)
        if answers is None:
            raise FlagNotFoundError(f"flag {flag_key!r} is not in the canary plan")
        if answers.fixed is not None:
            return answers.fixed
        if evaluation_context is None:
            unit: Any = None
        elif answers.by_key:
            unit = evaluation_context.targeting_key
        else:
            unit = evaluation_context.attributes.get(answers.view.bucket_by)
        if unit is None or unit == "":
            return missing_unit(answers, default_value)
        if type(unit) is not str and (type(unit) is bool or not isinstance(unit, int | float)):
            return not_a_unit(answers, default_value, unit)
        try:
            slot = answers.bucket(unit)
        except ValueError as exc:  # UnitEncodingError: never hash text mmh3 cannot take
            return invalid_unit(answers, default_value, str(exc))
        return answers.on if slot < answers.view.basis_points else answers.off

    async def resolve_boolean_details_async(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Async twin of :meth:`resolve_boolean_details` (it never blocks)."""
        return self.resolve_boolean_details(flag_key, default_value, evaluation_context)

    def _type_mismatch(self, flag_key: str, wanted: str) -> Any:
        if flag_key not in self._answers:
            raise FlagNotFoundError(f"flag {flag_key!r} is not in the canary plan")
        raise TypeMismatchError(f"canary flag {flag_key!r} is boolean, not {wanted}")

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        """Canary flags are boolean: ``TYPE_MISMATCH`` (or ``FLAG_NOT_FOUND``)."""
        return self._type_mismatch(flag_key, "string")  # type: ignore[no-any-return]

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        """Canary flags are boolean: ``TYPE_MISMATCH`` (or ``FLAG_NOT_FOUND``)."""
        return self._type_mismatch(flag_key, "integer")  # type: ignore[no-any-return]

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Canary flags are boolean: ``TYPE_MISMATCH`` (or ``FLAG_NOT_FOUND``)."""
        return self._type_mismatch(flag_key, "float")  # type: ignore[no-any-return]

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Any]:
        """Canary flags are boolean: ``TYPE_MISMATCH`` (or ``FLAG_NOT_FOUND``)."""
        return self._type_mismatch(flag_key, "object")  # type: ignore[no-any-return]
