"""The one assembly: a plan and options -> store, policy, rollout, sender, runner, fleet.

The provider (``CanaryProvider``), the ``controller`` command and the operator commands of the
command line all build their engine here, so a part is wired one way wherever it runs::

    engine = build_engine(plan, EngineOptions(store="file:///var/lib/canary/state.json"))
    engine.rollout.load()                       # read the store
    engine.start()                              # the event sender and the background runner
    ...
    engine.stop()

Building does no I/O beyond opening the store's client (no read, no file, no thread): the
provider's constructor relies on it. The engine imports nothing from ``providers/`` or
``hooks/``; what a plug-in adds (a provider's view swap, its health) is handed in as
callables.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.metrics import MeterProvider

from openfeature_canary.clock import Clock
from openfeature_canary.events import (
    EventSink,
    ReportWriter,
    TelemetrySender,
    outbox_for,
    sender_for_plan,
)
from openfeature_canary.instrumentation import IngestInstruments
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.policy import (
    Autopilot,
    BackgroundRunner,
    Fleet,
    Rollout,
    StoreHealth,
    TransitionListener,
)
from openfeature_canary.signals import (
    FleetSignalSource,
    InProcessSignalSource,
    Publisher,
    SignalSource,
    new_process_id,
)
from openfeature_canary.stores import FleetStore, MemoryStateStore, StateStore, open_store
from openfeature_canary.telemetry import Telemetry

__all__ = ["Engine", "EngineOptions", "build_engine"]


@dataclass(frozen=True)
class EngineOptions:
    """How to assemble an engine (every field has the provider's default).

    ``store``: a :class:`StateStore` or URL (``None``: the plan's, else ``memory://``).
    ``telemetry``: run the policy on this process's traffic (its in-process signals; in a
    fleet, published for the decider). ``signals``: another source for the policy (the
    ``controller`` command's Prometheus); neither: no policy here, unless ``fleet=True`` (a
    process that only decides, on the records the fleet publishes). ``fleet``: ``None`` picks
    fleet mode for a store other processes share. ``events``: a sink for the ingest's events
    (``None``: a durable sender over the store's outbox); ``effects=False``: neither events nor
    reports (a read-only command). ``ingest_metrics``: count the sender's posts.
    """

    store: StateStore | str | None = None
    clock: Clock | None = None
    telemetry: Telemetry | None = None
    signals: SignalSource | None = None
    meter_provider: MeterProvider | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    events: EventSink | None = None
    reports_dir: str | Path | None = None
    effects: bool = True
    ingest_metrics: bool = False
    refresh_interval: float | None = None
    fleet: bool | None = None
    decide: bool = True
    #: ``None``: the default lease, checked against how often it is renewed.
    lease_ttl: float | None = None
    #: Whether runner rounds (every ``refresh_interval``) run, and so renew the lease; a
    #: provider with ``background=False`` renews it only at its policy ticks.
    rounds: bool = True


@dataclass
class Engine:
    """The assembled parts of one process's rollout (see :func:`build_engine`)."""

    plan: RolloutPlan
    store: StateStore
    rollout: Rollout
    runner: BackgroundRunner
    #: The durable sender this engine built (``None`` with ``events=`` or ``effects=False``).
    sender: TelemetrySender | None
    reports: ReportWriter | None
    fleet: Fleet | None
    #: True when the engine opened the store from a URL (and closes it on :meth:`stop`).
    owns_store: bool

    def start(self, *, background: bool = True) -> None:
        """Start the event sender and (``background``) the runner's thread."""
        if self.sender is not None:
            self.sender.start()  # what earlier processes queued still goes out
        if background:
            self.runner.start()

    def reconcile_events(self) -> int:
        """Queue the events of transitions a process persisted but died before queueing, into
        this engine's own durable outbox (which drops what it has seen); a sink given with
        ``events=`` is not asked: it may not drop what it has seen. How many were queued."""
        return self.rollout.reconcile_events() if self.sender is not None else 0

    def stop(self) -> None:
        """Stop the runner, give the decider lease up (another process takes over at once),
        close a store it opened, stop the sender (undelivered events stay in the outbox)."""
        self.runner.stop()
        if self.fleet is not None:
            self.fleet.release()
        close = getattr(self.store, "close", None)
        if self.owns_store and callable(close):  # a store it opened (a redis listener)
            close()
        if self.sender is not None:
            self.sender.stop()


def build_engine(
    plan: RolloutPlan,
    options: EngineOptions | None = None,
    *,
    serve: TransitionListener | None = None,
    on_poll: Callable[[], None] | None = None,
    on_health: StoreHealth | None = None,
) -> Engine:
    """Assemble store, policy, fleet, sender, reports, rollout and runner from ``plan``.

    ``serve`` is the pipeline's step 2 (a provider's view swap); ``on_poll`` and
    ``on_health`` are the runner's (see :class:`~openfeature_canary.policy.BackgroundRunner`).
    Raises :class:`~openfeature_canary.StateStoreError` for a store URL that cannot be opened
    and ``ValueError`` for options that cannot be honoured together.
    """
    opts = options or EngineOptions()
    owns_store = opts.store is None or isinstance(opts.store, str)
    store = (
        opts.store
        if opts.store is not None and not isinstance(opts.store, str)
        else open_store(opts.store if opts.store is not None else (plan.store or "memory://"))
    )
    meter_provider = opts.meter_provider
    if opts.telemetry is not None:
        meter_provider = opts.telemetry.meter_provider
    interval = _interval(opts, store)
    renew_every = interval if opts.rounds else _shortest_tick(plan)
    source, fleet = _policy_parts(plan, store, opts, renew_every)
    reports = ReportWriter(opts.reports_dir or plan.reports.dir) if opts.effects else None
    sender: TelemetrySender | None = None
    events = opts.events
    if events is None and reports is not None:
        counters = IngestInstruments(meter_provider=meter_provider) if opts.ingest_metrics else None
        sender = sender_for_plan(
            plan, outbox_for(store, reports.dir), environ=opts.environ, counters=counters
        )
        events = sender
    rollout = Rollout(
        plan,
        store=store,
        clock=opts.clock,
        policy=Autopilot(source) if source is not None else None,
        serve=serve,
        events=events,
        reports=reports,
        meter_provider=meter_provider,
        fleet=fleet,
    )
    runner = BackgroundRunner(
        rollout,
        interval=interval,
        on_poll=on_poll,
        on_health=on_health,
        renew=fleet.renew if fleet is not None else None,
    )
    return Engine(plan, store, rollout, runner, sender, reports, fleet, owns_store)


def _policy_parts(
    plan: RolloutPlan, store: StateStore, opts: EngineOptions, renew_every: float
) -> tuple[SignalSource | None, Fleet | None]:
    """The policy's signal source and this process's part in a fleet (or ``None``s)."""
    if opts.telemetry is not None:
        if opts.signals is not None:
            raise ValueError("give telemetry= or signals=, not both")
        # The snapshot ring keeps what the plan's longest window needs, no more.
        local = InProcessSignalSource(
            opts.telemetry.reader, plan=plan, meter_provider=opts.telemetry.meter_provider
        )
        if not fleet_wanted(opts.fleet, store):
            return local, None
        assert isinstance(store, FleetStore)
        process_id = new_process_id()
        fleet = Fleet(
            store,
            process_id,
            publisher=Publisher(local, store, process_id),
            decide=opts.decide,
            lease_ttl_s=opts.lease_ttl,  # None: the default; checked against its renewal
            renew_every_s=renew_every,
        )
        return FleetSignalSource(store, plan=plan), fleet
    if not opts.fleet:
        return opts.signals, None
    # A process that only decides (the controller command): no traffic of its own.
    if isinstance(store, MemoryStateStore) or not isinstance(store, FleetStore):
        raise ValueError(f"{store.url}: a fleet needs a store its processes share")
    fleet = Fleet(
        store,
        new_process_id(),
        decide=opts.decide,
        lease_ttl_s=opts.lease_ttl,
        renew_every_s=renew_every,
    )
    source = opts.signals if opts.signals is not None else FleetSignalSource(store, plan=plan)
    return source, fleet


def fleet_wanted(fleet: bool | None, store: StateStore) -> bool:
    """Fleet mode: asked for, or by default for a store other processes share."""
    if fleet is not None:
        if fleet and not isinstance(store, FleetStore):
            raise ValueError(f"fleet=True needs a shared store, got {store.url}")
        return fleet
    return isinstance(store, FleetStore) and not isinstance(store, MemoryStateStore)


def _shortest_tick(plan: RolloutPlan) -> float:
    """How often the lease is renewed without a runner: at the policy ticks."""
    return min((flag.tick_s for flag in plan.flags.values()), default=10.0)


def _interval(opts: EngineOptions, store: StateStore) -> float:
    if opts.refresh_interval is not None:
        return opts.refresh_interval
    # A store that pushes its changes makes a poll a read of memory: poll often, so a
    # rollback reaches every replica within ~0.1 s; a file is read, so poll less.
    return 0.1 if store.url.startswith(("redis://", "rediss://")) else 0.5
