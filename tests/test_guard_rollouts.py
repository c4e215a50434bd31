"""Guards through the public API in virtual time (issue 18): the reference plan plus a guard
on ``provider_detail_opened``, 20 requests a second, each evaluated with
``client.get_boolean_details``, recorded with ``record_request`` and, on 30 % of them,
followed by ``client.track(...)`` — the real SDK, CanaryProvider, OpenTelemetry and
InProcessSignalSource, a ManualClock.

200 seeded runs a scenario, each from the start of stage 2 (the operator promotes to it, so the
stage's evidence starts fresh as after a go) to the end of that stage:

- the canary clicks 20 % less: rolled back by ``guard_breach`` within the stage in >= 95 %;
- the same click rate in both cohorts, or a drop both cohorts see (half the clicks for 10
  minutes at a random moment): rolled back in <= 2 %.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib
from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.track import TrackingEventDetails

from openfeature_canary import ManualClock, Status
from openfeature_canary.instrumentation import record_request
from openfeature_canary.plan import RolloutPlan, parse_plan
from openfeature_canary.telemetry import setup_telemetry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
KEY = "dataservice-read-canary"
EVENT = "provider_detail_opened"
BASKET = "checkout_value"
RUNS = 200
RPS, CLICK, TICK = 20, 0.3, 10.0
START = 1_800_000_000.0


def guarded_plan(tmp: Path, guard: dict[str, Any] | None = None) -> RolloutPlan:
    data: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    data["flags"][KEY]["guards"] = [guard or {"event": EVENT}]
    data["reports"] = {"dir": str(tmp / "reports")}
    data["telemetry"] = {"app": "test"}  # no ingest: the outbox keeps the events
    return parse_plan(data, source="guarded plan")


@dataclass(frozen=True)
class Ending:
    """How one run's stage 2 ended: the action (``advance``, ``rollback`` …), its reason and
    rule, and the seconds since the stage began."""

    action: str
    reason: str
    rule: str
    after_s: float


def one_run(plan: RolloutPlan, seed: int, scenario: str) -> Ending:
    """Stage 2 of one rollout, request by request through the public API."""
    rng = random.Random(seed)
    clock = ManualClock(start=START)
    telemetry = setup_telemetry(plan)
    provider = CanaryProvider(plan, clock=clock, telemetry=telemetry, background=False)
    api.set_provider_and_wait(provider)
    try:
        client = api.get_client()
        ctl = provider.controller(KEY)
        ctl.start()
        ctl.promote()
        since = ctl.state.since
        duration = plan.flag(KEY).stage(2).duration_s
        incident = rng.uniform(0, duration - 600)
        request = 0
        while ctl.state.stage == 2 and ctl.state.status is Status.RUNNING:
            elapsed = clock.now() - since
            if elapsed > 3 * duration:
                return Ending("none", "", "", elapsed)
            shared = 0.5 if scenario == "shared" and incident <= elapsed < incident + 600 else 1.0
            for _ in range(int(RPS * TICK)):
                request += 1
                ctx = EvaluationContext(targeting_key=f"{seed}-{request}")
                variant = client.get_boolean_details(KEY, False, ctx).variant
                record_request(KEY, variant, 0.05, 200, meter_provider=telemetry.meter_provider)
                worse = variant == "on" and scenario in ("drop", "mean-drop")
                if scenario.startswith("mean"):
                    if rng.random() < CLICK:  # a basket's value: lognormal, 30 % less if worse
                        value = rng.lognormvariate(3.0, 0.8) * (0.7 if worse else 1.0)
                        client.track(BASKET, ctx, TrackingEventDetails(value=value))
                elif rng.random() < CLICK * shared * (0.8 if worse else 1):
                    client.track(EVENT, ctx)
            clock.advance(TICK)
            ctl.tick()
        last = ctl.state.log[-1]
        return Ending(last.action, last.reason, last.rule, last.at - since)
    finally:
        provider.shutdown()
        api.shutdown()
        telemetry.shutdown()


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutPlan]:
    yield guarded_plan(tmp_path_factory.mktemp("guards"))


def _endings(plan: RolloutPlan, scenario: str) -> list[Ending]:
    base = {"drop": 1_000_000, "same": 2_000_000, "shared": 3_000_000}[scenario]
    return [one_run(plan, base + i, scenario) for i in range(RUNS)]


# ~0.3 s a run that rolls back, ~1.2 s one that goes the whole stage, on a quiet machine.
@pytest.mark.timeout(1800)
def test_a_20_percent_drop_from_stage_2_is_rolled_back_within_the_stage(plan: RolloutPlan) -> None:
    duration = plan.flag(KEY).stage(2).duration_s
    endings = _endings(plan, "drop")
    caught = [
        e
        for e in endings
        if (e.action, e.reason, e.rule) == ("rollback", "guard_breach", f"guard:{EVENT}")
        and e.after_s <= duration
    ]
    missed = [e for e in endings if e not in caught]
    assert len(caught) >= 0.95 * RUNS, missed


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("scenario", ["same", "shared"])
def test_a_healthy_canary_is_rolled_back_in_at_most_2_percent(
    plan: RolloutPlan, scenario: str
) -> None:
    endings = _endings(plan, scenario)
    rolled_back = [e for e in endings if e.action == "rollback"]
    assert len(rolled_back) <= 0.02 * RUNS, rolled_back
    # The others went on: the stage passed at its end, the guard having the information.
    went = [e for e in endings if (e.action, e.reason) == ("advance", "gate_passed")]
    assert len(went) + len(rolled_back) == RUNS, [e for e in endings if e not in went]


@pytest.mark.parametrize(
    ("scenario", "action"), [("mean-drop", "rollback"), ("mean-same", "advance")]
)
def test_a_mean_guard_on_tracked_values(tmp_path: Path, scenario: str, action: str) -> None:
    # The mean of details.value: baskets 30 % smaller in the canary are rolled back by the
    # guard within stage 2; the same baskets in both cohorts go on at the stage's end.
    guard = {"event": BASKET, "measure": "mean"}
    plan = guarded_plan(tmp_path, guard)
    ending = one_run(plan, 4242, scenario)
    assert ending.action == action, ending
    if action == "rollback":
        assert (ending.reason, ending.rule) == ("guard_breach", f"guard:{BASKET}")
        assert ending.after_s <= plan.flag(KEY).stage(2).duration_s
    else:
        assert (ending.reason, ending.after_s) == ("gate_passed", 1800.0)
