"""What ``openfeature-canary controller`` says: one log line per transition it makes (on stderr,
by its process id), and, with ``--prometheus``, one line when Prometheus fails and one when it
answers again, not one per round. A real controller process on a real ``file://`` store; the
Prometheus is first a 127.0.0.1 port nothing listens on, then a real HTTP server bound to that
same port answering the instant-query API with empty vectors."""

from __future__ import annotations

import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ports import free_port

from openfeature_canary import Status, open_store
from openfeature_canary.stores import FleetStore

FLAG = "ctl-canary"
LEASE_TTL = "2"  # renewed every ttl/8 = 0.25 s: the test counts rounds by its renewals
EMPTY_VECTOR = json.dumps(
    {"status": "success", "data": {"resultType": "vector", "result": []}}
).encode()


def _plan(tmp_path: Path) -> Path:
    """One flag, no trigger (a start request is carried out at the next tick), short ticks."""
    path = tmp_path / "plan.toml"
    path.write_text(
        f"""
[reports]
dir = "{tmp_path / "reports"}"

[flags.{FLAG}]
tick = "0.5s"

[[flags.{FLAG}.stages]]
percent = 10
duration = "1h"
window = "1s"
max_p95_ms = 500
max_error_rate = 0.05

[[flags.{FLAG}.stages]]
percent = 100
duration = "1h"
window = "1m"
"""
    )
    return path


def _cli(plan: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "openfeature_canary", *args, "--plan", str(plan), "--store", url],
        cwd=plan.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


class _Controller:
    """``openfeature-canary controller`` in a subprocess, its output in files."""

    def __init__(self, plan: Path, url: str, *extra: str) -> None:
        self.out, self.err = plan.parent / "controller.out", plan.parent / "controller.err"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openfeature_canary",
                "controller",
                "--plan",
                str(plan),
                "--store",
                url,
                "--interval",
                "0.1",
                "--lease-ttl",
                LEASE_TTL,
                *extra,
            ],
            cwd=plan.parent,
            stdout=self.out.open("wb"),
            stderr=self.err.open("wb"),
        )
        banner = _wait(lambda: self.out.read_text().partition("\n")[0], 30, "the banner")
        self.process_id = banner.split()[1].rstrip(":")

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        """SIGTERM; it must exit 0 within 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(timeout=15) == 0, self.stderr()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _wait(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; fails naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.05)


def _renewals(url: str, count: int, what: str) -> None:
    """Wait until the controller renewed its lease ``count`` more times: it went through at
    least that many more rounds (it asks the store at most every ttl/8, once per round)."""
    store = open_store(url)
    assert isinstance(store, FleetStore)
    seen: set[float] = set()

    def renewed() -> bool:
        lease = store.lease()
        if lease is not None:
            seen.add(lease.expires)
        return len(seen) > count

    _wait(renewed, 60, f"{count} lease renewals ({what})")


def _running(url: str) -> bool:
    state = open_store(url).load(FLAG)
    return state is not None and state.status is Status.RUNNING


@contextmanager
def _prometheus_on(port: int) -> Iterator[list[str]]:
    """An HTTP server on 127.0.0.1:``port`` answering every instant query with an empty
    vector (a Prometheus that scraped nothing yet); yields the queries it got."""
    queries: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            queries.append(self.rfile.read(length).decode())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(EMPTY_VECTOR)))
            self.end_headers()
            self.wfile.write(EMPTY_VECTOR)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield queries
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_controller_logs_once_each_transition_it_makes_with_its_id(tmp_path: Path) -> None:
    plan, url = _plan(tmp_path), f"file://{tmp_path / 'state.json'}"
    controller = _Controller(plan, url)
    try:
        _renewals(url, 1, "the controller holds the lease")
        _cli(plan, url, "start", FLAG)  # a request: the decider carries it out
        _wait(lambda: _running(url), 30, "the controller starts the flag")
        _renewals(url, 4, "rounds after the start")
    finally:
        controller.stop()
    err = controller.stderr()
    lines = re.findall(
        rf"INFO \[\d+\] openfeature_canary[.\w]*: {FLAG}: start pending stage 0 \(0%\) -> "
        r"running stage 1 \(10%\): reason=.+ rule=\S+.* by=(\S+)$",
        err,
        re.MULTILINE,
    )
    assert lines == [controller.process_id], err
    assert f"process {controller.process_id} decides" in err
    assert f"process {controller.process_id} stops deciding" in err
    assert "Traceback" not in err, err


def test_controller_says_once_when_prometheus_fails_and_once_when_it_answers(
    tmp_path: Path,
) -> None:
    plan, url = _plan(tmp_path), f"file://{tmp_path / 'state.json'}"
    port = free_port()  # nothing listens on it yet
    prometheus = f"http://127.0.0.1:{port}"
    controller = _Controller(plan, url, "--prometheus", prometheus)
    failing = f"Prometheus {prometheus} is failing"
    answers = f"Prometheus {prometheus} answers again"
    try:
        _renewals(url, 1, "the controller holds the lease")
        _cli(plan, url, "start", FLAG)
        _wait(lambda: failing in controller.stderr(), 30, "the failing line")
        _renewals(url, 8, "rounds while Prometheus is down")
        assert controller.stderr().count(failing) == 1, controller.stderr()
        with _prometheus_on(port) as queries:
            _wait(lambda: answers in controller.stderr(), 30, "the answers-again line")
            _renewals(url, 8, "rounds while Prometheus answers")
            assert queries
    finally:
        controller.stop()
    err = controller.stderr()
    assert err.count(failing) == 1, err
    assert err.count(answers) == 1, err
    assert err.index(failing) < err.index(answers)
    (line,) = [x for x in err.splitlines() if failing in x]
    assert "WARNING" in line and "Connect" in line, line  # it says why: connection refused
    assert "Traceback" not in err, err
