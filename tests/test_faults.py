"""Faults: a process killed at any point of a rollback, a write killed half-way.

The kill trials run real processes: a *zygote* (one Python process that imports the package
once) forks a worker per trial, which starts the flag and rolls it back through a real
``CanaryProvider`` with a file store and a file outbox; the test kills it with ``SIGKILL`` a
random few milliseconds into the rollback. A freshly forked verifier (a new provider over the
same files) must then serve 0 % when the rollback was persisted, and deliver its event to a
real ingest on 127.0.0.1.

What makes that hold is tested piece by piece below: a transition's event has an id derived
from its decision entry, the outbox queues an id once (pending or delivered recently), and a
start-up reconciliation queues what the decision logs imply and the outbox does not know.
Last, a write killed half-way leaves a temporary file that the next write removes.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext

from openfeature_canary import ManualClock, Rollout, RolloutState, Status, load_plan
from openfeature_canary._atomicfile import STALE_TMP_S
from openfeature_canary.demo._ingest_server import IngestServer
from openfeature_canary.events import Outbox, OutboxEvent, TelemetrySender, _outbox
from openfeature_canary.policy import RECONCILE_WINDOW_S, event_id, implied_events
from openfeature_canary.stores import FileStateStore

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"

# The zygote: reads commands on stdin, forks one child per command, reports its exit.
# ``trial FOLDER REASON URL``: the child starts the flag, prints ``ready PID``, rolls it back,
# prints ``done MS`` and lingers (the test kills it before or after that).
# ``verify FOLDER URL``: the child is a fresh process over the same files: it initializes a
# provider (which reads the store and the outbox), answers 200 evaluations, flushes the
# outbox and prints one JSON line.
_ZYGOTE = r"""
import json, os, sys, time, traceback
from pathlib import Path

from openfeature.evaluation_context import EvaluationContext
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature_canary import load_plan

PLAN = load_plan(sys.argv[1])
FLAG = sys.argv[2]
import httpx

httpx.Client().close()  # its lazy imports, done once here instead of in every child


def out(line):
    os.write(1, (line + "\n").encode())


def provider(folder, url):
    p = CanaryProvider(
        PLAN,
        store=f"file://{folder}/state.json",
        environ={"A8_URL": url},
        reports_dir=Path(folder) / "reports",
        background=False,
    )
    p.initialize(EvaluationContext())
    return p


def trial(folder, reason, url):
    ctl = provider(folder, url).controller(FLAG)
    ctl.start(force=True)
    out(f"ready {os.getpid()}")
    t0 = time.perf_counter()
    ctl.rollback(reason)
    out(f"done {(time.perf_counter() - t0) * 1000:.3f}")
    time.sleep(1.0)  # to be killed here when the delay outlasts the rollback


def verify(folder, url):
    p = provider(folder, url)
    state = p.controller(FLAG).state
    on = sum(
        p.resolve_boolean_details(FLAG, True, EvaluationContext(targeting_key=f"u{i}")).value
        for i in range(200)
    )
    flushed = p.flush_events(5.0)
    out(json.dumps({"status": state.status.value, "on": on, "flushed": flushed}))


