"""``engine.build_engine``: the one assembly of store, policy, fleet, sender, reports, rollout
and runner, as the provider, the ``controller`` command and the operator commands use it; it
does no I/O, and the layers around it import it only from above."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from openfeature_canary import ManualClock, RolloutPlan, load_plan
from openfeature_canary.engine import EngineOptions, build_engine, fleet_wanted
from openfeature_canary.policy import Autopilot
from openfeature_canary.signals import FleetSignalSource, InProcessSignalSource
from openfeature_canary.stores import MemoryStateStore, open_store
from openfeature_canary.telemetry import Telemetry, setup_telemetry

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "openfeature_canary"
EXAMPLE = ROOT / "examples" / "canary_plan.toml"


@pytest.fixture
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


@pytest.fixture
def telemetry(plan: RolloutPlan) -> Iterator[Telemetry]:
    telemetry = setup_telemetry(plan)
    yield telemetry
    telemetry.shutdown()


def test_engine_for_a_service_on_a_shared_store_publishes_and_decides_on_the_fleet(
    plan: RolloutPlan, telemetry: Telemetry, tmp_path: Path
) -> None:
    store = f"file://{tmp_path}/state.json"
    engine = build_engine(
        plan, EngineOptions(store=store, telemetry=telemetry, reports_dir=tmp_path / "r")
    )
    policy = engine.rollout.policy
    assert isinstance(policy, Autopilot) and isinstance(policy.source, FleetSignalSource)
    assert engine.fleet is not None and engine.fleet.publisher is not None
    assert engine.rollout.fleet is engine.fleet
    assert engine.sender is not None and engine.rollout.pipeline.events is engine.sender
    assert engine.owns_store and engine.runner.interval == 0.5
    # Building did no I/O: no state file, no outbox, no reports folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_engine_for_a_single_process_decides_on_its_own_traffic(
    plan: RolloutPlan, telemetry: Telemetry
) -> None:
    engine = build_engine(plan, EngineOptions(store="memory://", telemetry=telemetry))
    policy = engine.rollout.policy
    assert isinstance(policy, Autopilot) and isinstance(policy.source, InProcessSignalSource)
    assert engine.fleet is None and engine.rollout.fleet is None


def test_engine_for_the_controller_command_decides_without_publishing(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    store = open_store(f"file://{tmp_path}/state.json")
    engine = build_engine(plan, EngineOptions(store=store, fleet=True, lease_ttl=12.0))
    assert engine.fleet is not None and engine.fleet.publisher is None
    assert engine.fleet.lease_ttl_s == 12.0
    policy = engine.rollout.policy
    assert isinstance(policy, Autopilot) and isinstance(policy.source, FleetSignalSource)
    assert not engine.owns_store  # given as an object: the caller closes it


def test_engine_for_an_operator_command_has_no_policy_and_no_effects(plan: RolloutPlan) -> None:
    clock = ManualClock(start=5.0)
    engine = build_engine(plan, EngineOptions(store="memory://", clock=clock, effects=False))
    assert engine.rollout.policy is None and engine.fleet is None
    assert (engine.sender, engine.reports) == (None, None)
    assert engine.rollout.pipeline.events is None and engine.rollout.clock is clock


def test_engine_options_that_cannot_be_honoured_are_one_line_errors(
    plan: RolloutPlan, telemetry: Telemetry
) -> None:
    with pytest.raises(ValueError, match=r"^memory://: a fleet needs a store its processes share"):
        build_engine(plan, EngineOptions(store="memory://", fleet=True))
    with pytest.raises(ValueError, match="give telemetry= or signals=, not both"):
        build_engine(
            plan,
            EngineOptions(telemetry=telemetry, signals=InProcessSignalSource(telemetry.reader)),
        )
    assert fleet_wanted(None, MemoryStateStore()) is False


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_engine_imports_no_plugin_and_no_lower_layer_imports_the_engine() -> None:
    engine_imports = _imports(PACKAGE / "engine.py")
    assert not [m for m in engine_imports if m.startswith("openfeature.contrib")]
    below = ["policy", "events", "signals", "stores", "plan"]
    offenders = [
        str(path.relative_to(ROOT))
        for folder in below
        for path in sorted((PACKAGE / folder).rglob("*.py"))
        if any(m.startswith("openfeature_canary.engine") for m in _imports(path))
    ]
    assert offenders == []
    # The check sees what it must: the provider does import the engine.
    provider = ROOT / "providers" / "canary" / "provider.py"
    assert "openfeature_canary.engine" in _imports(provider)
