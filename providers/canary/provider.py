"""``CanaryProvider``: an OpenFeature provider that serves canary flags from a rollout plan."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import (
    ErrorCode,
    FlagNotFoundError,
    ProviderFatalError,
    ProviderNotReadyError,
    TypeMismatchError,
)
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.hook import Hook
from openfeature.provider import AbstractProvider, Metadata
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

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
from openfeature_canary.bucketing import unit_hasher
from openfeature_canary.events import (
    EventQueue,
    EventSink,
    ReportWriter,
    TelemetrySender,
    outbox_for,
    render_plan_markdown,
    sender_for_plan,
)
from openfeature_canary.instrumentation import IngestInstruments
from openfeature_canary.policy import (
    DEFAULT_LEASE_TTL_S,
    Autopilot,
    BackgroundRunner,
    FlagView,
    Fleet,
    Rollout,
    build_view,
)
from openfeature_canary.signals import (
    FleetSignalSource,
    InProcessSignalSource,
    Publisher,
    SignalSource,
    new_process_id,
)
from openfeature_canary.stores import (
    FileStateStore,
    FleetStore,
    MemoryStateStore,
    open_store,
)
from openfeature_canary.telemetry import Telemetry

__all__ = ["CanaryProvider"]

log = logging.getLogger("openfeature_canary")

_ERROR = Reason.ERROR
_REASONS: Mapping[str, Reason] = {
    "STATIC": Reason.STATIC,
    "DISABLED": Reason.DISABLED,
    "ERROR": Reason.ERROR,
}


class _Answers:
    """Preallocated results for one view: evaluations return these without allocating."""

    __slots__ = ("bucket", "by_key", "fixed", "meta", "newest", "off", "on", "view")

    def __init__(self, view: FlagView) -> None:
        self.view = view
        #: The newest state version these answers stand for (a state change that does not
        #: change the answers, e.g. a judged gate window, only moves this forward).
        self.newest = view.version
        self.meta = view.metadata
        self.by_key = view.bucket_by == "targetingKey"
        self.on = FlagResolutionDetails(True, None, None, Reason.SPLIT, "on", view.metadata)
        self.off = FlagResolutionDetails(False, None, None, Reason.SPLIT, "off", view.metadata)
        self.bucket: Callable[[object], int] = unit_hasher(view.key, view.scheme)
        self.fixed: FlagResolutionDetails[bool] | None = None
        fixed = view.fixed
        if fixed is not None:
            code = ErrorCode(fixed.error_code) if fixed.error_code else None
            self.fixed = FlagResolutionDetails(
                fixed.value,
                code,
                fixed.error_message,
                _REASONS[fixed.reason],
                fixed.variant,
                view.metadata,
            )


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
    off), ``GENERAL`` (a unit that is not valid Unicode text, e.g. a lone surrogate from JSON:
    never hashed, never a crash); OpenFeature then returns the caller's default. A store that
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
        lease_ttl: float = DEFAULT_LEASE_TTL_S,
    ) -> None:
        super().__init__()
        if telemetry is not None and not isinstance(telemetry, Telemetry):
            raise TypeError(
                "CanaryProvider: telemetry= takes what setup_telemetry() returns, got "
                f"{type(telemetry).__name__}"
            )
        if telemetry is not None and signals is not None:
            raise ValueError("CanaryProvider: give telemetry= or signals=, not both")
        if telemetry is not None and meter_provider not in (None, telemetry.meter_provider):
            raise ValueError(
                "CanaryProvider: meter_provider= differs from telemetry.meter_provider; "
                "give telemetry= alone"
            )
        if max_staleness < 0 or (refresh_interval is not None and refresh_interval <= 0):
            raise ValueError(
                "CanaryProvider: max_staleness must be >= 0 and refresh_interval > 0, got "
                f"{max_staleness} and {refresh_interval}"
            )
        self.plan = plan if isinstance(plan, RolloutPlan) else load_plan(plan)
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        store_obj = (
            store
            if store is not None and not isinstance(store, str)
            else open_store(store if store is not None else (self.plan.store or "memory://"))
        )
        if refresh_interval is None:
            # A store that pushes its changes makes a poll a read of memory: poll often, so a
            # rollback reaches every replica within ~0.1 s; a file is read, so poll less.
            pushed = store_obj.url.startswith(("redis://", "rediss://"))
            refresh_interval = 0.1 if pushed else 0.5
        self._owns_store = store is None or isinstance(store, str)
        self.fleet: Fleet | None = None
        may_decide = None
        if telemetry is not None:
            meter_provider = telemetry.meter_provider
            # The snapshot ring keeps what the plan's longest window needs, no more.
            local = InProcessSignalSource(telemetry.reader, plan=self.plan)
            signals = local
            if _fleet_wanted(fleet, store_obj):
                assert isinstance(store_obj, FleetStore)
                process_id = new_process_id()
                self.fleet = Fleet(
                    store_obj,
                    process_id,
                    publisher=Publisher(local, store_obj, process_id),
                    decide=decide,
                    lease_ttl_s=lease_ttl,
                )
                signals = FleetSignalSource(store_obj, plan=self.plan)
                may_decide = self.fleet.round
        elif fleet:
            raise ValueError("CanaryProvider: fleet=True needs telemetry= (its signals publish)")
        self.meter_provider = meter_provider
        reports = ReportWriter(reports_dir or self.plan.reports.dir)
        self._sender: TelemetrySender | None = None
        if events is None:
            self._sender = sender_for_plan(
                self.plan,
                outbox_for(store_obj, reports.dir),
                environ=self._environ,
                counters=IngestInstruments(meter_provider=meter_provider),
            )
            events = self._sender
        self.reports = reports
        self.rollout = Rollout(
            self.plan,
            store=store_obj,
            clock=clock,
            policy=Autopilot(signals, may_decide=may_decide) if signals is not None else None,
            serve=self._serve,
            events=events,
            reports=reports,
            meter_provider=meter_provider,
        )
        self._background = background
        self._max_staleness = max_staleness
        self._metadata = Metadata(name=name)
        self._swap_lock = threading.Lock()
        hold_locks_across_fork(self, "_swap_lock")  # a child must be able to serve changes
        self._unavailable: str | None = None
        self._failing_since: float | None = None
        self._health = "not_ready"
        self._answers: Mapping[str, _Answers] = MappingProxyType(
            {
                ctl.key: _Answers(build_view(ctl.flag, ctl.state, self._environ))
                for ctl in self.rollout.controllers()
            }
        )
        self.runner = BackgroundRunner(
            self.rollout,
            interval=refresh_interval,
            on_poll=self._rebuild,
            on_health=self._on_store_health,
        )
        if meter_provider is not None:
            meter_provider.get_meter("openfeature_canary.provider").create_observable_gauge(
                "canary.store.health",
                [self._store_health],
                description="1 for how the state store reads now: ready, stale (the last "
                "known state is served) or error (every flag serves the old path)",
            )
        self._hooks: list[Hook] = []
        if telemetry is not None:
            from openfeature.contrib.hook.canary import MetricsHook

            self._hooks = [MetricsHook(meter_provider=telemetry.meter_provider)]

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
        try:
            self.rollout.load()
        except StateStoreError as exc:
            self._health = "error"
            self._unavailable = f"{exc}; serving the old path until it can be read"
            self._rebuild()
            if self._sender is not None:
                self._sender.start()  # what earlier processes queued still goes out
            if self._background:
                self.runner.start()
            raise ProviderNotReadyError(str(exc)) from exc
        self._health = "ready"
        self._rebuild()
        self._reconcile_events()
        if self.rollout.policy is not None:
            try:
                self.reports.write_plan(render_plan_markdown(self.plan))
            except Exception as exc:  # a report must not stop a service from serving
                log.error("openfeature-canary: cannot write canary_plan.md: %s", exc)
        if self._sender is not None:
            self._sender.start()
        if self._background:
            self.runner.start()

    def _reconcile_events(self) -> None:
        """Queue the events of transitions a process persisted but died before queueing
        (:meth:`~openfeature_canary.policy.Pipeline.reconcile`), into this provider's own
        durable outbox, which drops what it has pending or delivered recently. A sink given
        with ``events=`` is not asked: it may not drop what it has seen."""
        if self._sender is not None:
            self.rollout.reconcile_events()

    def shutdown(self) -> None:
        """Stop background work (undelivered telemetry events stay in the outbox) and give
        the decider lease up, so that another process takes over at once."""
        self.runner.stop()
        if self.fleet is not None:
            self.fleet.release()
        close = getattr(self.rollout.store, "close", None)
        if self._owns_store and callable(close):  # a store it opened (a redis listener)
            close()
        if self._sender is not None:
            self._sender.stop()

    def flush_events(self, timeout_s: float = 5.0) -> bool:
        """Deliver the queued telemetry events now; True when none is left undelivered.

        Blocks for at most about ``timeout_s`` seconds.
        """
        if self._sender is None:
            return True
        return self._sender.flush(timeout_s)

    @property
    def outbox(self) -> EventQueue | None:
        """The durable outbox of this provider's events (``None`` with ``events=``)."""
        return None if self._sender is None else self._sender.outbox

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
        self._swap({ctl.key: ctl.state for ctl in self.rollout.controllers()})

    def _swap(self, states: Mapping[str, RolloutState]) -> None:
        with self._swap_lock:  # writers only: evaluations never wait
            old = self._answers
            new = dict(old)
            changed: list[str] = []
            for key, state in states.items():
                previous = old.get(key)
                if previous is not None and state.version < previous.newest:
                    continue  # a served view never goes back to an older state
                view = build_view(
                    self.plan.flag(key), state, self._environ, unavailable=self._unavailable
                )
                if previous is not None and replace(view, version=previous.view.version) == (
                    previous.view
                ):
                    # The same answers: nothing to serve anew, nothing to announce.
                    previous.newest = max(previous.newest, state.version)
                    continue
                new[key] = _Answers(view)
                changed.append(key)
            if not changed:
                return
            self._answers = MappingProxyType(new)
        for key in changed:
            view = new[key].view
            log.info("%s now serves %s%% (%s)", key, view.percent, view.status)
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=changed, message="canary rollout changed")
        )

    def _store_health(self, _options: CallbackOptions) -> Iterable[Observation]:
        """The ``canary.store.health`` gauge: 1 for the current health, 0 for the others."""
        current = self._health
        for health in ("not_ready", "ready", "stale", "error"):
            yield Observation(int(health == current), {"canary.store.health": health})

    def _on_store_health(self, error: StateStoreError | None) -> None:
        """The runner read the store (``error=None``) or could not: STALE, ERROR, READY."""
        now = self.rollout.clock.now()
        if error is None:
            self._failing_since = None
            if self._health != "ready":
                self._health, self._unavailable = "ready", None
                self._rebuild()
                self._reconcile_events()
                log.warning("openfeature-canary: %s is readable again", self.rollout.store.url)
                self.emit_provider_ready(ProviderEventDetails(message="state store readable"))
            return
        if self._failing_since is None:
            self._failing_since = now
        if self._health == "ready" and self._max_staleness > 0:
            self._health = "stale"
            log.error("openfeature-canary: %s; serving the last known state", error)
            self.emit_provider_stale(
                ProviderEventDetails(
                    message=f"{error}; serving the last known state for up to "
                    f"{self._max_staleness:g}s"
                )
            )
        if self._health != "error" and now - self._failing_since >= self._max_staleness:
            self._health = "error"
            self._unavailable = f"{error}; serving the old path until it can be read"
            self._rebuild()
            log.critical("openfeature-canary: %s; every flag serves the old path (0 %%)", error)
            self.emit_provider_error(
                ProviderEventDetails(message=self._unavailable, error_code=ErrorCode.GENERAL)
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
            return self._missing_unit(answers.view, default_value, answers)
        try:
            slot = answers.bucket(unit)
        except ValueError as exc:  # UnitEncodingError: never hash text mmh3 cannot take
            return FlagResolutionDetails(
                default_value, ErrorCode.GENERAL, str(exc), _ERROR, None, answers.meta
            )
        return answers.on if slot < answers.view.basis_points else answers.off

    async def resolve_boolean_details_async(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Async twin of :meth:`resolve_boolean_details` (it never blocks)."""
        return self.resolve_boolean_details(flag_key, default_value, evaluation_context)

    @staticmethod
    def _missing_unit(
        view: FlagView, default_value: bool, answers: _Answers
    ) -> FlagResolutionDetails[bool]:
        what = "targeting key" if answers.by_key else f"context attribute {view.bucket_by!r}"
        return FlagResolutionDetails(
            default_value,
            ErrorCode.TARGETING_KEY_MISSING,
            f"{view.key} is at {view.percent:g}% and buckets by the {what}, which is missing",
            _ERROR,
            None,
            answers.meta,
        )

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


def _fleet_wanted(fleet: bool | None, store: StateStore) -> bool:
    """Fleet mode: asked for, or by default for a store other processes share."""
    if fleet is not None:
        if fleet and not isinstance(store, FleetStore):
            raise ValueError(f"CanaryProvider: fleet=True needs a shared store, got {store.url}")
        return fleet
    return isinstance(store, FleetStore) and not isinstance(store, MemoryStateStore)
