"""The outbox of a ``redis://`` fleet (:class:`RedisOutbox`) with a real ``redis-server`` on
127.0.0.1: the file outbox's contract, shared by processes (one queues, another delivers), an
event queued by a process killed before delivering it still delivered, and Redis killed and
restarted (with its append-only file) while events are pending: each delivered exactly once."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, free_port

from openfeature_canary.demo._ingest_server import IngestServer
from openfeature_canary.events import (
    REMEMBERED_DELIVERED,
    EventQueue,
    IngestClient,
    Outbox,
    OutboxError,
    OutboxEvent,
    RedisOutbox,
    TelemetrySender,
    outbox_for,
)
from openfeature_canary.stores import FileStateStore, MemoryStateStore, RedisStateStore

SPAWN = multiprocessing.get_context("spawn")


class DurableRedis(RedisServer):
    """A ``redis-server`` that keeps its data in an append-only file, fsynced on every write,
    so it survives a SIGKILL and a restart on the same port and folder; with a password."""

    password = "s3cret"

    def start(self) -> DurableRedis:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--requirepass", self.password]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        args += ["--dir", str(self.folder), "--logfile", str(self.log)]
        self.process = subprocess.Popen(
            [self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        _wait(self._answers, 10, f"redis-server on port {self.port} to start")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                time.sleep(0.01)
                return b"+PONG" in sock.recv(64)
        except OSError:
            return False


class CountingIngest(IngestServer):
    """The loopback ingest, also counting every accepted arrival of each event_id (the
    server itself keeps one of each)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[str, int] = {}

    def _receive(self, body: bytes) -> tuple[int, dict[str, Any]]:
        status, payload = super()._receive(body)
        if status == 200:
            for event in json.loads(body)["events"]:
                event_id = event["properties"]["event_id"]
                self.arrivals[event_id] = self.arrivals.get(event_id, 0) + 1
        return status, payload


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path).start()
    yield srv
    srv.stop()


@pytest.fixture
def ingest() -> Iterator[CountingIngest]:
    with CountingIngest() as srv:
        yield srv


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)


def _event(event_id: str, at: float = 1700000000.123456) -> OutboxEvent:
    return OutboxEvent.create(
        "canary_rollback",
        {"event_id": event_id, "from_pct": 25, "ratio": 0.1},
        now=at,
        event_id=event_id,
    )


# ------------------------------------------------------------------ the contract


