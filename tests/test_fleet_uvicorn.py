"""One decision for a multi-worker service: the example under ``uvicorn --workers 4``.

Every worker serves and publishes its signals to the ``file://`` store; one holds the decider
lease and judges the traffic of all four. The stage's information requirement is set so that
one worker's share of the traffic could not pass stage 1 in twice its duration, while the
fleet's passes it in its duration. And with the default settings on a ``redis://`` store,
the deciding worker killed with SIGKILL is replaced by another within 20 s (2 ticks of the
reference plan), which ``openfeature-canary status`` then names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_server import free_port
from redis_server import RedisServer
from test_example_dataservice import ROOT, Server, _env

from openfeature_canary import open_store
from openfeature_canary.demo._ingest_server import IngestServer
from openfeature_canary.plan import load_plan
from openfeature_canary.policy._gates import requests_to_go
from openfeature_canary.stores import FileStateStore, FleetStore

FLAG = "dataservice-read-canary"
WORKERS = 4
RPS = 14.0  # 7 canary requests a second at 50 %


def _plan(tmp_path: Path, tick: str = "1s") -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(
        f"""
[telemetry]
url_env = "A8_URL"
app = "dataservice_fleet_test"

[decisions]
detect_error_rate = 0.2
detect_slow_share = 0.5
latency_margin = 0.5

[flags.{FLAG}]
tick = "{tick}"

[[flags.{FLAG}.stages]]
percent = 50
duration = "10s"
window = "5s"
max_p95_ms = 2000
max_error_rate = 0.01

[[flags.{FLAG}.stages]]
percent = 100
duration = "1h"
window = "1m"
"""
    )
    return path


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Server]:
    server = Server(
        ["-m", "examples.dataservice.stub", "--port", "0", "--seed", "7"],
        _env(),
        tmp_path / "stub.log",
    )
    yield server
    server.stop()


def test_four_workers_decide_once_on_the_traffic_of_all(tmp_path: Path, stub: Server) -> None:
    plan_path = _plan(tmp_path)
    needed = requests_to_go(load_plan(plan_path).flag(FLAG), 1)
    # The premise: one worker's quarter of the canary traffic cannot inform stage 1 even in
    # twice its duration (then it would pause), the fleet's can within its duration.
    assert RPS * 0.5 / WORKERS * 20 < needed < RPS * 0.5 * 10
    state_path = tmp_path / "state.json"
    store = f"file://{state_path}"
    with IngestServer() as ingest:
        env = _env(
            DATASERVICE_URL=stub.url,
            DATASERVICE_EXAMPLE_PLAN=str(plan_path),
            DATASERVICE_EXAMPLE_STORE=store,
            DATASERVICE_EXAMPLE_REPORTS=str(tmp_path / "reports"),
            A8_URL=ingest.url,
        )
        port = free_port()
        service = _uvicorn(port, env, tmp_path)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, service)
            _cli(env, plan_path, store, "start", FLAG, "--force")
            started = time.monotonic()
            # The stage's 10 s and a little: every canary request is then one the gate saw.
            served = _drive(url, seconds=11.5)
            _wait_for(lambda: _advanced(state_path), 10)
            state = _state(state_path)
            advanced = [e for e in state["log"] if e["action"] == "advance"]
            assert len(advanced) == 1, (served, state["log"], service.log()[-3000:])
            assert advanced[0]["reason"] == "gate_passed"
            assert advanced[0]["at"] - _start_time(state) < 15.0  # at its duration, not 2x
            # The decider counted every worker's canary requests (the ones still in flight
            # or after the advance aside): far more than any one worker served.
            samples = advanced[0]["numbers"]["samples"]
            assert samples >= needed > samples / WORKERS * 2
            assert samples <= served["canary"]
            # Every worker published; the traffic was spread over several of them, and the
            # decider's sample count is the sum of theirs (those served after the advance, and
            # in flight at it, aside).
            records = FileStateStore(state_path).records()
            assert len(records) == WORKERS
            per_worker = [_canary_count(record) for _beat, record in records.values()]
            assert sum(1 for n in per_worker if n) >= 2, per_worker
            # The decision rests on more than any one worker served. (How the kernel spreads
            # connections varies run to run: one worker took 28 of 81 once, so the premise
            # "one worker's share is too little" is asserted on the rate, above.)
            assert max(per_worker) < samples and needed <= samples, (per_worker, samples)
            # In flight at the decision: up to two ticks of canary traffic (1 s each).
            assert sum(per_worker) - 2 * RPS <= samples <= sum(per_worker), (per_worker, samples)
            # Exactly one process committed the advance and queued its event.
            assert _wait_for(lambda: len(ingest.named("canary_stage_advanced")) >= 2, 10)
            events = [
                e for e in ingest.named("canary_stage_advanced") if e["properties"]["stage"] == 2
            ]
            assert len(events) == 1
            assert time.monotonic() - started < 60
            assert "Traceback" not in service.log(), service.log()[-3000:]
        finally:
            service.stop()


def _uvicorn(port: int, env: dict[str, str], tmp_path: Path) -> Server:
    return Server(
        [
            "-m",
            "uvicorn",
            "--factory",
            "examples.dataservice.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            "--no-access-log",
        ],
        env,
        tmp_path / "service.log",
    )


def test_deciding_worker_killed_is_replaced_within_two_ticks(tmp_path: Path, stub: Server) -> None:
    """Default settings (lease, refresh interval) and the reference plan's 10 s tick."""
    plan_path = _plan(tmp_path, tick="10s")
    redis = RedisServer(tmp_path).start()
    env = _env(
        DATASERVICE_URL=stub.url,
        DATASERVICE_EXAMPLE_PLAN=str(plan_path),
        DATASERVICE_EXAMPLE_STORE=redis.url,
        DATASERVICE_EXAMPLE_REPORTS=str(tmp_path / "reports"),
    )
    port = free_port()
    service = _uvicorn(port, env, tmp_path)
    try:
        shared = open_store(redis.url)
        assert isinstance(shared, FleetStore)
        _wait_ready(f"http://127.0.0.1:{port}", service)
        _cli(env, plan_path, redis.url, "start", FLAG, "--force")
        # Every worker has published (so all four compete) and one holds the lease.
        assert _wait_for(lambda: len(shared.records()) >= WORKERS, 30), service.log()[-3000:]
        holder = _wait_value(lambda: shared.lease_holder(time.time()), 30)
        assert isinstance(holder, str), service.log()[-3000:]
        pid = int(holder.split(":")[1])
        assert _parent_of(pid) == service.proc.pid  # one of uvicorn's workers
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        new = _wait_value(lambda: _other_holder(shared, holder), 60)
        takeover = time.monotonic() - killed_at
        print(f"\ndecider {holder} killed: {new} took the lease over after {takeover:.2f} s")
        assert isinstance(new, str), service.log()[-3000:]
        assert takeover <= 20.0, (takeover, service.log()[-3000:])
        assert _parent_of(int(new.split(":")[1])) == service.proc.pid
        status = _cli(env, plan_path, redis.url, "status")
        assert f"decider: {new} (lease " in status, status
        assert "Traceback" not in service.log(), service.log()[-3000:]
    finally:
        service.stop()
        redis.stop()


