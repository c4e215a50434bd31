"""Debian's Prometheus (``/usr/bin/prometheus``) on a free 127.0.0.1 port, for tests.

    with prometheus_server(["127.0.0.1:41873"], tmp_path) as prom:
        prom.wait_for('up == 1')
        prom.query("sum(http_server_request_duration_seconds_count)")

It scrapes the given targets every second with a temporary config and TSDB folder, listens on
loopback only and is stopped (then killed if need be) on exit. A missing binary fails loudly:
``scripts/test.sh`` installs the ``prometheus`` package. Prometheus applies its targets about
5 s after it starts (its discovery manager's throttle), so the first scrape is ~6 s away.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from ports import free_port

__all__ = [
    "CannedPrometheus",
    "DrippingServer",
    "PrometheusServer",
    "free_port",
    "prometheus_server",
]

PROMETHEUS = Path("/usr/bin/prometheus")
SCRAPE_INTERVAL_S = 1.0
START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class PrometheusServer:
    """A running Prometheus: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` (now, or at unix time ``at``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        answer = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=5.0).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, expr: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the instant query ``expr`` gives at least one series."""
        self.wait_until(f"Prometheus: {expr}", lambda: bool(self.query(expr)), timeout_s)

    def wait_until(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        """Until ``ready()`` is true; fails with the log's end when Prometheus died or it took
        longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            assert code is None, f"prometheus exited ({code}):\n{self.tail()}"
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.tail()}"
            time.sleep(0.1)

    def tail(self) -> str:
        """The end of Prometheus' log."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _config(targets: list[str]) -> dict[str, Any]:
    interval = f"{SCRAPE_INTERVAL_S:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": "canary-test", "static_configs": [{"targets": list(targets)}]}
        ],
    }


@contextmanager
def prometheus_server(targets: list[str], folder: Path) -> Iterator[PrometheusServer]:
    """Start Prometheus scraping ``targets`` (``host:port`` serving ``/metrics``) every second,
    its config, data and log under ``folder``; yield once it is ready; stop it after."""
    assert PROMETHEUS.is_file(), (
        f"{PROMETHEUS} not found: install Debian's prometheus package "
        "(apt-get install prometheus; scripts/test.sh does)"
    )
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(targets)), encoding="utf-8")
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
    try:
        server.wait_until(
            "Prometheus ready",
            lambda: httpx.get(f"{server.url}/-/ready", timeout=1.0).status_code == 200,
            START_TIMEOUT_S,
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# --------------------------------------------------------------- stand-ins for a failing one
#
# A real Prometheus cannot be made to answer 500, garbage or a byte at a time on demand:
# these tiny servers on 127.0.0.1 do, for the fault tests.


class CannedPrometheus:
    """An HTTP server on 127.0.0.1 answering every ``POST /api/v1/query`` with
    ``answer(query) -> (status, body)``; ``queries`` records what was asked."""

    def __init__(self, answer: Callable[[str], tuple[int, bytes]]) -> None:
        self.answer = answer
        self.queries: list[str] = []
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                query = form.get("query", [""])[0]
                canned.queries.append(query)
                status, body = canned.answer(query)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> CannedPrometheus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class DrippingServer:
    """Accepts connections and answers a byte every ``every_s`` seconds, forever: each read
    succeeds, so only a total deadline ends a request. ``connections`` counts the accepts."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s = every_s
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> DrippingServer:
        self._start(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._start(self._drip, conn)

    def _drip(self, conn: socket.socket) -> None:
        answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 100_000
        with conn:
            for byte in answer:
                if self._stop.wait(self.every_s):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client gave up and closed: that is the point
