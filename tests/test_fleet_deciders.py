"""Who decides in a fleet (spec §10): two deciders racing advance once; a decider killed with
SIGKILL is replaced within its lease time and the rollout goes on; ``openfeature-canary
controller`` decides for services that only serve and publish, and gives its lease up on
SIGTERM. Real processes (spawned), a real ``redis-server`` and a real file store."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from openfeature_canary import LogEntry, Rollout, load_plan, open_store
from openfeature_canary.stores import FleetStore

FLAG = "fleet-canary"
SPAWN = multiprocessing.get_context("spawn")
TICK_S = 1.0
STAGE_S = 3.0
RECORD_EVERY_S = 0.02  # each process: 50 canary and 50 baseline requests a second


def _plan(tmp_path: Path, canary_stages: int) -> Path:
    """``canary_stages`` stages of :data:`STAGE_S` each (25 %, 50 %, ...), then 100 % for an
    hour: the advances a test waits for come at a few seconds' pace."""
    stages = "".join(
        f"""
[[flags.{FLAG}.stages]]
percent = {25 * (i + 1)}
duration = "{STAGE_S:g}s"
window = "1s"
max_p95_ms = 2000
max_error_rate = 0.01
"""
        for i in range(canary_stages)
    )
    path = tmp_path / "plan.toml"
    path.write_text(
        f"""
[reports]
dir = "{tmp_path / "reports"}"

[decisions]
detect_error_rate = 0.2
detect_slow_share = 0.5
latency_margin = 0.5

[flags.{FLAG}]
tick = "{TICK_S:g}s"
{stages}
[[flags.{FLAG}.stages]]
percent = 100
duration = "1h"
window = "1m"
"""
    )
    return path


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path).start()
    yield srv
    srv.stop()


def _store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        return server.url
    return f"file://{tmp_path / 'state.json'}"


# ------------------------------------------------------------------ the service processes


def _service(
    plan_path: str, url: str, decide: bool, lease_ttl: float, out: Any, stop: str
) -> None:  # pragma: no cover - runs in a child
    """A service process: a fleet-mode provider on ``url`` and steady traffic on both cohorts
    (recorded as a server's middleware would), until the file ``stop`` exists."""
    import logging

    from openfeature.contrib.provider.canary import CanaryProvider
    from openfeature.evaluation_context import EvaluationContext

    from openfeature_canary import setup_telemetry
    from openfeature_canary.instrumentation import record_request

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("openfeature_canary").setLevel(logging.INFO)  # the role changes
    plan = load_plan(plan_path)
    telemetry = setup_telemetry(plan)
    provider = CanaryProvider(
        plan,
        store=url,
        telemetry=telemetry,
        environ={},
        refresh_interval=0.1,
        decide=decide,
        lease_ttl=lease_ttl,
    )
    provider.initialize(EvaluationContext())
    assert provider.fleet is not None
    out.put((provider.fleet.process_id, os.getpid()))
    meter_provider = telemetry.meter_provider
    while not os.path.exists(stop):
        time.sleep(RECORD_EVERY_S)
        record_request(FLAG, "on", 0.01, 200, meter_provider=meter_provider)
        record_request(FLAG, "off", 0.01, 200, meter_provider=meter_provider)
    provider.shutdown()


class _Services:
    """``n`` spawned service processes; their fleet ids mapped to their pids.

    They stop when a file appears, not on a shared ``multiprocessing.Event``: setting one hangs
    once a process that waited on it was SIGKILLed."""

    def __init__(self, plan: Path, url: str, n: int, *, decide: bool, lease_ttl: float) -> None:
        self.out = SPAWN.Queue()
        self.stop_path = plan.parent / "stop-services"
        self.procs = [
            SPAWN.Process(
                target=_service,
                args=(str(plan), url, decide, lease_ttl, self.out, str(self.stop_path)),
            )
            for _ in range(n)
        ]
        for p in self.procs:
            p.start()
        self.pids: dict[str, int] = dict(self.out.get(timeout=30) for _ in self.procs)

    def stop(self) -> None:
        """Stop every process still alive (a clean shutdown), SIGKILL after 10 s."""
        self.stop_path.touch()
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


def _start(plan: Path, url: str) -> None:
    """An operator starts the rollout (stage 1)."""
    rollout = Rollout(load_plan(plan), store=url)
    rollout.load()
    rollout.controller(FLAG).start()


def _log(url: str) -> tuple[LogEntry, ...]:
    state = open_store(url).load(FLAG)
    return () if state is None else state.log


def _advances(url: str) -> list[LogEntry]:
    return [e for e in _log(url) if e.action == "advance"]


def _fleet(url: str) -> FleetStore:
    store = open_store(url)
    assert isinstance(store, FleetStore)
    return store


def _wait(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; fails naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.02)


