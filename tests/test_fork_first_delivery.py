"""Issue 17 §5: a fork taken while the sender makes its very first delivery.

httpx imports its transport, httpcore, h11 and certifi lazily, on the first request. When that
import ran in the sender's thread and the process forked meanwhile, the child got modules half
imported for good: its own deliveries failed (``AttributeError`` setting up the client) or it
hung on the module's import lock. The sender now imports all of it before its thread starts.

Each trial is a fresh interpreter (nothing imported yet) with a provider, a ``file://`` store
and a real loopback ingest that answers slowly (so the first delivery is in flight). It makes
a transition, forks ``delay_ms`` later (0 to ~30 ms: 20 trials) and stops its own sender; the
child evaluates, ticks, rolls back and must deliver its rollback event itself, then exit
(a hang is killed at a deadline and fails the trial). Before the fix, 9 of 12 such trials failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

TRIALS = 20
STEP_MS = 1.5
#: How long the ingest takes to answer: the first delivery is in flight for this long.
ANSWER_DELAY_S = 0.3
CHILD_TIMEOUT_S = 20.0

_TRIAL = """
import os, sys, time
from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature_canary import load_plan

FLAG = "dataservice-read-canary"
plan_path, folder, url, delay_ms, child_timeout = sys.argv[1:6]
provider = CanaryProvider(
    load_plan(plan_path),
    store=f"file://{folder}/state.json",
    environ={"A8_URL": url},
    reports_dir=f"{folder}/reports",
)
api.set_provider_and_wait(provider)
provider.controller(FLAG).start(force=True)  # the first event: the sender wakes and posts
until = time.perf_counter() + float(delay_ms) / 1000
while time.perf_counter() < until:  # a busy wait: sleep() is too coarse for 1.5 ms steps
    pass
pid = os.fork()
if pid == 0:
    try:
        value = api.get_client().get_boolean_value(
            FLAG, False, EvaluationContext(targeting_key="u-1")
        )
        provider.runner.run_once()
        provider.controller(FLAG).rollback(f"forked child {delay_ms}")
        delivered = provider.flush_events(10.0)
        print(f"child evaluated={value} delivered={delivered}", flush=True)
        os._exit(0 if delivered else 3)
    except BaseException as exc:
        print(f"child failed: {exc!r}", flush=True)
        os._exit(4)
provider.shutdown()  # the child's rollback must go out through the child's own sender
deadline = time.monotonic() + float(child_timeout)
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        print(f"child exit {code}", flush=True)
        sys.exit(code)
    time.sleep(0.02)
os.kill(pid, 9)
os.waitpid(pid, 0)
print("child hung", flush=True)
sys.exit(9)
"""


class _SlowIngest(BaseHTTPRequestHandler):
    events: list[dict[str, object]]
    lock: threading.Lock

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with self.lock:
            self.events.extend(body["events"])
        time.sleep(ANSWER_DELAY_S)  # a slow ingest, so the first delivery is in flight
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def slow_ingest() -> Iterator[tuple[str, list[dict[str, object]]]]:
    events: list[dict[str, object]] = []
    handler = type("Handler", (_SlowIngest,), {"events": events, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", events
    finally:
        server.shutdown()
        server.server_close()


def test_forks_during_the_first_delivery_children_evaluate_tick_deliver_and_exit(
    example_plan_path: Path, tmp_path: Path, slow_ingest: tuple[str, list[dict[str, object]]]
) -> None:
    url, events = slow_ingest

    def trial(index: int) -> tuple[str, int, str]:
        delay_ms = f"{index * STEP_MS:g}"
        folder = tmp_path / f"trial-{index}"
        folder.mkdir()
        argv = [str(example_plan_path), str(folder), url, delay_ms, str(CHILD_TIMEOUT_S)]
        done = subprocess.run(
            [sys.executable, "-c", _TRIAL, *argv],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S + 60,
        )
        return delay_ms, done.returncode, (done.stdout + done.stderr)[-2000:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(trial, range(TRIALS)))
    failed = [(delay, code, out) for delay, code, out in results if code != 0]
    assert not failed, "\n\n".join(
        f"fork {delay} ms after the transition: exit {code}\n{out}" for delay, code, out in failed
    )
    # An operator's rollback says reason "operator"; the words given are its note.
    reasons = {e["properties"]["note"] for e in events if e["event_name"] == "canary_rollback"}  # type: ignore[index]
    assert reasons == {f"forked child {index * STEP_MS:g}" for index in range(TRIALS)}


_SPY = """
import sys, threading, time, urllib.request

class ImportSpy:
    \"\"\"Records every import that reaches the finders (a module not imported yet) made
    off the main thread.\"\"\"

    def __init__(self):
        self.seen = []

    def find_spec(self, name, path=None, target=None):
        thread = threading.current_thread()
        if thread is not threading.main_thread():
            self.seen.append(f"{thread.name}: {name}")
        return None

from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature_canary import load_plan, setup_telemetry

spy = ImportSpy()
sys.meta_path.insert(0, spy)  # from here on: what the provider's own threads import
FLAG = "dataservice-read-canary"
plan_path, folder, url = sys.argv[1:4]
plan = load_plan(plan_path)
telemetry = setup_telemetry(plan, prometheus_port=0)
provider = CanaryProvider(
    plan,
    store=f"file://{folder}/state.json",
    environ={"A8_URL": url},
    reports_dir=f"{folder}/reports",
    telemetry=telemetry,
    refresh_interval=0.05,
)
rounds = []
run_once = provider.runner.run_once
def counted():
    run_once()
    rounds.append(1)
provider.runner.run_once = counted  # the runner's thread calls it: count its rounds
api.set_provider_and_wait(provider)
client = api.get_client()
for i in range(20):
    client.get_boolean_value(FLAG, False, EvaluationContext(targeting_key=f"u-{i}"))
provider.controller(FLAG).start(force=True)
assert provider.flush_events(10.0), "the first delivery did not go out"
provider.controller(FLAG).rollback("import spy")
assert provider.flush_events(10.0), "the second delivery did not go out"
assert urllib.request.urlopen(telemetry.metrics_url, timeout=10).status == 200
deadline = time.monotonic() + 30
while len(rounds) < 5:  # the runner read the store's changes and ticked
    assert time.monotonic() < deadline, "the runner did not run"
    time.sleep(0.01)
provider.shutdown()
print("\\n".join(spy.seen))
"""


def test_background_threads_import_nothing_on_their_first_run(
    example_plan_path: Path, tmp_path: Path, slow_ingest: tuple[str, list[dict[str, object]]]
) -> None:
    """The runner, the sender, the ingest POST and the ``/metrics`` server import nothing
    themselves over a provider's first deliveries, rounds and scrape: a fork can never catch
    one of them inside an import (what the trials above hit by timing)."""
    url, _events = slow_ingest
    done = subprocess.run(
        [sys.executable, "-c", _SPY, str(example_plan_path), str(tmp_path), url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imports made in background threads:\n{done.stdout}"