for line in sys.stdin:
    cmd, *args = line.split()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            {"trial": trial, "verify": verify}[cmd](*args)
        except BaseException:
            out("error " + traceback.format_exc().replace("\n", " | "))
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    out(f"exit {os.waitstatus_to_exitcode(status)}")
"""


class Zygote:
    """The forking helper process, driven line by line with a timeout on every read."""

    def __init__(self, log_path: Path) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, str(EXAMPLE), FLAG],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))

    def send(self, *words: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 20.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the zygote said nothing for {timeout}s") from None
        if line.startswith("error "):
            raise AssertionError(f"a forked child failed: {line}")
        return line

    def until_exit(self) -> list[str]:
        lines = []
        while not (line := self.read()).startswith("exit "):
            lines.append(line)
        return lines

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    z = Zygote(tmp_path / "zygote.log")
    yield z
    z.close()


@dataclass
class Trial:
    reason: str
    delay_ms: float
    completed: bool  # the worker printed "done" before the kill
    persisted: bool  # the store holds the rollback
    queued: bool  # the outbox (or the ingest) knew its event when the worker died
    verified: dict[str, Any]


def _run_trial(
    zygote: Zygote, folder: Path, reason: str, delay_s: float, server: IngestServer
) -> Trial:
    folder.mkdir()
    zygote.send("trial", str(folder), reason, server.url)
    ready = zygote.read()
    assert ready.startswith("ready "), ready
    time.sleep(delay_s)
    os.kill(int(ready.split()[1]), signal.SIGKILL)
    rest = zygote.until_exit()
    completed = any(line.startswith("done ") for line in rest)

    state = FileStateStore(folder / "state.json").load(FLAG)
    assert state is not None  # the start was persisted before "ready"
    persisted = state.status is Status.ROLLED_BACK
    in_outbox = any(
        e.properties.get("reason") == reason
        for e in Outbox(folder / "state.json.outbox.jsonl").pending()
    )
    queued = in_outbox or _delivered(server, reason) > 0

    zygote.send("verify", str(folder), server.url)
    (line,) = zygote.until_exit()
    return Trial(reason, delay_s * 1000, completed, persisted, queued, json.loads(line))


def _delivered(server: IngestServer, reason: str) -> int:
    # An operator's rollback says reason "operator"; their own words are its note.
    return sum(1 for e in server.named("canary_rollback") if e["properties"].get("note") == reason)


def test_rollback_killed_at_random_points_serves_off_and_is_announced_after_restart(
    tmp_path: Path, zygote: Zygote
) -> None:
    """SIGKILL at random points of a rollback: after every kill, a fresh process serves 0 %
    if the rollback was persisted (and the old answer if not), and every persisted rollback's
    event reaches the ingest exactly once (it de-duplicates by ``event_id``), none other.

    Kill delays are random within 0-30 ms. The fsyncs make the rollback's duration vary a lot
    from run to run, so one trial in four is uniform over the whole range and the others are
    drawn around a point that follows the moment the state gets persisted (later after a kill
    that came before it, earlier after one that came after the event was queued): most kills
    then land in the few milliseconds between the two, where the event used to be lost.
    """
    rng = random.Random(8)
    max_s, step_s, jitter_s = 0.030, 0.001, 0.004
    with IngestServer() as server:
        # One full rollback first: where to start looking.
        calib = tmp_path / "calibration"
        calib.mkdir()
        zygote.send("trial", str(calib), "calibration", server.url)
        assert zygote.read().startswith("ready ")
        done = zygote.read()
        assert done.startswith("done "), done
        zygote.until_exit()
        target_s = min(max_s, 0.3 * float(done.split()[1]) / 1000)

        trials = []
        for i in range(40):
            if i % 4 == 0:
                delay_s = rng.uniform(0, max_s)
            else:
                delay_s = min(max_s, max(0.0, target_s + rng.uniform(-jitter_s, jitter_s)))
            trial = _run_trial(zygote, tmp_path / f"t{i}", f"kill-trial-{i}", delay_s, server)
            trials.append(trial)
            if not trial.persisted:
                target_s = min(max_s, target_s + step_s)
            elif trial.queued:
                target_s = max(0.0, target_s - step_s)

    summary = (
        f"{len(trials)} trials: killed {sum(not t.persisted for t in trials)} times before the "
        f"state was persisted, {sum(t.persisted and not t.queued for t in trials)} times after "
        f"it but before the event was queued, {sum(t.persisted and t.queued for t in trials)} "
        f"times after both ({sum(t.completed for t in trials)} after the rollback returned)"
    )
    print(summary)
    for t in trials:
        if t.persisted:
            assert t.verified["status"] == "rolled_back", (t, summary)
            assert t.verified["on"] == 0, (t, summary)  # 0 % for every unit
            assert _delivered(server, t.reason) == 1, (t, summary)
        else:
            assert t.verified["status"] == "running", (t, summary)
            assert _delivered(server, t.reason) == 0, (t, summary)  # nothing announced
        assert t.verified["flushed"], (t, summary)


# ---------------------------------------------------------------------- event identity


def _sender(path: Path) -> TelemetrySender:
    """A durable sender without an ingest: what it queues stays in the outbox."""
    return TelemetrySender(Outbox(path), None)


def _persisted_without_events(tmp_path: Path, clock: ManualClock) -> str:
    """What a process killed right after persisting leaves: the transitions in the store,
    their events in no outbox (the rollout that made them had no event sink)."""
    store = f"file://{tmp_path}/state.json"
    ctl = Rollout(load_plan(EXAMPLE), store=store, clock=clock).controller(FLAG)
    ctl.start()
    clock.advance(60)
    ctl.rollback("p95_breach", {"value": 180.0, "threshold": 150})
    return store


def test_outbox_enqueue_known_id_is_not_queued_again_even_after_compaction(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.jsonl"
    outbox = Outbox(path)
    event = OutboxEvent.create("canary_rollback", {"from_pct": 25}, now=0.0, event_id="ev-1")

    assert outbox.enqueue(event) is True
    assert outbox.enqueue(event) is False  # pending already
    assert [e.id for e in outbox.pending()] == ["ev-1"]

    outbox.mark_delivered(["ev-1"])  # nothing pending: the journal is compacted
    assert len(path.read_text().splitlines()) == 1
    reopened = Outbox(path)  # a later process
    assert reopened.enqueue(event) is False  # delivered recently: remembered
    assert reopened.pending() == []
    assert reopened.enqueue(replace(event, id="ev-2")) is True


def test_outbox_delivered_ids_memory_keeps_only_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_outbox, "REMEMBERED_DELIVERED", 3)
    outbox = Outbox(tmp_path / "o.jsonl")
    for i in range(5):
        outbox.enqueue(OutboxEvent.create("e", {}, now=0.0, event_id=f"ev-{i}"))
        outbox.mark_delivered([f"ev-{i}"])

    assert len(outbox.path.read_text().splitlines()) == 1  # one line of remembered ids
    again = [
        outbox.enqueue(OutboxEvent.create("e", {}, now=0.0, event_id=f"ev-{i}"))
        for i in (4, 3, 2, 1)
    ]
    assert again == [False, False, False, True]  # ev-1 was forgotten, the newest three not


def test_sender_enqueue_same_event_id_twice_queues_it_once(tmp_path: Path) -> None:
    sender = _sender(tmp_path / "o.jsonl")
    first = sender.enqueue("canary_rollback", {"from_pct": 5, "event_id": "rollback-1"})
    second = sender.enqueue("canary_rollback", {"from_pct": 5, "event_id": "rollback-1"})

    assert first is not None and first.id == "rollback-1"
    assert second is None
    assert [e.id for e in sender.outbox.pending()] == ["rollback-1"]


def test_pipeline_live_events_match_what_the_log_implies_with_the_same_ids(
    tmp_path: Path,
) -> None:
    class Sink:
        def __init__(self) -> None:
            self.events: list[tuple[str, dict[str, Any]]] = []

        def enqueue(self, name: str, props: Any) -> None:
            self.events.append((name, dict(props)))

    clock = ManualClock(start=1_700_000_000.0)
    sink = Sink()
    rollout = Rollout(
        load_plan(EXAMPLE), store=f"file://{tmp_path}/state.json", clock=clock, events=sink
    )
    ctl = rollout.controller(FLAG)
    steps = [ctl.start, ctl.pause, ctl.resume, ctl.promote, ctl.promote, ctl.promote]
    steps += [ctl.promote, ctl.reset, ctl.start, lambda: ctl.rollback("p95_breach")]
    for step in steps:
        clock.advance(600)
        step()

    state = rollout.store.load(FLAG)
    assert state is not None
    implied = implied_events(state)
    names = [n for n, _ in sink.events]
    assert names == [
        *["canary_stage_advanced", "canary_paused", "canary_stage_advanced"],
        *["canary_stage_advanced", "canary_stage_advanced", "canary_completed"],
        *["canary_stage_advanced", "canary_rollback"],
    ]
    assert implied == sink.events  # same properties, same ids, every one
    assert len({p["event_id"] for _, p in implied}) == len(implied)


def test_pipeline_reconcile_queues_a_persisted_rollback_missing_from_the_outbox_once(
    tmp_path: Path,
) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    store = _persisted_without_events(tmp_path, clock)

    sender = _sender(tmp_path / "o.jsonl")
    rollout = Rollout(load_plan(EXAMPLE), store=store, clock=clock, events=sender)
    rollout.load()
    state = rollout.controller(FLAG).state
    queued = rollout.pipeline.reconcile([state], now=clock.now())

    assert queued == 2  # the start's event and the rollback's
    rollback = sender.outbox.pending()[-1]
    entry = state.last_decision
    assert entry is not None
    assert rollback.id == event_id(FLAG, entry)
    assert dict(rollback.properties) == {
        "event_id": rollback.id,
        "flag": FLAG,
        "at": "2023-11-14T22:14:20Z",
        "from_pct": 5,
        "stage": 1,
        "reason": "operator",
        "note": "p95_breach",
        "rule": "command:rollback",
        "by": entry.by,
        "value": 180.0,
        "threshold": 150,
        "recovered": True,
    }
    assert entry.by.startswith("operator:")
    # Again, and after delivery in a later process: nothing is queued twice.
    assert rollout.pipeline.reconcile([state], now=clock.now()) == 0
    sender.outbox.mark_delivered(e.id for e in sender.outbox.pending())
    later = Rollout(
        load_plan(EXAMPLE), store=store, clock=clock, events=_sender(sender.outbox.path)
    )
    assert later.pipeline.reconcile([state], now=clock.now()) == 0


def test_pipeline_reconcile_history_older_than_the_window_is_not_announced(
    tmp_path: Path,
) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    store = _persisted_without_events(tmp_path, clock)
    sender = _sender(tmp_path / "o.jsonl")
    rollout = Rollout(load_plan(EXAMPLE), store=store, clock=clock, events=sender)
    rollout.load()
    state = rollout.controller(FLAG).state

    clock.advance(RECONCILE_WINDOW_S + 1)
    assert rollout.pipeline.reconcile([state], now=clock.now()) == 0
    assert sender.outbox.pending() == []


def test_provider_initialize_after_a_kill_announces_the_rollback_once_and_not_on_restart(
    tmp_path: Path,
) -> None:
    clock = ManualClock(start=time.time())
    store = _persisted_without_events(tmp_path, clock)

    def start() -> CanaryProvider:
        provider = CanaryProvider(
            load_plan(EXAMPLE),
            store=store,
            environ={"A8_URL": server.url},
            reports_dir=tmp_path / "reports",
            background=False,
        )
        provider.initialize(EvaluationContext())
        return provider

    with IngestServer() as server:
        first = start()
        assert first.view(FLAG).percent == 0
        assert first.flush_events(10.0)
        first.shutdown()
        (event,) = server.named("canary_rollback")
        props = event["properties"]
        assert (props["reason"], props["note"], props["recovered"]) == (
            "operator",
            "p95_breach",
            True,
        )
        requests = server.requests

        again = start()  # a restart: the memory of delivered ids keeps history quiet
        assert again.outbox is not None and again.outbox.pending() == []
        assert again.flush_events(10.0)
        again.shutdown()
        assert server.requests == requests
        assert len(server.named("canary_rollback")) == 1


# ---------------------------------------------------------------------- temporary files

_SLOW_WRITER = r"""
import sys
from pathlib import Path
from openfeature_canary._atomicfile import atomic_write_text