def _other_holder(store: FleetStore, old: str) -> str | None:
    holder = store.lease_holder(time.time())
    return holder if holder not in (None, old) else None


def _parent_of(pid: int) -> int:
    """The parent process id of ``pid`` (Linux ``/proc``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _drive(url: str, seconds: float) -> dict[str, int]:
    """Dashboard requests at :data:`RPS`, each on a new connection (so that the kernel hands
    them to all the workers, not to the one that accepted a keep-alive connection)."""
    served = {"canary": 0, "current": 0}
    end = time.monotonic() + seconds
    n = 0
    with httpx.Client(
        limits=httpx.Limits(max_keepalive_connections=0), timeout=5, trust_env=False
    ) as client:
        while time.monotonic() < end:
            started = time.monotonic()
            response = client.get(
                f"{url}/api/v6/providers/{n % 50 + 1}/dashboard",
                headers={"X-Request-ID": f"fleet-{n}"},
            )
            path = response.headers.get("X-Read-Path", "none")
            served[path] = served.get(path, 0) + 1
            n += 1
            time.sleep(max(0.0, 1 / RPS - (time.monotonic() - started)))
    return served


def _canary_count(record: Any) -> int:
    return sum(
        sum(layout["counts"])
        for cohort in record["requests"]
        if cohort["flag"] == FLAG and cohort["variant"] == "on"
        for layout in cohort["hist"]
    )


def _cli(env: dict[str, str], plan: Path, store: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "openfeature_canary", *args, "--plan", str(plan), "--store", store],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait_ready(url: str, service: Server) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    assert _wait_for(ready, 20), service.log()


def _wait_for(condition: Any, timeout_s: float) -> bool:
    return _wait_value(condition, timeout_s) is not None


def _wait_value(condition: Any, timeout_s: float) -> Any:
    """The first true value of ``condition()`` (polled every 0.1 s), else None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return None


def _advanced(path: Path) -> bool:
    return any(e["action"] == "advance" for e in _state(path)["log"])


def _state(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    flags: dict[str, Any] = data["flags"]
    return dict(flags[FLAG])


def _start_time(state: dict[str, Any]) -> float:
    return float(next(e["at"] for e in state["log"] if e["action"] == "start"))
