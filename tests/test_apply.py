"""``Pipeline.apply`` is the one function that runs a transition's steps, in the written order:
persist -> serve -> event -> reports -> metrics -> observers -> one log line, whether an
operator or the policy round rolls a flag back; the transitions are the same functions for
both."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openfeature_canary import ManualClock, RolloutState, Status, load_plan
from openfeature_canary.events import AbortRecord, ReportWriter, StageResult
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.policy import (
    Action,
    Controller,
    Decision,
    Fleet,
    Memory,
    Rollout,
    run_round,
    transitions,
)
from openfeature_canary.stores import MemoryStateStore

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"

#: (step, the frame of the outermost ``policy/apply.py`` function that led to it)
Journal = list[tuple[str, FrameType | None]]


def _apply_frame() -> FrameType | None:
    """The outermost frame of ``policy/apply.py`` on the stack (the one ``apply`` call)."""
    found = None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith("policy/apply.py"):
            found = frame
        frame = frame.f_back
    return found


class JournalStore(MemoryStateStore):
    """The memory store, writing down each compare-and-set write."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def save(self, state: RolloutState, expected_version: int) -> None:
        super().save(state, expected_version)
        self.journal.append(("persist", _apply_frame()))

    def save_many(self, changes: Sequence[tuple[RolloutState, int]]) -> tuple[bool, ...]:
        written = super().save_many(changes)
        self.journal.append(("persist", _apply_frame()))
        return written


