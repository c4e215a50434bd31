"""Issue 17 §5: a provider whose events cannot be delivered costs (almost) no CPU while idle.

Each scenario runs a fresh interpreter through the public API (the README's quick start: a
plan, a ``file://`` store, ``setup_telemetry``), queues 10 events that cannot go out (a
transition plus nine more in its outbox) and reports the CPU time the whole process used over
10 s of wall time. Before the fix, the sender without a URL looped without waiting (a third of a
core). Both scenarios run at the same time, so the test takes ~12 s of wall time.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

IDLE_S = 10.0
#: The issue's bound: 1 % of a core, i.e. 0.1 s of CPU in 10 s (measured: ~0.005-0.02 s).
MAX_CPU_SHARE = 0.01
EVENTS = 10
#: Scheduling slack for flush_events(0.5) and shutdown() to return.
SLACK_S = 3.0

_CHILD = """
import json, sys, time
from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature_canary import load_plan, setup_telemetry
from openfeature_canary.events import OutboxEvent

plan_path, folder, url, seconds, events = sys.argv[1:6]
plan = load_plan(plan_path)
provider = CanaryProvider(
    plan,
    store=f"file://{folder}/state.json",
    environ={"A8_URL": url} if url else {},
    reports_dir=f"{folder}/reports",
    telemetry=setup_telemetry(plan),
)
api.set_provider_and_wait(provider)
provider.controller("dataservice-read-canary").start(force=True)  # one event
for i in range(int(events) - 1):
    provider.outbox.enqueue(OutboxEvent.create("canary_idle_probe", {"i": i}, now=time.time()))
cpu0, wall0 = time.process_time(), time.monotonic()
time.sleep(float(seconds))  # the measured interval itself
cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
pending = len(provider.outbox.pending())
started = time.monotonic()
flushed = provider.flush_events(0.5)  # cannot deliver: must give up at its timeout
flush_s = time.monotonic() - started
provider.shutdown()
shutdown_s = time.monotonic() - started - flush_s
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "pending": pending, "flushed": flushed,
                  "flush_s": flush_s, "shutdown_s": shutdown_s}))
"""


def _refused_url() -> str:
    """A 127.0.0.1 port nothing listens on (bound, then closed: connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_idle_provider_with_undeliverable_events_uses_at_most_1_percent_of_a_core(
    example_plan_path: Path, tmp_path: Path
) -> None:
    scenarios = {"no URL": "", "connection refused": _refused_url()}
    children = {}
    for name, url in scenarios.items():
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        argv = [str(example_plan_path), str(folder), url, str(IDLE_S), str(EVENTS)]
        children[name] = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for name, child in children.items():
        out, err = child.communicate(timeout=IDLE_S + 60)
        assert child.returncode == 0, f"{name}: {err}"
        results[name] = json.loads(out.strip().splitlines()[-1])
    for name, result in results.items():
        share = result["cpu_s"] / result["wall_s"]
        assert result["pending"] == EVENTS, f"{name}: the events must stay queued: {result}"
        assert result["flushed"] is False
        # Generous bounds for a loaded 2-core machine: a 0.5 s flush, a stop that wakes it.
        assert result["flush_s"] < 0.5 + SLACK_S, f"{name}: flush_events(0.5) hung: {result}"
        assert result["shutdown_s"] < SLACK_S, f"{name}: shutdown() hung: {result}"
        assert share <= MAX_CPU_SHARE, (
            f"{name}: idle with {EVENTS} undeliverable events the provider used "
            f"{share:.1%} of a core ({result['cpu_s']:.3f} s of CPU in {result['wall_s']:.1f} s)"
        )


def test_stop_and_flush_wake_a_sender_that_waits_without_a_url(tmp_path: Path) -> None:
    """Without a client the thread sleeps until woken (no timed polls): stop() and flush()
    must still return at once."""
    import time

    from openfeature_canary.events import Outbox, TelemetrySender

    sender = TelemetrySender(Outbox(tmp_path / "outbox.jsonl"), None)
    sender.start()
    sender.enqueue("canary_rollback", {"from_pct": 25})
    started = time.monotonic()
    assert sender.flush(5.0) is False  # nothing can deliver it here; it stays queued
    sender.stop(timeout_s=5.0)
    assert not sender.running
    assert time.monotonic() - started < 2.0
    assert [e.event_name for e in Outbox(tmp_path / "outbox.jsonl").pending()] == [
        "canary_rollback"
    ]