atomic_write_text(Path(sys.argv[1]), "x" * 30_000_000)
"""


def test_atomic_write_after_a_killed_write_leaves_no_tmp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)])
    try:
        deadline = time.monotonic() + 15
        while not list(tmp_path.glob("state.json.*.tmp")):
            assert time.monotonic() < deadline, "the writer never started its temporary file"
            assert writer.poll() is None, "the writer ended before it could be killed"
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(10)
    (leftover,) = tmp_path.glob("state.json.*.tmp")
    assert not target.exists()
    # Some time later (the file's age is what tells a killed writer from a live one):
    aged = time.time() - STALE_TMP_S - 60
    os.utime(leftover, (aged, aged))
    live = tmp_path / "state.json.abcd_123.tmp"  # a concurrent writer's, just created
    live.write_text("being written")
    others = [tmp_path / "report.md.abcd_123.tmp", tmp_path / "state.json.notes.tmp"]
    for other in others:  # not this target's temporary files
        other.write_text("keep")
        os.utime(other, (aged, aged))

    store = FileStateStore(target)  # the next write of the target, through the state store
    store.save(RolloutState(flag_key=FLAG, version=1), expected_version=0)

    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == sorted(
        [live.name, *(o.name for o in others)]
    )
    assert store.load(FLAG) == RolloutState(flag_key=FLAG, version=1)