# ------------------------------------------------------------------ two deciders racing


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_two_deciders_racing_over_a_stage_boundary_advance_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str]
) -> None:
    url = _store_url(kind, tmp_path, request)
    plan = _plan(tmp_path, canary_stages=1)
    services = _Services(plan, url, 2, decide=True, lease_ttl=5.0)
    try:
        store = _fleet(url)
        holder = _wait(lambda: store.lease_holder(time.time()), 10, "a decider")
        assert holder in services.pids
        _start(plan, url)
        _wait(lambda: _advances(url), STAGE_S + 10, "the advance at the stage's end")
        # Two more ticks: time for a second decider, if there were one, to advance again.
        time.sleep(2 * TICK_S + 0.5)
        assert set(store.records()) == set(services.pids)  # both published, both competed
    finally:
        services.stop()
    advances = _advances(url)
    assert [(e.action, e.reason) for e in advances] == [("advance", "gate_passed")], _log(url)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err  # losing the race is not an error
    # One process took the role, at the start, and kept it: no flapping, no second decider.
    roles = re.findall(r"process (\S+) (decides|no longer decides)$", err, re.MULTILINE)
    assert roles == [(holder, "decides")], roles


# ------------------------------------------------------------------ the decider killed


def test_decider_killed_is_replaced_within_its_lease_time_and_the_rollout_goes_on(
    redis: RedisServer, tmp_path: Path
) -> None:
    lease_ttl = 2.0
    plan = _plan(tmp_path, canary_stages=2)
    services = _Services(plan, redis.url, 2, decide=True, lease_ttl=lease_ttl)
    try:
        store = _fleet(redis.url)
        _start(plan, redis.url)
        _wait(lambda: _advances(redis.url), STAGE_S + 10, "the first advance")
        holder = store.lease_holder(time.time())
        assert holder in services.pids, holder
        (survivor,) = set(services.pids) - {holder}
        os.kill(services.pids[holder], signal.SIGKILL)
        killed_at = time.monotonic()
        _wait(lambda: store.lease_holder(time.time()) == survivor, 10, "a takeover")
        takeover = time.monotonic() - killed_at
        print(
            f"\ndecider killed (lease {lease_ttl:g} s, tick {TICK_S:g} s): "
            f"taken over after {takeover:.2f} s"
        )
        assert takeover <= lease_ttl + TICK_S + 0.5  # the runner's poll and this one's
        second = _wait(lambda: len(_advances(redis.url)) >= 2, STAGE_S + 10, "a later advance")
        assert second
    finally:
        services.stop()
    assert [e.numbers.get("to_stage") for e in _advances(redis.url)] == [2, 3], _log(redis.url)


# ------------------------------------------------------------------ the controller command


def _controller(
    plan: Path, url: str, tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = tmp_path / "controller.out", tmp_path / "controller.err"
    store_args = ["--store", url, *extra]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openfeature_canary",
            "controller",
            "--plan",
            str(plan),
            *store_args,
        ],
        cwd=tmp_path,
        stdout=out.open("wb"),
        stderr=err.open("wb"),
    )
    return proc, out, err


def test_controller_decides_for_services_that_only_publish_and_releases_on_sigterm(
    tmp_path: Path,
) -> None:
    url = f"file://{tmp_path / 'state.json'}"
    plan = _plan(tmp_path, canary_stages=1)
    services = _Services(plan, url, 2, decide=False, lease_ttl=5.0)
    proc, out, err = _controller(plan, url, tmp_path, "--interval", "0.2", "--lease-ttl", "30")
    try:
        store = _fleet(url)
        line = _wait(lambda: out.read_text().partition("\n")[0], 20, "the controller's banner")
        me = line.split()[1].rstrip(":")
        holders: set[str | None] = set()

        def holds() -> bool:
            holders.add(store.lease_holder(time.time()))
            return me in holders

        _wait(holds, 10, f"the controller's lease ({line})")
        _start(plan, url)

        def advanced() -> bool:
            holders.add(store.lease_holder(time.time()))
            return bool(_advances(url))

        _wait(advanced, STAGE_S + 10, "the controller's advance")
        assert holders - {None} == {me}  # the services never decided
        assert set(store.records()) == set(services.pids)  # they published
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, err.read_text()
        assert store.lease_holder(time.time()) is None  # released: a 30 s lease ended at once
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        services.stop()
    assert [e.reason for e in _advances(url)] == ["gate_passed"], _log(url)
    assert "stopped" in out.read_text()
    assert "Traceback" not in err.read_text(), err.read_text()


@pytest.mark.parametrize(
    ("store", "args", "named"),
    [
        ("memory://", ["--interval", "1", "--lease-ttl", "5"], "memory://"),
        ("file", ["--interval", "5", "--lease-ttl", "5"], "--interval"),
        ("file", ["--interval", "6", "--lease-ttl", "5"], "--interval"),
        ("file", ["--interval", "0", "--lease-ttl", "5"], "--interval"),
    ],
)
def test_controller_bad_input_exits_2_with_one_line(
    store: str, args: list[str], named: str, tmp_path: Path
) -> None:
    url = store if store != "file" else f"file://{tmp_path / 'state.json'}"
    plan = _plan(tmp_path, canary_stages=1)
    proc, out, err = _controller(plan, url, tmp_path, *args)
    assert proc.wait(timeout=20) == 2
    lines = err.read_text().splitlines()
    assert len(lines) == 1 and named in lines[0], lines
    assert out.read_text() == ""