@pytest.fixture(params=["file", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventQueue]:
    """Each outbox, so that every contract test runs on both."""
    if request.param == "file":
        yield Outbox(tmp_path / "outbox.jsonl")
        return
    srv = RedisServer(tmp_path).start()
    try:
        yield RedisOutbox(RedisStateStore(srv.url + "?prefix=contract"))
    finally:
        srv.stop()


def test_enqueue_pending_and_attempts_keep_order_and_exact_values(queue: EventQueue) -> None:
    assert queue.pending() == []
    events = [_event(f"e{i}", at=1700000000.123456789 + i) for i in (3, 1, 2)]
    assert [queue.enqueue(e) for e in events] == [True, True, True]
    assert queue.pending() == events  # queueing order, floats exact
    assert queue.enqueue(_event("e1")) is False  # pending: not queued twice

    queue.record_attempts(["e1", "e2", "gone"], "HTTP 503", 1700000012.5)
    queue.record_attempts(["e1"], "timed out", 1700000020.25)
    by_id = {e.id: e for e in queue.pending()}
    assert (by_id["e1"].attempts, by_id["e1"].last_error, by_id["e1"].next_attempt_at) == (
        2,
        "timed out",
        1700000020.25,
    )
    assert (by_id["e2"].attempts, by_id["e3"].attempts) == (1, 0)
    assert [e.id for e in queue.pending()] == ["e3", "e1", "e2"]


def test_delivered_ids_are_remembered_and_bounded(queue: EventQueue) -> None:
    queue.enqueue(_event("first"))
    queue.record_attempts(["first"], "HTTP 503", 5.0)
    queue.mark_delivered(["first"])
    assert queue.pending() == []
    assert queue.enqueue(_event("first")) is False  # delivered recently: not again
    # Remembered: the newest REMEMBERED_DELIVERED, so the first is forgotten after that many.
    others = [f"d{i}" for i in range(REMEMBERED_DELIVERED)]
    queue.mark_delivered(others)
    assert queue.enqueue(_event(others[0])) is False
    assert queue.enqueue(_event("first")) is True
    (again,) = queue.pending()
    assert again.attempts == 0  # the old attempts went with the delivery


def test_outbox_for_picks_redis_for_a_redis_store(tmp_path: Path, server: RedisServer) -> None:
    store = RedisStateStore(server.url + "?prefix=checkout")
    found = outbox_for(store, tmp_path / "reports")
    assert isinstance(found, RedisOutbox) and "checkout:outbox" in repr(found)
    state = tmp_path / "state.json"
    file_outbox = outbox_for(FileStateStore(state), tmp_path / "reports")
    assert (
        isinstance(file_outbox, Outbox) and file_outbox.path == tmp_path / "state.json.outbox.jsonl"
    )
    mem = outbox_for(MemoryStateStore(), tmp_path / "reports")
    assert isinstance(mem, Outbox) and mem.path == tmp_path / "reports" / "telemetry-outbox.jsonl"


# ------------------------------------------------------------------ across processes


def _queue_in_child(
    url: str, ids: list[str], ingest_url: str, done: Any
) -> None:  # pragma: no cover
    """A process that queues events with a sender whose ingest refuses connections, says how
    many were newly queued, then waits to be killed (or exits when ``ingest_url`` is '')."""
    client = IngestClient(ingest_url, app="test", timeout_s=0.5) if ingest_url else None
    sender = TelemetrySender(RedisOutbox(RedisStateStore(url)), client)
    if client is not None:
        sender.start()
    queued = [sender.enqueue("canary_rollback", {"event_id": i}) is not None for i in ids]
    done.put(sum(queued))
    if client is not None:
        time.sleep(60)


def test_two_processes_queue_one_id_once_and_another_delivers(
    server: RedisServer, ingest: CountingIngest
) -> None:
    shared = [f"shared-{i}" for i in range(50)]
    done = SPAWN.Queue()
    children = [
        SPAWN.Process(target=_queue_in_child, args=(server.url, [*shared, *own], "", done))
        for own in ([f"a-{i}" for i in range(10)], [f"b-{i}" for i in range(10)])
    ]
    for child in children:
        child.start()
    queued = done.get(timeout=20) + done.get(timeout=20)
    for child in children:
        child.join(10)
    assert queued == 70  # each shared id queued by one of the two, never both

    sender = TelemetrySender(
        RedisOutbox(RedisStateStore(server.url)), IngestClient(ingest.url, app="test")
    )
    assert sender.flush(10) is True
    assert len(ingest.arrivals) == 70 and set(ingest.arrivals.values()) == {1}
    assert sender.outbox.pending() == []


def test_event_of_a_killed_process_is_delivered_by_another(
    server: RedisServer, ingest: CountingIngest
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    done = SPAWN.Queue()
    child = SPAWN.Process(target=_queue_in_child, args=(server.url, ["rollback-1"], refused, done))
    child.start()
    assert done.get(timeout=20) == 1
    outbox = RedisOutbox(RedisStateStore(server.url))
    _wait(lambda: outbox.pending()[0].attempts >= 1, 10, "the child's failed delivery")
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)

    sender = TelemetrySender(outbox, IngestClient(ingest.url, app="test"))
    sender.start()
    try:
        assert sender.flush(10) is True
    finally:
        sender.stop()
    assert ingest.arrivals == {"rollback-1": 1}


# ------------------------------------------------------------------ Redis restarted


def test_redis_killed_and_restarted_loses_no_pending_event(
    tmp_path: Path, ingest: CountingIngest, caplog: pytest.LogCaptureFixture
) -> None:
    redis = DurableRedis(tmp_path).start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{redis.port}/0?timeout=0.5"
        store = RedisStateStore(url)
        sender = TelemetrySender(
            RedisOutbox(store), IngestClient(ingest.url, app="test"), poll_interval_s=0.05
        )
        ingest.fail_with = 503
        sender.start()
        ids = [sender.enqueue("canary_rollback", {"n": i}) for i in range(20)]
        _wait(lambda: ingest.requests >= 1, 10, "a refused delivery")

        redis.kill()
        with pytest.raises(OutboxError) as raised:
            sender.enqueue("canary_rollback", {"n": 20})
        message = str(raised.value)
        assert (
            message.startswith(f"redis://:***@127.0.0.1:{redis.port}/0") and "s3cret" not in message
        )
        assert "cannot queue an event" in message

        redis.start()
        ingest.fail_with = None
        assert sender.flush(15) is True
        sender.stop()
    finally:
        redis.stop()
    assert ingest.arrivals == {e.id: 1 for e in ids if e is not None}
    assert len(ingest.arrivals) == 20
    assert "s3cret" not in caplog.text
