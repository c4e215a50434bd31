"""The live status page over plain HTTP: its JSON, escaping, loopback binding, read-only
methods, and its wiring into the provider (served while the process decides) and the
``controller`` command. The page in a browser is tests/test_web_browser.py."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from openfeature.contrib.provider.canary import CanaryProvider

from openfeature_canary import ManualClock, RolloutPlan, load_plan
from openfeature_canary.engine import Engine, EngineOptions, build_engine
from openfeature_canary.policy import Rollout
from openfeature_canary.telemetry import setup_telemetry
from openfeature_canary.web import DecidingStatusPage, StatusPage, snapshot

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
CONTROLLER = (sys.executable, "-m", "openfeature_canary", "controller", "--plan", str(EXAMPLE))
NASTY = '<img src=x onerror=alert(1)> & "quoted" </script>'

T = TypeVar("T")


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


@pytest.fixture
def rollout(plan: RolloutPlan) -> Rollout:
    return Rollout(plan, store="memory://", clock=ManualClock(start=1_800_000_000.0))


@pytest.fixture
def page(rollout: Rollout) -> Iterator[StatusPage]:
    with StatusPage(rollout, title="<b>shop</b>") as page:
        yield page


def request(url_port: int, method: str, path: str, host: str = "127.0.0.1") -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, url_port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, (resp.getheaders(), resp.read())
    finally:
        conn.close()


def status_json(port: int) -> dict[str, Any]:
    code, (_headers, body) = request(port, "GET", "/api/status")
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_json_shows_stage_percent_timeline_lines_and_log(
    rollout: Rollout, page: StatusPage, plan: RolloutPlan
) -> None:
    before = status_json(page.port)
    flag = next(f for f in before["flags"] if f["key"] == FLAG)
    assert (flag["status"], flag["stage"], flag["percent"]) == ("pending", 0, 0)
    assert flag["last_decision"] is None

    rollout.controller(FLAG).start()
    rollout.clock.advance(125.0)  # type: ignore[attr-defined]
    flag = next(f for f in status_json(page.port)["flags"] if f["key"] == FLAG)
    stages = plan.flag(FLAG).stages
    assert (flag["status"], flag["stage"]) == ("running", 1)
    assert flag["percent"] == stages[0].percent
    assert flag["in_stage_s"] == 125.0
    assert [s["where"] for s in flag["timeline"]] == ["running"] + ["next"] * (len(stages) - 1)
    assert flag["timeline"][0]["left_s"] == stages[0].duration_s - 125.0
    assert flag["timeline"][0]["lines"]["p95_ms"] == stages[0].max_p95_ms
    assert flag["timeline"][0]["lines"]["error_rate"] == stages[0].max_error_rate
    assert flag["last_decision"]["action"] == "start"
    assert [t["name"] for t in flag["triggers"]] == [t.name for t in plan.flag(FLAG).triggers]


def test_json_equals_the_snapshot_of_the_rollout(rollout: Rollout, page: StatusPage) -> None:
    rollout.controller(FLAG).start()
    assert status_json(page.port) == json.loads(json.dumps(snapshot(rollout)))


def test_everything_shown_is_escaped(rollout: Rollout, page: StatusPage) -> None:
    ctl = rollout.controller(FLAG)
    ctl.start()
    ctl.rollback(NASTY)
    code, (headers, body) = request(page.port, "GET", "/api/status")
    assert code == 200
    assert b"<" not in body and b">" not in body and b"&" not in body
    flag = next(f for f in json.loads(body)["flags"] if f["key"] == FLAG)
    # the operator's own words (the reason is ``operator``), the same text, made inert
    assert flag["last_decision"]["numbers"]["note"] == NASTY
    assert [s["where"] for s in flag["timeline"]][:2] == ["rolled_back", "next"]
    assert dict(headers)["Content-Type"] == "application/json"
    assert dict(headers)["X-Content-Type-Options"] == "nosniff"

    code, (headers, html) = request(page.port, "GET", "/")
    assert code == 200
    assert b"<b>shop</b>" not in html and b"&lt;b&gt;shop&lt;/b&gt;" in html
    csp = dict(headers)["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    code, (_h, script) = request(page.port, "GET", "/app.js")
    assert code == 200 and b"innerHTML" not in script and b"textContent" in script


def test_binds_loopback_only_by_default(page: StatusPage) -> None:
    assert page.host == "127.0.0.1" and page.url == f"http://127.0.0.1:{page.port}/"
    # Were the page on 0.0.0.0, no other address could take its port; 127.0.0.2 can.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.2", page.port))
    assert request(page.port, "GET", "/api/status")[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_is_read_only(rollout: Rollout, page: StatusPage, method: str) -> None:
    rollout.controller(FLAG).start()
    version = rollout.controller(FLAG).state.version
    for path in ("/", "/api/status", "/api/rollback"):
        code, (headers, _body) = request(page.port, method, path)
        assert code == 405, (method, path)
        assert dict(headers)["Allow"] == "GET, HEAD"
    assert rollout.controller(FLAG).state.version == version
    assert request(page.port, "GET", "/nowhere")[0] == 404
    code, (_h, body) = request(page.port, "HEAD", "/api/status")
    assert code == 200 and body == b""


@pytest.mark.parametrize(
    ("host", "port", "named"),
    [
        ("127.0.0.1", 70000, "port"),
        ("127.0.0.1", -1, "port"),
        ("my host", 0, "host"),
        ("", 0, "host"),
    ],
)
def test_bad_address_is_one_line_naming_it(
    rollout: Rollout, host: str, port: int, named: str
) -> None:
    with pytest.raises(ValueError, match=f"status page {named}") as info:
        StatusPage(rollout, host=host, port=port)
    assert "\n" not in str(info.value)


def test_stopped_page_frees_its_port(rollout: Rollout) -> None:
    page = StatusPage(rollout).start()
    port = page.port
    page.stop()
    page.stop()  # idempotent
    with StatusPage(rollout, port=port) as again:
        assert again.port == port and status_json(port)["flags"]


# ------------------------------------------------------------------ wiring


def test_provider_serves_the_page_of_its_single_process(plan: RolloutPlan, tmp_path: Path) -> None:
    provider = CanaryProvider(
        plan, store="memory://", reports_dir=tmp_path, background=False, status_page_port=0
    )
    assert provider.status_page is not None and not provider.status_page.serving
    provider.initialize(None)  # type: ignore[arg-type]
    try:
        provider.controller(FLAG).start()
        port = provider.status_page.page.port
        flag = next(f for f in status_json(port)["flags"] if f["key"] == FLAG)
        assert (flag["status"], flag["stage"]) == ("running", 1)
    finally:
        provider.shutdown()
    assert not provider.status_page.serving
    with pytest.raises(ValueError, match="status page port"):
        CanaryProvider(plan, store="memory://", status_page_port=99999)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _decider(plan: RolloutPlan, url: str, clock: ManualClock) -> Engine:
    options = EngineOptions(store=url, clock=clock, fleet=True, lease_ttl=5.0, refresh_interval=0.2)
    engine = build_engine(plan, options)
    engine.runner.read_store()
    return engine


def test_in_a_fleet_only_the_decider_serves_and_a_new_decider_takes_the_port(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'state.json'}"
    port = _free_port()
    clock = ManualClock(start=1_800_000_000.0)
    first, second = _decider(plan, url, clock), _decider(plan, url, clock)
    pages = [DecidingStatusPage(e.rollout, port=port) for e in (first, second)]
    try:
        first.runner.run_once()  # takes the lease
        second.runner.run_once()  # finds it held
        assert first.fleet is not None and first.fleet.leader
        for page in pages:
            page.sync()
        assert [p.serving for p in pages] == [True, False]
        shown = status_json(port)["decider"]
        assert shown["deciding"] and shown["process"] == first.fleet.process_id

        first.stop()  # releases the lease
        pages[0].sync()
        assert not pages[0].serving
        clock.advance(1.0)  # past the wait between two asks of the store for the lease
        second.runner.run_once()
        pages[1].sync()
        assert pages[1].serving
        assert second.fleet is not None
        assert status_json(port)["decider"]["process"] == second.fleet.process_id
    finally:
        for page in pages:
            page.stop()
        second.stop()


def test_controller_command_serves_the_page(plan: RolloutPlan, tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'state.json'}"
    out, err = tmp_path / "controller.out", tmp_path / "controller.err"
    proc = subprocess.Popen(
        [
            *CONTROLLER,
            "--store",
            url,
            "--interval",
            "0.2",
            "--lease-ttl",
            "5",
            "--status-port",
            "0",
        ],
        cwd=tmp_path,
        stdout=out.open("wb"),
        stderr=err.open("wb"),
    )
    try:
        line = wait_for(
            lambda: next((x for x in out.read_text().splitlines() if "status page" in x), None),
            30,
            f"the page's line ({err.read_text() if err.exists() else ''})",
        )
        assert "http://127.0.0.1:" in line
        port = int(line.rsplit(":", 1)[1].strip("/ "))
        data = wait_for(
            lambda: data if (data := status_json(port))["decider"]["deciding"] else None,
            20,
            "the controller to decide",
        )
        assert data["decider"]["lease_holder"] == data["decider"]["process"]
        assert request(port, "POST", "/api/status")[0] == 405
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert "Traceback" not in err.read_text(), err.read_text()


def test_controller_rejects_a_bad_status_port(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'state.json'}"
    done = subprocess.run(
        [*CONTROLLER, "--store", url, "--status-port", "70000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "status page port" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_forked_worker_leaves_the_parents_page_serving_and_can_stop_its_own(
    rollout: Rollout,
) -> None:
    watch = DecidingStatusPage(rollout, port=_free_port(), poll_s=0.05).start()
    try:
        assert watch.serving
        pid = os.fork()
        if pid == 0:  # the child: its copy of the page is unbound, and stops at once
            code = 1
            try:
                stopped = threading.Thread(target=watch.stop, daemon=True)
                stopped.start()
                stopped.join(10)
                code = 0 if not stopped.is_alive() else 3
            finally:
                os._exit(code)
        end = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < end:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child's stop() hung on the parent's server")
        assert os.waitstatus_to_exitcode(done[1]) == 0
        assert watch.serving and status_json(watch.page.port)["flags"]  # the parent serves on
    finally:
        watch.stop()


def test_providers_of_a_fleet_share_one_port_that_follows_the_lease(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'state.json'}"
    port = _free_port()
    telemetries = [setup_telemetry(plan) for _ in range(2)]
    providers = [
        CanaryProvider(
            plan,
            store=url,
            telemetry=t,
            reports_dir=tmp_path / "reports",
            refresh_interval=0.1,
            lease_ttl=2.0,
            status_page_port=port,
        )
        for t in telemetries
    ]
    try:
        providers[0].initialize(None)  # type: ignore[arg-type]
        first = providers[0].fleet
        assert first is not None
        wait_for(lambda: first.leader, 20, "the first provider to decide")
        providers[1].initialize(None)  # type: ignore[arg-type]
        shown = wait_for(lambda: _shown_by(port), 20, "the decider's page")
        assert shown == first.process_id
        second = providers[1].fleet
        assert second is not None and not second.leader
        assert providers[1].status_page is not None and not providers[1].status_page.serving

        providers[0].shutdown()  # gives the lease up: the other takes it, and the port
        wait_for(lambda: _shown_by(port) == second.process_id, 20, "the new decider's page")
    finally:
        for provider in providers:
            provider.shutdown()
        for t in telemetries:
            t.shutdown()


def _shown_by(port: int) -> str | None:
    try:
        shown: str = status_json(port)["decider"]["process"]
    except OSError:  # nobody binds the port between two deciders
        return None
    return shown
