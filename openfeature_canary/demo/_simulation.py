"""A simulated service in virtual time, for the demo and the end-to-end tests.

Requests go through the real OpenFeature client (and so the real provider and hooks); the
service answers with a latency and status drawn from a per-cohort model and records them
with :func:`instrumentation.record_request`, exactly as an instrumented service would. A
:class:`Fault` makes the canary cohort misbehave from a given stage on, to show each trigger.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from opentelemetry.metrics import MeterProvider

from openfeature_canary.clock import ManualClock
from openfeature_canary.instrumentation import (
    EVENT_LOOP_LAG_NAME,
    METER_NAME,
    IngestInstruments,
    record_request,
    shadow_compare,
)
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy._gates import requests_to_go
from openfeature_canary.policy._rollout import Rollout
from openfeature_canary.state import Status

__all__ = ["FAULTS", "CohortModel", "Fault", "FaultKind", "SimulatedService", "Simulation"]

FaultKind = Literal["latency", "errors", "mismatch", "lag", "ingest", "slow-gate"]
FAULTS: Final[tuple[FaultKind, ...]] = (
    "latency",
    "errors",
    "mismatch",
    "lag",
    "ingest",
    "slow-gate",
)
_Z95: Final = 1.6448536269514722


@dataclass(frozen=True)
class CohortModel:
    """Latency (lognormal: median and P95 in ms) and 5xx share of one cohort.

    The healthy default never fails: with a few hundred canary requests per gate window, a
    single random 5xx would already breach a 0.1 % gate, and the demo should show the
    faults' rollbacks, not noise.
    """

    median_ms: float = 70.0
    p95_ms: float = 105.0
    error_rate: float = 0.0

    def sample(self, rng: random.Random) -> tuple[float, int]:
        """One request: (duration in seconds, HTTP status)."""
        sigma = math.log(self.p95_ms / self.median_ms) / _Z95
        ms = rng.lognormvariate(math.log(self.median_ms), sigma)
        status = 503 if rng.random() < self.error_rate else 200
        return ms / 1000.0, status


#: What each fault does to the canary cohort (or to the process, for ``lag``).
FAULT_MODELS: Final = {
    # Every canary request slower than 150 ms: the windowed P95 breaches within one tick.
    "latency": CohortModel(median_ms=210.0, p95_ms=260.0),
    # DataService answers 503 to a quarter of the reads.
    "errors": CohortModel(median_ms=70.0, p95_ms=105.0, error_rate=0.25),
    # P95 ≈ 145 ms: over stage 2's 140 ms gate, under the 150 ms hard trigger.
    "slow-gate": CohortModel(median_ms=105.0, p95_ms=145.0),
}


@dataclass(frozen=True)
class Fault:
    """Misbehaviour of ``flag_key``'s canary once it runs at stage ``at_stage`` or later,
    starting ``after_s`` into that stage and lasting ``duration_s`` (``None``: for good).

    ``latency``: canary P95 ≈ 260 ms (hard trigger ``p95_breach`` after 5 min);
    ``errors``: 25 % 5xx (``error_rate_breach`` after 2 min); ``mismatch``: 2 % of the shadow
    comparisons of canary reads disagree (``ledger_mismatch`` at once); ``lag``: the event
    loop stalls 400 ms once a minute (``event_loop_lag`` on the second stall); ``ingest``: the
    telemetry ingest refuses 25 % of the service's events (``telemetry_acceptance``);
    ``slow-gate``: canary P95 ≈ 145 ms, under the hard trigger but over stage 2's 140 ms gate.
    """

    kind: FaultKind
    flag_key: str
    at_stage: int = 2
    after_s: float = 0.0
    duration_s: float | None = None


class SimulatedService:
    """Serves simulated requests for a set of flags through an OpenFeature client."""

    def __init__(
        self,
        client: OpenFeatureClient,
        rollout: Rollout,
        *,
        meter_provider: MeterProvider,
        fault: Fault | None = None,
        healthy: CohortModel | None = None,
        seed: int = 7,
    ) -> None:
        self.client = client
        self.rollout = rollout
        self.meter_provider = meter_provider
        self.fault = fault
        self.healthy = healthy or CohortModel()
        self.rng = random.Random(seed)
        self._lag = meter_provider.get_meter(METER_NAME).create_histogram(
            EVENT_LOOP_LAG_NAME, unit="s"
        )
        self._ingest = IngestInstruments(meter_provider)
        self._request_no = 0
        self.requests = 0
        #: Virtual time at which the fault first became active, and of its first mismatch.
        self.onset_at: float | None = None
        self.first_mismatch_at: float | None = None

    def fault_active(self, flag_key: str) -> bool:
        """True when the fault applies to ``flag_key`` now (see :class:`Fault`)."""
        fault = self.fault
        if fault is None or fault.flag_key != flag_key:
            return False
        state = self.rollout.controller(flag_key).state
        if state.status is not Status.RUNNING or state.stage < fault.at_stage:
            return False
        now = self.rollout.clock.now()
        if self.onset_at is None:
            if now < state.since + fault.after_s:
                return False
            self.onset_at = now
        return fault.duration_s is None or now < self.onset_at + fault.duration_s

    def serve(self, flag_key: str, count: int) -> None:
        """Serve ``count`` requests of the route guarded by ``flag_key``."""
        faulty = self.fault_active(flag_key)
        kind = self.fault.kind if faulty and self.fault else None
        canary_model = FAULT_MODELS.get(kind or "", self.healthy)
        rng = self.rng
        for _ in range(count):
            self._request_no += 1
            ctx = EvaluationContext(targeting_key=f"req-{self._request_no}")
            details = self.client.get_boolean_details(flag_key, False, ctx)
            variant = details.variant or ("on" if details.value else "off")
            model = canary_model if variant == "on" else self.healthy
            duration_s, status = model.sample(rng)
            record_request(
                flag_key, variant, duration_s, status, meter_provider=self.meter_provider
            )
            if variant == "on" and kind == "mismatch":
                shadow = "same"
                if rng.random() < 0.02:
                    shadow = "other"
                    if self.first_mismatch_at is None:
                        self.first_mismatch_at = self.rollout.clock.now()
                shadow_compare(flag_key, "same", shadow, meter_provider=self.meter_provider)
        # The service's own telemetry: one event per request to the ingest.
        events = count
        refused = events // 4 if kind == "ingest" else 0
        self._ingest.sent(events)
        if events - refused:
            self._ingest.accepted(events - refused)
        self.requests += count

    def tick_process(self, stalls: bool) -> None:
        """Record one event-loop lag sample for this tick: a 400 ms stall or a few ms.

        (A real :class:`EventLoopLagMonitor` samples every 100 ms; one sample per tick keeps
        the demo fast and counts stalls the same way.)
        """
        self._lag.record(0.4 if stalls else 0.001 + self.rng.random() * 0.004)


class Simulation:
    """Drives virtual time: traffic, then a clock step, then a policy tick — until done.

    The request rate of each flag adapts to its stage so that the stage gathers about twice
    the canary requests its gate needs to go, and at least ``min_canary_rps`` canary
    requests a second reach the trigger windows (a real service's traffic is what it is;
    the demo's is chosen to be judged quickly).
    """

    def __init__(
        self,
        rollout: Rollout,
        clock: ManualClock,
        service: SimulatedService,
        *,
        tick_s: float | None = None,
        base_rps: float = 1.0,
        min_canary_rps: float = 2.0,
        max_rps: float = 100.0,
    ) -> None:
        self.rollout = rollout
        self.clock = clock
        self.service = service
        self.tick_s = tick_s or min(c.flag.tick_s for c in rollout.controllers())
        self.base_rps = base_rps
        self.min_canary_rps = min_canary_rps
        self.max_rps = max_rps
        self._last_stall = -math.inf
        self.ticks = 0

    def rate(self, flag: FlagPlan) -> float:
        """Requests per virtual second for ``flag`` in its current stage."""
        state = self.rollout.controller(flag.key).state
        if state.status is not Status.RUNNING or state.percent <= 0:
            return self.base_rps
        stage = flag.stage(state.stage)
        share = state.percent / 100.0
        needed = requests_to_go(flag, state.stage)
        wanted = max(2 * needed / (share * stage.duration_s), self.min_canary_rps / share)
        return min(self.max_rps, max(self.base_rps, wanted))

    def step(self) -> None:
        """One tick: serve traffic for ``tick_s``, advance the clock, tick every flag."""
        for ctl in self.rollout.controllers():
            count = max(1, round(self.rate(ctl.flag) * self.tick_s))
            self.service.serve(ctl.key, count)
        fault = self.service.fault
        stall = False
        if fault is not None and fault.kind == "lag" and self.service.fault_active(fault.flag_key):
            now = self.clock.now()
            if now - self._last_stall >= 60.0:
                stall, self._last_stall = True, now
        self.service.tick_process(stall)
        self.clock.advance(self.tick_s)
        for ctl in self.rollout.controllers():
            ctl.tick()
        self.ticks += 1

    def run_until(self, done: Callable[[], bool], max_virtual_s: float) -> bool:
        """Step until ``done()`` or ``max_virtual_s`` of virtual time; True if done."""
        deadline = self.clock.now() + max_virtual_s
        while not done():
            if self.clock.now() >= deadline:
                return False
            self.step()
        return True


def all_settled(rollout: Rollout, keys: Sequence[str] | None = None) -> Callable[[], bool]:
    """A ``done`` predicate: every flag (or those in ``keys``) completed or rolled back."""
    final = (Status.COMPLETED, Status.ROLLED_BACK, Status.PAUSED)
    wanted = tuple(keys) if keys else tuple(c.key for c in rollout.controllers())

    def done() -> bool:
        states = [rollout.controller(k).state for k in wanted]
        if any(s.status is Status.ROLLED_BACK for s in states):
            return True
        return all(s.status in final for s in states)

    return done
