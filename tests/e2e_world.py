"""A whole rollout in virtual time, with real components, for the end-to-end tests.

Real: the OpenFeature client, CanaryProvider, MetricsHook, the OpenTelemetry SDK and its
in-process reader, InProcessSignalSource, the policy, the outbox and an ingest server on
127.0.0.1. Simulated: the service (latency and errors per cohort) and the clock.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.event import EventDetails, ProviderEvent

from openfeature_canary import ManualClock, RolloutPlan, StateStore, Status
from openfeature_canary.demo._ingest_server import IngestServer
from openfeature_canary.demo._simulation import Fault, SimulatedService, Simulation
from openfeature_canary.telemetry import Telemetry, setup_telemetry

START = 1_800_000_000.0
FLAG = "dataservice-read-canary"
PHASE2 = "dataservice-user-read-canary"


@dataclass(repr=False)
class World:
    plan: RolloutPlan
    clock: ManualClock
    telemetry: Telemetry
    server: IngestServer
    provider: CanaryProvider
    service: SimulatedService
    sim: Simulation
    reports: Path
    events: list[EventDetails] = field(default_factory=list)
    #: Every decision of every flag: (flag, action, reason, virtual seconds since START).
    decisions: list[tuple[str, str, str, float]] = field(default_factory=list)

    def __repr__(self) -> str:
        # Short on purpose: the rollout formats its observers' repr (our bound _record) on
        # every commit, and the generated repr (plan, every event and decision so far) grows
        # with the run: quadratic, minutes of CPU for a two-day run on a loaded machine.
        return f"World(at=+{self.clock.now() - START:.0f}s, decisions={len(self.decisions)})"

    def _record(self, old: Any, new: Any) -> None:
        fresh = new.entries_after(old)
        for e in fresh:
            self.decisions.append((new.flag_key, e.action, e.reason, e.at - START))

    @property
    def rollout(self) -> Any:
        return self.provider.rollout

    def state(self, flag: str = FLAG) -> Any:
        return self.provider.controller(flag).state

    def promote_to(self, stage: int, flag: str = FLAG) -> None:
        """Operator: start and promote until ``stage`` (no waiting for gates)."""
        ctl = self.provider.controller(flag)
        ctl.start()
        while ctl.state.stage < stage:
            ctl.promote()

    def run_for(self, seconds: float) -> None:
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            self.sim.step()

    def run_until_status(self, status: Status, max_s: float, flag: str = FLAG) -> float | None:
        """Step until ``flag`` has ``status``; the virtual time it happened, or None."""
        end = self.clock.now() + max_s
        while self.clock.now() < end:
            self.sim.step()
            if self.state(flag).status is status:
                return self.clock.now()
        return None

    def close(self) -> None:
        # Another world's api.shutdown() may already have dropped the handler.
        with contextlib.suppress(ValueError):
            api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, self.events.append)
        self.provider.shutdown()
        api.clear_hooks()
        api.shutdown()
        self.server.stop()
        self.telemetry.shutdown()


def make_world(
    plan: RolloutPlan,
    tmp_path: Path,
    *,
    fault: Fault | None = None,
    store: str | StateStore = "memory://",
    max_rps: float = 100.0,
    min_canary_rps: float = 2.0,
    seed: int = 7,
) -> World:
    clock = ManualClock(start=START)
    telemetry = setup_telemetry(plan)
    server = IngestServer().start()
    reports = tmp_path / "reports"
    provider = CanaryProvider(
        plan,
        store=store,
        clock=clock,
        telemetry=telemetry,
        environ={"A8_URL": server.url},
        reports_dir=reports,
        background=False,
    )
    events: list[EventDetails] = []
    api.set_provider_and_wait(provider)
    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, events.append)
    service = SimulatedService(
        api.get_client(),
        provider.rollout,
        meter_provider=telemetry.meter_provider,
        fault=fault,
        seed=seed,
    )
    sim = Simulation(
        provider.rollout, clock, service, max_rps=max_rps, min_canary_rps=min_canary_rps
    )
    world = World(plan, clock, telemetry, server, provider, service, sim, reports, events)
    provider.rollout.add_observer(world._record)
    return world
