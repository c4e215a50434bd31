"""The OpenFeature provider lifecycle of CanaryProvider: a constructor without I/O,
``initialize`` that names the store when it fails, STALE / ERROR / READY events as the store
fails and recovers (serving the old path meanwhile), arguments that cannot be silently ignored,
the provider's own hooks, and answers that never go back to an older state."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.contrib.hook.canary import MetricsHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.exception import ErrorCode, ProviderFatalError, ProviderNotReadyError
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otel_points import points

from openfeature_canary import ManualClock, Rollout, RolloutPlan, Status, load_plan
from openfeature_canary.signals import InProcessSignalSource
from openfeature_canary.telemetry import setup_telemetry

FLAG = "dataservice-read-canary"
ENV = "DATASERVICE_READ_CANARY"


@pytest.fixture
def plan(example_plan_path: Path) -> RolloutPlan:
    return load_plan(example_plan_path)


class _IoAudit:
    """Records file opens, folder creations and socket connections while armed (a real
    audit hook: nothing is mocked, every path through the interpreter is seen)."""

    def __init__(self) -> None:
        self.armed = False
        self.seen: list[tuple[str, str]] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = str(args[1]) if len(args) > 1 else "r"
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR)
            # Reading installed modules (lazy imports) is not the provider's I/O.
            if writes or not str(args[0]).endswith((".py", ".pyc", ".so")):
                self.seen.append((event, str(args[0])))
        elif event in ("os.mkdir", "socket.connect", "os.rename", "os.remove"):
            self.seen.append((event, str(args[0]) if args else ""))


_AUDIT = _IoAudit()


@pytest.fixture
def audit() -> Iterator[_IoAudit]:
    _AUDIT.seen.clear()
    yield _AUDIT
    _AUDIT.armed = False


def test_provider_constructor_reads_only_the_plan_no_file_no_folder_no_connection(
    tmp_path: Path, example_plan_path: Path, audit: _IoAudit
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    plan = load_plan(example_plan_path)
    telemetry = setup_telemetry(plan)
    try:
        audit.armed = True
        provider = CanaryProvider(
            plan,
            store=f"file://{state_dir}/state.json",
            telemetry=telemetry,
            environ={"A8_URL": "http://127.0.0.1:9/"},  # nothing listens there
            reports_dir=tmp_path / "reports",
        )
        audit.armed = False
        assert audit.seen == []
        assert sorted(p.name for p in tmp_path.rglob("*")) == before
        assert provider.controller(FLAG).state.status is Status.PENDING  # the safe side
    finally:
        telemetry.shutdown()


def test_provider_constructor_with_an_unreachable_store_folder_does_not_fail(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    provider = CanaryProvider(plan, store=f"file://{tmp_path}/missing/state.json")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(ProviderFatalError, match=r"missing.*does not exist"):
        provider.initialize(EvaluationContext())
    assert not (tmp_path / "missing").exists()


def test_provider_initialize_on_a_corrupt_store_raises_not_ready_naming_it(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    path.write_text("{ not json")
    provider = CanaryProvider(plan, store=f"file://{path}", background=False)
    with pytest.raises(ProviderNotReadyError, match=rf"file://{path}: corrupt state file"):
        provider.initialize(EvaluationContext())


class _Events:
    """Provider events as the application's handlers see them (the SDK runs handlers on an
    executor, so they arrive shortly after the provider emits them)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._cond = threading.Condition()
        for event in (
            ProviderEvent.PROVIDER_STALE,
            ProviderEvent.PROVIDER_ERROR,
            ProviderEvent.PROVIDER_READY,
        ):
            api.add_handler(event, lambda _d, e=event: self._add(e.value))

    def _add(self, name: str) -> None:
        with self._cond:
            self.seen.append(name)
            self._cond.notify_all()

    def wait_for(self, name: str, timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: name in self.seen, timeout), self.seen


def _started_store(plan: RolloutPlan, path: Path, percent_stage: int = 2) -> None:
    rollout = Rollout(plan, store=f"file://{path}")
    ctl = rollout.controller(FLAG)
    ctl.start()
    while ctl.state.stage < percent_stage:
        ctl.promote()


def _health(reader: InMemoryMetricReader) -> str:
    """The health ``canary.store.health`` reports as current (its one series at 1)."""
    current = [
        attrs["canary.store.health"]
        for attrs, point in points(reader, "canary.store.health")
        if point.value == 1
    ]
    assert len(current) == 1, current
    return str(current[0])


