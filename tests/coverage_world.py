"""A small rollout in virtual time through the public API, for the coverage tests.

Real: the OpenTelemetry SDK and its in-memory reader, ``InProcessSignalSource`` (or any source
given), ``Autopilot``, ``Rollout`` on a ``memory://`` store. Simulated: the clock and the
requests, recorded with :func:`record_request` one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from openfeature_canary import (
    Autopilot,
    Controller,
    InProcessSignalSource,
    ManualClock,
    Rollout,
    RolloutPlan,
    SignalSource,
    parse_plan,
    record_request,
)
from openfeature_canary.instrumentation import REQUEST_DURATION_NAME
from openfeature_canary.telemetry import canary_views

START = 1_800_000_000.0
KEY = "checkout-canary"


def plan_with(
    stages: Sequence[dict[str, Any]], triggers: Sequence[dict[str, Any]] = ()
) -> RolloutPlan:
    """A one-flag plan with these stages and triggers (tick 1 s)."""
    flag: dict[str, Any] = {"tick": "1s", "stages": list(stages), "triggers": list(triggers)}
    return parse_plan({"flags": {KEY: flag}})


@dataclass
class World:
    """One flag's rollout: record requests, advance the clock, tick."""

    plan: RolloutPlan
    clock: ManualClock
    provider: MeterProvider
    autopilot: Autopilot
    ctl: Controller

    def serve(self, variant: str, count: int, duration_s: float = 0.05, status: int = 200) -> None:
        for _ in range(count):
            record_request(KEY, variant, duration_s, status, meter_provider=self.provider)

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)
        self.ctl.tick()

    @property
    def reasons(self) -> list[tuple[str, str, float]]:
        """(action, reason, seconds since START) of every decision-log entry."""
        return [(e.action, e.reason, e.at - START) for e in self.ctl.state.log]

    def close(self) -> None:
        self.provider.shutdown()


def make_world(
    plan: RolloutPlan,
    *,
    bounds_s: Sequence[float] | None = None,
    source: SignalSource | None = None,
    reader: InMemoryMetricReader | None = None,
) -> World:
    """A world whose request-duration histogram has ``bounds_s`` (default: the plan's Views,
    as ``setup_telemetry`` builds them), read by ``source`` (default: in process, from
    ``reader``)."""
    reader = reader or InMemoryMetricReader()
    if bounds_s is None:
        views = canary_views(plan)
    else:
        aggregation = ExplicitBucketHistogramAggregation(boundaries=tuple(bounds_s))
        views = (View(instrument_name=REQUEST_DURATION_NAME, aggregation=aggregation),)
    provider = MeterProvider(metric_readers=[reader], views=views)
    clock = ManualClock(START)
    autopilot = Autopilot(source or InProcessSignalSource(reader, plan=plan))
    rollout = Rollout(plan, store="memory://", clock=clock, policy=autopilot)
    ctl = rollout.controller(KEY)
    ctl.start()
    return World(plan, clock, provider, autopilot, ctl)
