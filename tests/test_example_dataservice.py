"""End to end over real HTTP: the DataService example (``examples/dataservice``).

The stub DataService and the service run under uvicorn on 127.0.0.1 (subprocesses, free ports
picked by the kernel and read back from uvicorn's start line), with a ``file://`` store in
``tmp_path`` and a loopback telemetry ingest in this process. The flag is started with the
CLI, as an operator would; ``load.py`` drives the traffic.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from openfeature_canary import open_store
from openfeature_canary.demo._ingest_server import IngestServer
from openfeature_canary.stores import FleetStore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dataservice"
FLAG = "dataservice-read-canary"
USER_FLAG = "dataservice-user-read-canary"
_RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
_START_TIMEOUT_S = 20.0


def _load_module() -> ModuleType:
    """``examples/dataservice/load.py``, imported by path (it imports nothing of the example)."""
    spec = importlib.util.spec_from_file_location("dataservice_example_load", EXAMPLE / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


LOAD = _load_module()


class Server:
    """A uvicorn subprocess on 127.0.0.1 whose output goes to a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = _RUNNING.search(self.log())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASERVICE", "A8_"))}
    env.pop("OTEL_SERVICE_NAME", None)
    env.update(extra)
    return env


def _wait(what: str, condition: Callable[[], Any], timeout_s: float, server: Server) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; service log:\n{server.log()[-4000:]}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The DataService stub, shared by the tests of this file (faults cleared by each)."""
    log_path = tmp_path_factory.mktemp("stub") / "stub.log"
    server = Server(
        ["-m", "examples.dataservice.stub", "--port", "0", "--seed", "7"], _env(), log_path
    )
    yield server
    server.stop()


@pytest.fixture
def faults(stub: Server) -> Iterator[Callable[..., None]]:
    """``faults(latency_ms=300)`` switches the stub; cleared after the test."""

    def switch(**body: Any) -> None:
        response = httpx.post(f"{stub.url}/admin/faults", json=body, timeout=5, trust_env=False)
        assert response.status_code == 200, response.text

    yield switch
    switch()


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    """A loopback telemetry ingest (the plan's A8_URL)."""
    with IngestServer() as server:
        yield server


#: The hard triggers a test's plan can hold: each test gets only the one it is about, so a
#: slow machine cannot roll back for another reason first.
TRIGGERS = {
    # p95 above 150 ms for 2 s (over a 2 s window)
    "p95_breach": """
signal = "latency_p95_ms"
above = 150
for = "2s"
window = "2s"
""",
    # any shadow mismatch in the last 5 s
    "ledger_mismatch": """
signal = "ledger_mismatches"
above = 0
window = "5s"
""",
}


def _plan(tmp_path: Path, percent: float, trigger: str | None) -> Path:
    """Stage 1 at ``percent`` for ten minutes (no gate decides during a test, even one that
    a loaded machine slows to a minute of load), then 100 %; ``trigger`` one of
    :data:`TRIGGERS` or none. Phase 2 waits for phase 1."""
    triggers = (
        f'[[flags.{FLAG}.triggers]]\nname = "{trigger}"{TRIGGERS[trigger]}' if trigger else ""
    )
    path = tmp_path / "plan.toml"
    path.write_text(
        f"""
[telemetry]
url_env = "A8_URL"
app = "dataservice_example_test"

[decisions]
latency_margin = 0.5

[flags.{FLAG}]
tick = "1s"

[[flags.{FLAG}.stages]]
percent = {percent}
duration = "10m"
window = "5s"
max_p95_ms = 150

[[flags.{FLAG}.stages]]
percent = 100
duration = "60s"
window = "5s"

{triggers}

[flags.{USER_FLAG}]
after = "{FLAG}"
tick = "1s"

[[flags.{USER_FLAG}.stages]]
percent = 50
duration = "60s"
"""
    )
    return path


class Service:
    """The example service under ``uvicorn --factory``, with its plan, store and ingest."""

    def __init__(
        self,
        tmp_path: Path,
        stub: Server,
        ingest: IngestServer,
        percent: float,
        trigger: str | None,
        decide: bool = True,
        plan: Path | None = None,
    ) -> None:
        """``plan``: a plan of the caller's (by default one stage at ``percent``, with
        ``trigger``)."""
        self.plan = plan if plan is not None else _plan(tmp_path, percent, trigger)
        self.store = f"file://{tmp_path / 'state.json'}"
        self.reports = tmp_path / "reports"
        self.env = _env(
            DATASERVICE_URL=stub.url,
            DATASERVICE_EXAMPLE_PLAN=str(self.plan),
            DATASERVICE_EXAMPLE_STORE=self.store,
            DATASERVICE_EXAMPLE_REPORTS=str(self.reports),
            DATASERVICE_EXAMPLE_SHADOW_RATE="1",
            A8_URL=ingest.url,
            DATASERVICE_CANARY_DECIDE="1" if decide else "0",
        )
        self.server = Server(
            [
                "-m",
                "uvicorn",
                "--factory",
                "examples.dataservice.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-access-log",
            ],
            self.env,
            tmp_path / "service.log",
        )
        self.url = self.server.url
        self._where = ("--plan", str(self.plan), "--store", self.store)
        self.started: subprocess.CompletedProcess[str] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``openfeature-canary ARGS --plan PLAN --store STORE``, as an operator runs it."""
        done = subprocess.run(
            [sys.executable, "-m", "openfeature_canary", *args, *self._where],
            cwd=self.plan.parent,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done

    def flags(self) -> dict[str, Any]:
        """What the service serves per flag (``GET /healthz``)."""
        response = httpx.get(f"{self.url}/healthz", timeout=5, trust_env=False)
        response.raise_for_status()
        flags: dict[str, Any] = response.json()["flags"]
        return flags

    def start_flag(self, percent: float) -> None:
        """``start --force`` with the CLI (its log on stderr); wait until the service serves
        ``percent``."""
        self.started = self.cli("start", FLAG, "--force", "--log-format", "text")
        _wait(
            f"{FLAG} served at {percent}%",
            lambda: self.flags()[FLAG]["percent"] == percent,
            5,
            self.server,
        )

    def load(self, requests: int, **kwargs: Any) -> Any:
        """``load.run_load`` against this service (bounded to 120 s: a loaded machine under
        pytest -n N serves far fewer requests a second than a quiet one; at load 11 the
        1200 requests of the stage-share test took 47-60 s, and did not all fit in 60 s at
        load 16)."""
        kwargs.setdefault("concurrency", 16)
        kwargs.setdefault("duration_s", 120.0)
        kwargs.setdefault("timeout_s", 30.0)
        return LOAD.run_load(self.url, requests=requests, **kwargs)

    def drive_until_rolled_back(self, timeout_s: float) -> dict[str, Any]:
        """Send dashboard traffic in small batches until the flag is rolled back."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.load(80, endpoint="dashboard", duration_s=5.0)
            state: dict[str, Any] = self.flags()[FLAG]
            if state["status"] == "rolled_back":
                return state
        raise AssertionError(f"no rollback in {timeout_s} s:\n{self.server.log()[-4000:]}")


@pytest.fixture
def service_factory(
    tmp_path: Path, stub: Server, ingest: IngestServer
) -> Iterator[Callable[..., Service]]:
    """``service_factory(percent, trigger, decide=True)`` starts the service on a plan of its
    own (``decide=False``: ``DATASERVICE_CANARY_DECIDE=0``, serve only)."""
    started: list[Service] = []

    def start(percent: float, trigger: str | None, decide: bool = True) -> Service:
        service = Service(tmp_path, stub, ingest, percent, trigger, decide)
        started.append(service)
        return service

    yield start
    for service in started:
        service.server.stop()


def _rollback_event(ingest: IngestServer, service: Service) -> dict[str, Any]:
    found = _wait(
        "canary_rollback at the ingest",
        lambda: [e for e in ingest.named("canary_rollback") if e["properties"]["flag"] == FLAG],
        10,
        service.server,
    )
    assert len(found) == 1, found
    return dict(found[0])


def _scrape(service: Service) -> list[Sample]:
    response = httpx.get(f"{service.url}/metrics", timeout=5, trust_env=False)
    response.raise_for_status()
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def _value(samples: list[Sample], name: str, labels: Mapping[str, str]) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (asserts one)."""
    found = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert found, f"no {name} with {dict(labels)}"
    return sum(s.value for s in found)


# --------------------------------------------------------------------------- tests


def test_service_at_stage_canary_share_matches_stage(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory(25, None)
    service.start_flag(25)

    result = service.load(1200, endpoint="both", seed=11)

    # Every request answered, by one of the two paths.
    assert result.transport_errors == 0
    assert sum(result.statuses.values()) == 1200
    assert {code for (_e, _p, code) in result.statuses} == {200}
    # A6: the canary share is the stage's 25 % within 4.5 binomial standard deviations
    # (n = 600 units with fresh ids: expected 150, sd 10.6).
    n = result.count("dashboard", "canary") + result.count("dashboard", "current")
    assert n == 600
    expected, sd = n * 0.25, math.sqrt(n * 0.25 * 0.75)
    assert abs(result.count("dashboard", "canary") - expected) <= 4.5 * sd, result.report()
    # A1 (phase 2) is pending: every session read takes the old path.
    assert result.count("sessions", "current") == 600
    assert result.count("sessions", "canary") == 0

    # /metrics: the request histogram by variant, the service name, the rollout gauges.
    samples = _scrape(service)
    canary = {"feature_flag_key": FLAG, "feature_flag_result_variant": "on"}
    assert _value(samples, "http_server_request_duration_seconds_count", canary) == result.count(
        "dashboard", "canary"
    )
    assert _value(samples, "target_info", {"service_name": "dataservice-example"}) == 1
    assert _value(samples, "canary_rollout_percent", {"feature_flag_key": FLAG}) == 25
    assert _value(samples, "canary_event_loop_lag_seconds_count", {}) > 0
    # The start was made by the CLI: the service, which only saw it in the store, logs no
    # INFO line for it (one line per transition, by the process that made it).
    started = f"{FLAG}: start pending stage 0 (0%) -> running stage 1 (25%)"
    assert started not in service.server.log()
    assert service.started is not None
    assert started in service.started.stderr, service.started.stderr


def test_service_stub_latency_rolls_back_p95_breach_then_old_path(
    service_factory: Callable[..., Service],
    faults: Callable[..., None],
    ingest: IngestServer,
) -> None:
    service = service_factory(50, "p95_breach")
    service.start_flag(50)
    faults(latency_ms=300)

    state = service.drive_until_rolled_back(timeout_s=20)

    assert state == {"status": "rolled_back", "stage": 0, "percent": 0.0}
    event = _rollback_event(ingest, service)
    props = event["properties"]
    # The hard trigger, or sooner the stage's own P95 line (also 150 ms) judged on evidence:
    # either way the reason names the signal, and the rule says which acted.
    assert props["reason"] == "p95_breach"
    assert props["rule"] in ("trigger:p95_breach", "gate:p95_line", "gate:latency_tail"), props
    assert props["from_pct"] == 50
    assert props["threshold"] == 150
    assert props["value"] > 150
    # Every request after the rollback takes the old path (and is fast again).
    after = service.load(200, endpoint="dashboard")
    assert after.count("dashboard", "current") == 200, after.report()
    assert after.count("dashboard", "canary") == 0
    log = service.server.log()
    # The engine's one INFO line, by the process that decided (this one, alone on its store):
    # from running, or from paused when a loaded machine slowed the baseline past the stage's
    # line first (the gate pauses; the p95 trigger then rolls back).
    lines = re.findall(
        rf"INFO \[\d+\] openfeature_canary[.\w]*: {FLAG}: rollback (?:running|paused) stage 1 "
        r"\(50%\) -> rolled_back stage 0 \(0%\): reason=p95_breach rule=\S+ value=\S+ "
        r"threshold=150 ms .*by=\S+",
        log,
    )
    assert len(lines) == 1, log[-4000:]
    assert (service.reports / "canary_abort.md").is_file()
    assert _value(_scrape(service), "canary_rollbacks_total", {"feature_flag_key": FLAG}) == 1


def test_service_stub_wrong_data_rolls_back_ledger_mismatch(
    service_factory: Callable[..., Service],
    faults: Callable[..., None],
    ingest: IngestServer,
) -> None:
    service = service_factory(50, "ledger_mismatch")
    service.start_flag(50)
    faults(wrong_data=True)

    state = service.drive_until_rolled_back(timeout_s=15)

    assert state["status"] == "rolled_back"
    props = _rollback_event(ingest, service)["properties"]
    assert props["reason"] == "ledger_mismatch"
    assert props["value"] >= 1
    after = service.load(200, endpoint="dashboard")
    assert after.count("dashboard", "current") == 200, after.report()
    mismatches = _value(
        _scrape(service), "canary_ledger_mismatches_total", {"feature_flag_key": FLAG}
    )
    assert mismatches >= 1
    # The store says so too, for every operator (the CLI's status).
    (status,) = json.loads(service.cli("status", FLAG, "--json").stdout)["flags"]
    assert (status["status"], status["reason"]) == ("rolled_back", "ledger_mismatch")
    assert status["last_decision"]["numbers"]["value"] >= 1


class Controller:
    """``openfeature-canary controller`` beside a service, on its plan, store and ingest."""

    def __init__(self, service: Service) -> None:
        folder = service.plan.parent
        self.out, self.err = folder / "controller.out", folder / "controller.err"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openfeature_canary",
                "controller",
                *service._where,
                "--interval",
                "0.2",
                "--lease-ttl",
                "5",
            ],
            cwd=folder,
            env=service.env,
            stdout=self.out.open("wb"),
            stderr=self.err.open("wb"),
        )
        banner = _wait(
            "the controller's start line",
            lambda: self.out.read_text().partition("\n")[0],
            _START_TIMEOUT_S,
            service.server,
        )
        self.process_id = banner.split()[1].rstrip(":")

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed after 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)


def test_serve_only_service_is_rolled_back_by_the_controller(
    service_factory: Callable[..., Service],
    faults: Callable[..., None],
    ingest: IngestServer,
) -> None:
    service = service_factory(50, "ledger_mismatch", decide=False)
    controller = Controller(service)
    try:
        store = open_store(service.store)
        assert isinstance(store, FleetStore)
        _wait(
            "the controller's lease",
            lambda: store.lease_holder(time.time()) == controller.process_id,
            _START_TIMEOUT_S,
            service.server,
        )
        service.start_flag(50)
        faults(wrong_data=True)

        state = service.drive_until_rolled_back(timeout_s=30)

        assert state["status"] == "rolled_back"
        props = _rollback_event(ingest, service)["properties"]
        assert (props["reason"], props["rule"]) == ("ledger_mismatch", "trigger:ledger_mismatch")
        # The controller decided, from the signals the service published; the service never
        # held the lease (it logs no "decides" line) and logged no transition at INFO.
        rolled = store.load(FLAG)
        assert rolled is not None and rolled.log[-1].action == "rollback"
        assert rolled.log[-1].by == controller.process_id
        assert set(store.records()) - {controller.process_id}, "the service published nothing"
    finally:
        code = controller.stop()
    assert code == 0, controller.err.read_text()
    err, log = controller.err.read_text(), service.server.log()
    assert err.count(f"{FLAG}: rollback running stage 1 (50%) -> rolled_back") == 1, err
    assert "reason=ledger_mismatch rule=trigger:ledger_mismatch" in err, err
    assert not re.search(r"process \S+ decides", log), log[-4000:]
    assert f"{FLAG}: rollback" not in log, log[-4000:]
    assert "serve only" in log


def test_decide_switch_reads_yes_no_and_refuses_another_word() -> None:
    code = (
        "from examples.dataservice.app import Settings as S\n"
        "print(S.resolve({}).decide, S.resolve({'DATASERVICE_CANARY_DECIDE': '0'}).decide)\n"
        "S.resolve({'DATASERVICE_CANARY_DECIDE': 'maybe'})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["True", "False"], done.stderr
    assert done.returncode != 0
    assert "ValueError: DATASERVICE_CANARY_DECIDE='maybe': expected 1" in done.stderr


def test_load_non_loopback_url_refused() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LOAD.run_load("http://192.0.2.10:8700", requests=1)
    with pytest.raises(ValueError, match="loopback"):
        LOAD.run_load("http://example.com/", requests=1)
    with pytest.raises(ValueError, match="requests"):
        LOAD.run_load("http://127.0.0.1:1", requests=0)