def test_provider_store_unreadable_goes_stale_then_error_then_ready_serving_the_old_path(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    _started_store(plan, path, percent_stage=4)  # 100 %: everyone gets the canary
    clock = ManualClock(start=1000.0)
    reader = InMemoryMetricReader()
    provider = CanaryProvider(
        plan,
        store=f"file://{path}",
        clock=clock,
        background=False,
        max_staleness=30,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    api.set_provider_and_wait(provider)
    client = api.get_client()
    events = _Events()
    ctx = EvaluationContext(targeting_key="u-1")
    assert client.get_boolean_value(FLAG, False, ctx) is True
    assert _health(reader) == "ready"
    good = path.read_bytes()

    path.write_text("{ not json")
    provider.runner.run_once()
    assert client.get_provider_status() is ProviderStatus.STALE
    events.wait_for("PROVIDER_STALE")
    assert _health(reader) == "stale"  # the metric says so too
    assert client.get_boolean_value(FLAG, False, ctx) is True  # the last known state
    clock.advance(31)
    provider.runner.run_once()
    assert client.get_provider_status() is ProviderStatus.ERROR
    events.wait_for("PROVIDER_ERROR")
    assert _health(reader) == "error"
    details = client.get_boolean_details(FLAG, True, ctx)  # even with a default of True
    assert (details.value, details.reason) == (False, Reason.DISABLED)  # 0 %: the old path
    assert "corrupt state file" in str(details.flag_metadata["unavailable"])

    path.write_bytes(good)
    provider.runner.run_once()
    assert client.get_provider_status() is ProviderStatus.READY
    events.wait_for("PROVIDER_READY")
    assert client.get_boolean_value(FLAG, False, ctx) is True
    # (The order is the status sequence above: the SDK runs handlers on a thread pool.)


def test_provider_store_unreadable_without_staleness_goes_straight_to_error(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    _started_store(plan, path, percent_stage=4)
    provider = CanaryProvider(plan, store=f"file://{path}", background=False, max_staleness=0)
    api.set_provider_and_wait(provider)
    client = api.get_client()
    path.unlink()
    path.mkdir()  # reading a folder fails: an unreadable store
    provider.runner.run_once()
    assert client.get_provider_status() is ProviderStatus.ERROR
    assert provider.view(FLAG).percent == 0.0
    path.rmdir()
    provider.runner.run_once()
    assert client.get_provider_status() is ProviderStatus.READY


def _repair(path: Path, good: bytes) -> None:
    """Put the good state back in one step, as an operator's tool would: a plain write
    truncates first, and a poll that reads the empty file in between sees a new store."""
    tmp = path.with_name(path.name + ".repair")
    tmp.write_bytes(good)
    os.replace(tmp, path)


def test_provider_corrupt_at_start_recovers_when_the_file_is_repaired(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    _started_store(plan, path, percent_stage=4)
    good = path.read_bytes()
    path.write_text("{ not json")
    # A name of its own: the global handler must not take another test's provider's READY
    # (a provider whose initialize raised keeps its runner, by design, until shut down).
    name = f"corrupt-at-start-{tmp_path.name}"
    provider = CanaryProvider(plan, store=f"file://{path}", refresh_interval=0.05, name=name)
    ready = threading.Event()
    api.add_handler(
        ProviderEvent.PROVIDER_READY, lambda d: ready.set() if d.provider_name == name else None
    )
    with pytest.raises(ProviderNotReadyError):
        api.set_provider_and_wait(provider)
    client = api.get_client()
    ctx = EvaluationContext(targeting_key="u-1")
    assert client.get_boolean_value(FLAG, True, ctx) is False  # the old path meanwhile
    ready.clear()
    _repair(path, good)
    assert ready.wait(5)
    assert client.get_boolean_value(FLAG, False, ctx) is True
    provider.shutdown()  # its runner outlives the failed initialize


def test_provider_telemetry_and_signals_together_is_an_error(plan: RolloutPlan) -> None:
    telemetry = setup_telemetry(plan)
    try:
        with pytest.raises(ValueError, match="telemetry= or signals="):
            CanaryProvider(
                plan, telemetry=telemetry, signals=InProcessSignalSource(telemetry.reader)
            )
        with pytest.raises(TypeError, match="setup_telemetry"):
            CanaryProvider(plan, telemetry=telemetry.meter_provider)  # type: ignore[arg-type]
    finally:
        telemetry.shutdown()


def test_provider_with_telemetry_brings_its_metrics_hook_and_runs_the_policy(
    plan: RolloutPlan,
) -> None:
    telemetry = setup_telemetry(plan)
    try:
        provider = CanaryProvider(plan, telemetry=telemetry, background=False)
        (hook,) = provider.get_provider_hooks()
        assert isinstance(hook, MetricsHook)
        assert provider.rollout.policy is not None
        api.set_provider_and_wait(provider)
        client = api.get_client()
        for i in range(5):
            client.get_boolean_value(FLAG, False, EvaluationContext(targeting_key=f"u{i}"))
        total = sum(
            p.value
            for attrs, p in points(telemetry.reader, "feature_flag.evaluation_requests_total")
            if attrs.get("feature_flag.key") == FLAG
        )
        assert total == 5
    finally:
        telemetry.shutdown()


def test_provider_rolled_back_flag_with_a_bad_env_override_stays_off(
    plan: RolloutPlan,
) -> None:
    for raw in ("abc", "", "1_0", "\uff15"):
        provider = CanaryProvider(plan, environ={ENV: raw}, background=False)
        api.set_provider_and_wait(provider)
        provider.controller(FLAG).start()
        provider.controller(FLAG).rollback("p95_breach")
        details = api.get_client().get_boolean_details(
            FLAG, True, EvaluationContext(targeting_key="u-1")
        )
        assert (details.value, details.reason) == (False, Reason.DISABLED), raw


def test_provider_bad_env_override_answers_parse_error_naming_the_variable(
    plan: RolloutPlan,
) -> None:
    for raw in ("abc", "1_0", "\uff15", "nan", "150", "-1"):
        provider = CanaryProvider(plan, environ={ENV: raw}, background=False)
        api.set_provider_and_wait(provider)
        details = api.get_client().get_boolean_details(
            FLAG, False, EvaluationContext(targeting_key="u-1")
        )
        assert (details.value, details.error_code) == (False, ErrorCode.PARSE_ERROR), raw
        assert ENV in (details.error_message or "")


def test_provider_served_view_never_goes_back_to_an_older_state(plan: RolloutPlan) -> None:
    provider = CanaryProvider(plan, background=False)
    ctl = provider.controller(FLAG)
    running = ctl.start()
    while ctl.state.stage < 4:
        ctl.promote()
    rolled_back = ctl.rollback("p95_breach")
    # A slow reader that read the store before the rollback comes back with its old state.
    ctl.adopt(running)
    provider._serve(running, running)
    provider._rebuild()
    assert provider.view(FLAG).status is Status.ROLLED_BACK
    assert provider.view(FLAG).version == rolled_back.version


_SURROGATE_CHILD = """
import json, sys
from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature_canary import load_plan
provider = CanaryProvider(load_plan(sys.argv[1]), background=False)
api.set_provider_and_wait(provider)
provider.controller("dataservice-read-canary").start(force=True)
client = api.get_client()
for raw in ('"\\\\ud800"', '"req-\\\\udfff"', '"a\\\\ud83d"'):
    d = client.get_boolean_details(
        "dataservice-read-canary", False, EvaluationContext(targeting_key=json.loads(raw))
    )
    print(d.value, d.error_code, d.reason)
"""


def test_provider_lone_surrogate_unit_answers_invalid_context_without_crashing(
    example_plan_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SURROGATE_CHILD, str(example_plan_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr  # a SIGSEGV would be -11
    assert done.stdout.splitlines() == ["False INVALID_CONTEXT ERROR"] * 3


def test_provider_flush_events_delivers_an_operator_rollback(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    from openfeature_canary.demo._ingest_server import IngestServer

    server = IngestServer().start()
    try:
        provider = CanaryProvider(
            plan,
            store=f"file://{tmp_path}/state.json",
            environ={"A8_URL": server.url},
            reports_dir=tmp_path / "reports",
            background=False,
        )
        api.set_provider_and_wait(provider)
        provider.controller(FLAG).start()
        provider.controller(FLAG).rollback("operator saw errors")
        assert provider.flush_events(10.0)
        (event,) = server.named("canary_rollback")
        assert event["properties"]["reason"] == "operator"
        assert event["properties"]["note"] == "operator saw errors"
        assert "operator saw errors" in (tmp_path / "reports" / "canary_abort.md").read_text()
        assert [e["event_name"] for e in server.events] == [
            "canary_stage_advanced",
            "canary_rollback",
        ]
        outbox = tmp_path / "state.json.outbox.jsonl"  # beside the state, owner-only
        assert outbox.stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()


def test_provider_bookkeeping_change_neither_logs_nor_announces(plan: RolloutPlan) -> None:
    """A state change that leaves the answers alone (a judged gate window, a start request)
    is not a configuration change for OpenFeature."""
    provider = CanaryProvider(plan, background=False)
    api.set_provider_and_wait(provider)
    changed: list[object] = []
    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changed.append)
    before = provider.view(FLAG)
    provider.controller(FLAG).request_start()  # version moves, answers do not
    assert provider.view(FLAG) is before
    provider.controller(FLAG).start(force=True)  # 5 %: a real change
    assert provider.view(FLAG).percent == 5.0
    deadline = threading.Event()
    deadline.wait(0.5)  # handlers run on the SDK's executor
    assert len(changed) == 1