class JournalSink:
    """An event sink that writes down what it is given."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.events: list[str] = []

    def enqueue(self, event_name: str, properties: Any) -> None:
        self.events.append(event_name)
        self.journal.append(("event", _apply_frame()))


class JournalReports(ReportWriter):
    """The real report writer (it writes the files), writing down each report."""

    def __init__(self, dir: Path, journal: Journal) -> None:
        super().__init__(dir)
        self.journal = journal

    def record_stage(self, result: StageResult) -> None:
        super().record_stage(result)
        self.journal.append(("results row", _apply_frame()))

    def append_abort(self, record: AbortRecord) -> None:
        super().append_abort(record)
        self.journal.append(("abort entry", _apply_frame()))


class JournalLog(logging.Handler):
    def __init__(self, journal: Journal) -> None:
        super().__init__(logging.INFO)
        self.journal = journal
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "rollback" in record.getMessage():
            self.lines.append(record.getMessage())
            self.journal.append(("log", _apply_frame()))


def _rollbacks_counted(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    total = 0
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "canary.rollbacks":
                    total += sum(int(p.value) for p in metric.data.data_points)  # type: ignore[union-attr]
    return total


class World:
    def __init__(self, plan: RolloutPlan, tmp_path: Path, policy: Any = None) -> None:
        self.journal: Journal = []
        self.reader = InMemoryMetricReader()
        self.store = JournalStore(self.journal)
        self.sink = JournalSink(self.journal)
        self.clock = ManualClock(start=1000.0)
        self.rollout = Rollout(
            plan,
            store=self.store,
            clock=self.clock,
            policy=policy,
            serve=self._serve,
            events=self.sink,
            reports=JournalReports(tmp_path / "reports", self.journal),
            meter_provider=MeterProvider(metric_readers=[self.reader]),
        )
        self.rollout.add_observer(self._observe)
        self.log = JournalLog(self.journal)

    def _serve(self, _old: RolloutState, new: RolloutState) -> None:
        # Persisted before it is served: any other process can read it by now.
        stored = self.store.load(new.flag_key)
        assert stored is not None and stored.version == new.version
        self.journal.append(("serve", _apply_frame()))

    def _observe(self, _old: RolloutState, new: RolloutState) -> None:
        if new.status is Status.ROLLED_BACK:
            # The metrics step has run by the time the observers are told.
            self.journal.append((f"metrics {_rollbacks_counted(self.reader)}", _apply_frame()))
            self.journal.append(("observer", _apply_frame()))


@pytest.fixture
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("openfeature_canary")
    level = log.level
    log.setLevel(logging.INFO)
    yield log
    log.setLevel(level)


ORDER = [
    "persist",
    "serve",
    "event",
    "results row",
    "abort entry",
    "metrics 1",
    "observer",
    "log",
]


def _assert_one_apply_in_order(world: World) -> None:
    steps = [step for step, _frame in world.journal]
    assert steps == ORDER
    frames = {id(frame) for _step, frame in world.journal}
    (frame,) = (f for _s, f in world.journal[:1])
    assert frame is not None and frame.f_code.co_name == "apply"
    assert len(frames) == 1, "every step is called from the same apply() call"
    assert world.sink.events == ["canary_rollback"]


def test_operator_rollback_steps_run_in_the_written_order_from_one_apply(
    plan: RolloutPlan, tmp_path: Path, logger: logging.Logger
) -> None:
    world = World(plan, tmp_path)
    ctl = world.rollout.controller(FLAG)
    ctl.start()
    world.journal.clear()
    world.sink.events.clear()
    logger.addHandler(world.log)
    try:
        ctl.rollback("p95_breach", by="tester")
    finally:
        logger.removeHandler(world.log)
    _assert_one_apply_in_order(world)
    assert world.log.lines == [
        f"{FLAG}: rollback running stage 1 (5%) -> rolled_back stage 0 (0%): reason=operator "
        "rule=command:rollback n=0 note='p95_breach' by=operator:tester"
    ]


class ScriptedRollback:
    """A policy whose decision is a trigger's rollback; the target is built as the autopilot
    builds it (``transitions.from_decision``)."""

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        if ctl.key != FLAG:
            return None
        numbers = {"value": 900.0, "threshold": 500.0, "n": 120}
        decision = Decision(Action.ROLLBACK, "p95_breach", Memory(), numbers)
        return transitions.from_decision(ctl.flag, ctl.state, decision, now)

    def baseline_loud(self, ctl: Controller, now: float) -> list[str]:
        return []

    def stand_down(self) -> None:
        pass


def test_policy_round_rollback_steps_run_in_the_written_order_from_one_apply(
    plan: RolloutPlan, tmp_path: Path, logger: logging.Logger
) -> None:
    world = World(plan, tmp_path, policy=ScriptedRollback())
    world.rollout.controller(FLAG).start(force=True)
    world.journal.clear()
    world.sink.events.clear()
    logger.addHandler(world.log)
    try:
        applied = run_round(world.rollout)
    finally:
        logger.removeHandler(world.log)
    assert [c.new.flag_key for c in applied] == [FLAG]
    _assert_one_apply_in_order(world)
    assert world.rollout.controller(FLAG).state.status is Status.ROLLED_BACK


def test_operator_and_policy_rollbacks_are_the_same_transition(plan: RolloutPlan) -> None:
    flag = plan.flag(FLAG)
    running = transitions.start(flag, RolloutState(flag_key=FLAG), 10.0, "operator", {})
    by_operator = transitions.rollback(running, 20.0, "p95_breach", {})
    decision = Decision(Action.ROLLBACK, "p95_breach", Memory())
    by_policy = transitions.from_decision(flag, running, decision, 20.0)
    fields = ("status", "stage", "percent", "since", "reason", "requested", "evidence", "version")
    assert [getattr(by_policy, f) for f in fields] == [getattr(by_operator, f) for f in fields]
    assert by_policy.status is Status.ROLLED_BACK and by_policy.percent == 0.0
    entry = by_policy.log[-1]
    assert (entry.action, entry.reason) == ("rollback", "p95_breach")
    assert type(entry.action) is str  # persisted and printed as plain text
    assert Action.ROLLBACK == "rollback" and isinstance(Action.ROLLBACK, str)


class CostlyRepr:
    """An observer whose repr a test harness would pay for (a big dataclass, say)."""

    def __init__(self) -> None:
        self.reprs = 0
        self.calls = 0

    def __call__(self, _old: RolloutState, _new: RolloutState) -> None:
        self.calls += 1

    def __repr__(self) -> str:
        self.reprs += 1
        return "CostlyRepr()"


def test_apply_formats_no_log_text_for_an_observer_that_did_not_fail(
    plan: RolloutPlan, caplog: pytest.LogCaptureFixture
) -> None:
    observer = CostlyRepr()
    rollout = Rollout(plan, store="memory://", clock=ManualClock())
    rollout.add_observer(observer)
    with caplog.at_level(logging.DEBUG, logger="openfeature_canary"):
        rollout.controller(FLAG).start()
        rollout.controller(FLAG).rollback("p95_breach")
    assert (observer.calls, observer.reprs) == (2, 0)


class CountingPolicy:
    """A policy that holds and counts what the round asks of it."""

    def __init__(self) -> None:
        self.decided: list[str] = []
        self.stood_down = 0

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        self.decided.append(ctl.key)
        return None

    def baseline_loud(self, ctl: Controller, now: float) -> list[str]:
        return []

    def stand_down(self) -> None:
        self.stood_down += 1


def test_round_holds_the_fleet_lease_before_the_policy_decides(plan: RolloutPlan) -> None:
    store = MemoryStateStore()  # one store, two processes' rollouts over it
    clock = ManualClock(start=100.0)
    policies = {"a": CountingPolicy(), "b": CountingPolicy()}
    rollouts = {
        name: Rollout(
            plan, store=store, clock=clock, policy=policy, fleet=Fleet(store, name, lease_ttl_s=30)
        )
        for name, policy in policies.items()
    }
    run_round(rollouts["a"])
    run_round(rollouts["b"])  # "a" holds the lease: "b" does not decide, and forgets
    assert policies["a"].decided == [c.key for c in rollouts["a"].controllers()]
    assert (policies["b"].decided, policies["b"].stood_down) == ([], 1)
    assert store.lease_holder(clock.now()) == "a"
    # "a" stops renewing; once its lease expires, "b"'s next due round takes it and decides.
    clock.advance(31.0)
    run_round(rollouts["b"])
    assert store.lease_holder(clock.now()) == "b"
    assert policies["b"].decided == [c.key for c in rollouts["b"].controllers()]
