"""The telemetry-ingest client, the durable outbox and the background sender, against a real
HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import random
import socket
import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from openfeature_canary.events import _outbox
from openfeature_canary.events._ingest import (
    IngestClient,
    IngestCounters,
    IngestError,
    redact_url,
)
from openfeature_canary.events._outbox import JsonScalar, Outbox, OutboxEvent
from openfeature_canary.events._sender import TelemetrySender

APP = "scholarship_api"
ROLLBACK_PROPS: dict[str, JsonScalar] = {
    "from_pct": 25,
    "reason": "p95_breach",
    "flag": "dataservice-read-canary",
}


# ---------------------------------------------------------------------- helpers


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class IngestServer:
    """A telemetry ingest on 127.0.0.1 that records what it receives.

    ``mode``: ``"ok"`` (202), ``"500"``, ``"echo500"`` (500 echoing the request line) or
    ``"slow"`` (answers after ``delay_s``). ``fail_next`` answers 500 that many times first.
    """

    port: int = 0
    mode: str = "ok"
    fail_next: int = 0
    delay_s: float = 0.5
    requests: list[Recorded] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> IngestServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with owner._lock:
                    owner.requests.append(Recorded(self.path, dict(self.headers), body))
                    failing = owner.fail_next > 0
                    owner.fail_next -= 1 if failing else 0
                if owner.mode == "slow":
                    threading.Event().wait(owner.delay_s)
                if failing or owner.mode in ("500", "echo500"):
                    text = f"cannot take POST {self.path}" if owner.mode == "echo500" else "boom"
                    self._answer(500, text)
                else:
                    self._answer(202, '{"accepted": true}')

            def _answer(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for r in self.requests for e in r.body["events"]]


class FakeCounters:
    def __init__(self) -> None:
        self.sent_total = 0
        self.accepted_total = 0

    def sent(self, count: int = 1) -> None:
        self.sent_total += count

    def accepted(self, count: int = 1) -> None:
        self.accepted_total += count


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MaxRandom(random.Random):
    """Always draws the top of the range: the backoff's upper bound, exactly."""

    def random(self) -> float:
        return 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server() -> Iterator[IngestServer]:
    srv = IngestServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.jsonl")


def make_sender(
    outbox: Outbox, url: str | None, **kwargs: Any
) -> tuple[TelemetrySender, IngestClient | None]:
    client = IngestClient(url, app=APP, timeout_s=2.0) if url else None
    return TelemetrySender(outbox, client, **kwargs), client


# ---------------------------------------------------------------------- client


def test_sender_rollback_event_server_receives_exactly_one_spec_body(
    outbox: Outbox, server: IngestServer
) -> None:
    sender, client = make_sender(outbox, server.url)
    event = sender.enqueue("canary_rollback", ROLLBACK_PROPS)

    assert sender.deliver_once() == 1
    assert sender.deliver_once() == 0

    assert len(server.requests) == 1
    request = server.requests[0]
    assert request.path == "/telemetry/ingest"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == {
        "events": [
            {
                "app": "scholarship_api",
                "event_name": "canary_rollback",
                "properties": {**ROLLBACK_PROPS, "event_id": event.id},
            }
        ]
    }
    assert outbox.pending() == []
    assert client is not None
    client.close()


def test_sender_explicit_event_id_kept_as_given(outbox: Outbox, server: IngestServer) -> None:
    sender, _ = make_sender(outbox, server.url)
    sender.enqueue("canary_rollback", {**ROLLBACK_PROPS, "event_id": "rollback-42"})

    sender.deliver_once()

    assert server.events()[0]["properties"]["event_id"] == "rollback-42"


def test_client_base_url_with_path_posts_below_it(server: IngestServer) -> None:
    with IngestClient(server.url + "/a8/", app=APP) as client:
        client.send([OutboxEvent.create("canary_rollback", {"from_pct": 5}, now=0.0)])

    assert [r.path for r in server.requests] == ["/a8/telemetry/ingest"]


def test_client_non_2xx_raises_ingest_error_with_status(server: IngestServer) -> None:
    server.mode = "500"
    with IngestClient(server.url, app=APP) as client, pytest.raises(IngestError) as info:
        client.send([OutboxEvent.create("canary_rollback", {}, now=0.0)])

    assert info.value.status_code == 500
    assert "HTTP 500" in str(info.value)


def test_client_slow_server_times_out_as_ingest_error(server: IngestServer) -> None:
    server.mode, server.delay_s = "slow", 1.0
    with (
        IngestClient(server.url, app=APP, timeout_s=0.1) as client,
        pytest.raises(IngestError) as info,
    ):
        client.send([OutboxEvent.create("canary_rollback", {}, now=0.0)])

    assert "Timeout" in str(info.value)
    assert info.value.status_code is None


@pytest.mark.parametrize("url", ["", "ftp://host/x", "127.0.0.1:8080", "http://"])
def test_client_invalid_url_raises_ingest_error(url: str) -> None:
    with pytest.raises(IngestError, match="absolute http"):
        IngestClient(url, app=APP)


# ---------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:secret@127.0.0.1:8080/?token=abc", "http://***@127.0.0.1:8080/?***"),
        ("https://tok3n@ingest.example/a8", "https://***@ingest.example/a8"),
        ("http://127.0.0.1:8080/a8", "http://127.0.0.1:8080/a8"),
        ("http://[::1]:80/x?k=v#frag", "http://[::1]:80/x?***"),
        ("not a url with user:pw@host", "<redacted url>"),
    ],
)
def test_redact_url_credentials_and_query_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_sender_credentials_in_url_never_in_logs_or_errors(
    outbox: Outbox, server: IngestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://user:secret@127.0.0.1:{server.port}/?token=abc"
    server.mode = "echo500"  # the answer echoes the request line, token included
    client = IngestClient(url, app=APP)
    sender = TelemetrySender(outbox, client)
    sender.enqueue("canary_rollback", ROLLBACK_PROPS)

    assert sender.deliver_once() == 0
    server.mode = "ok"
    assert sender.flush(2.0) is True
    with pytest.raises(IngestError) as info:
        server.mode = "echo500"
        client.send([OutboxEvent.create("canary_rollback", {}, now=0.0)])
    client.close()
    refused = IngestClient(f"http://user:secret@127.0.0.1:{free_port()}/?token=abc", app=APP)
    with pytest.raises(IngestError) as refused_info:
        refused.send([OutboxEvent.create("canary_rollback", {}, now=0.0)])
    refused.close()

    # the server did get the credentials: basic auth and the query string
    assert server.requests[0].path == "/telemetry/ingest?token=abc"
    assert server.requests[0].headers["Authorization"].startswith("Basic ")
    texts = [
        caplog.text,
        str(info.value),
        str(refused_info.value),
        "".join(traceback.format_exception(info.value)),
        "".join(traceback.format_exception(refused_info.value)),
        repr(client),
        str(outbox.path.read_text()),
    ]
    for text in texts:
        assert "secret" not in text
        assert "token=abc" not in text
    assert "http://***@127.0.0.1" in caplog.text
    assert "HTTP 500" in caplog.text


# ---------------------------------------------------------------------- retries and backoff


def test_sender_server_down_retries_with_backoff_then_delivers(outbox: Outbox) -> None:
    port = free_port()
    clock = FakeClock()
    counters = FakeCounters()
    sender, _ = make_sender(
        outbox, f"http://127.0.0.1:{port}", clock=clock, counters=counters, base_backoff_s=2.0
    )
    event = sender.enqueue("canary_rollback", ROLLBACK_PROPS)

    assert sender.deliver_once() == 0
    (failed,) = outbox.pending()
    assert failed.id == event.id
    assert failed.attempts == 1
    assert failed.last_error is not None and "ConnectError" in failed.last_error
    assert clock.now <= failed.next_attempt_at <= clock.now + 2.0

    # not due yet: no new attempt
    assert sender.deliver_once() == 0
    assert outbox.pending()[0].attempts == 1

    server = IngestServer(port=port).start()
    try:
        clock.now = failed.next_attempt_at
        assert sender.deliver_once() == 1
        assert [e["properties"]["event_id"] for e in server.events()] == [event.id]
    finally:
        server.stop()
    assert outbox.pending() == []
    assert (counters.sent_total, counters.accepted_total) == (2, 1)


def test_sender_server_500_retries_then_delivers_once(outbox: Outbox, server: IngestServer) -> None:
    clock = FakeClock()
    counters = FakeCounters()
    sender, _ = make_sender(outbox, server.url, clock=clock, counters=counters)
    sender.enqueue("canary_rollback", ROLLBACK_PROPS)
    server.mode = "500"

    assert sender.deliver_once() == 0
    (failed,) = outbox.pending()
    assert failed.last_error is not None and "HTTP 500" in failed.last_error

    server.mode = "ok"
    clock.now += 1.0
    assert sender.deliver_once() == 1

    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body
    assert (counters.sent_total, counters.accepted_total) == (2, 1)
    assert outbox.pending() == []


def test_sender_backoff_grows_exponentially_up_to_cap(outbox: Outbox) -> None:
    clock = FakeClock()
    sender, _ = make_sender(
        outbox,
        f"http://127.0.0.1:{free_port()}",
        clock=clock,
        rng=MaxRandom(),
        base_backoff_s=1.0,
        max_backoff_s=20.0,
    )
    sender.enqueue("canary_rollback", ROLLBACK_PROPS)

    delays = []
    for _ in range(7):
        assert sender.deliver_once() == 0
        (event,) = outbox.pending()
        delays.append(event.next_attempt_at - clock.now)
        clock.now = event.next_attempt_at

    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert outbox.pending()[0].attempts == 7


def test_sender_backoff_jitter_within_bounds_and_varied(outbox: Outbox) -> None:
    sender = TelemetrySender(
        outbox, None, rng=random.Random(7), base_backoff_s=0.5, max_backoff_s=60
    )
    draws = {attempt: [sender.backoff_s(attempt) for _ in range(200)] for attempt in range(1, 10)}

    for attempt, values in draws.items():
        cap = min(60.0, 0.5 * 2 ** (attempt - 1))
        assert all(0.0 <= v <= cap for v in values)
        assert max(values) > 0.8 * cap and min(values) < 0.2 * cap  # full jitter
    assert sum(draws[9]) > 4 * sum(draws[3])  # grows with attempts


def test_sender_failed_batch_holds_back_other_due_events(outbox: Outbox) -> None:
    clock = FakeClock()
    server = IngestServer(mode="500").start()
    try:
        sender, _ = make_sender(outbox, server.url, clock=clock, batch_size=2)
        for i in range(5):
            sender.enqueue("canary_rollback", {"i": i})

        assert sender.deliver_once() == 0
        assert len(server.requests) == 1  # the other batches wait for the backoff

        server.mode = "ok"
        clock.now += 1.0
        assert sender.deliver_once() == 5
        assert [len(r.body["events"]) for r in server.requests] == [2, 2, 2, 1]
        assert sorted(e["properties"]["i"] for e in server.events()[2:]) == [0, 1, 2, 3, 4]
    finally:
        server.stop()


def test_sender_background_thread_delivers_enqueued_event(
    outbox: Outbox, server: IngestServer
) -> None:
    counters = FakeCounters()
    sender, _ = make_sender(outbox, server.url, counters=counters)
    sender.start()
    try:
        sender.enqueue("canary_rollback", ROLLBACK_PROPS)
        assert sender.flush(5.0) is True
    finally:
        sender.stop()

    assert [e["event_name"] for e in server.events()] == ["canary_rollback"]
    assert (counters.sent_total, counters.accepted_total) == (1, 1)
    assert not sender.running


def test_sender_background_thread_recovers_after_500s(outbox: Outbox, server: IngestServer) -> None:
    server.fail_next = 2
    counters = FakeCounters()
    sender, _ = make_sender(
        outbox, server.url, counters=counters, base_backoff_s=0.05, max_backoff_s=0.2
    )
    sender.start()
    try:
        event = sender.enqueue("canary_rollback", ROLLBACK_PROPS)
        assert sender.flush(5.0) is True
    finally:
        sender.stop()

    assert len(server.requests) == 3
    assert {e["properties"]["event_id"] for e in server.events()} == {event.id}
    assert (counters.sent_total, counters.accepted_total) == (3, 1)


def test_sender_flush_server_down_returns_false_and_keeps_event(outbox: Outbox) -> None:
    sender, _ = make_sender(outbox, f"http://127.0.0.1:{free_port()}", base_backoff_s=0.05)

    sender.enqueue("canary_rollback", ROLLBACK_PROPS)

    assert sender.flush(0.3) is False
    assert len(outbox.pending()) == 1
    assert outbox.pending()[0].attempts >= 1


def test_sender_without_client_keeps_events_and_warns_once(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="openfeature_canary")
    sender = TelemetrySender(outbox, None)

    sender.enqueue("canary_rollback", ROLLBACK_PROPS)
    results = [sender.deliver_once(), sender.deliver_once(), sender.flush(0.1)]

    assert results == [0, 0, False]
    assert len(outbox.pending()) == 1
    warnings = [r for r in caplog.records if "no ingest URL" in r.getMessage()]
    assert len(warnings) == 1


def test_sender_enqueue_non_scalar_property_raises_value_error(outbox: Outbox) -> None:
    sender = TelemetrySender(outbox, None)

    with pytest.raises(ValueError, match="'numbers' must be a JSON scalar"):
        sender.enqueue("canary_rollback", {"numbers": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="'value' is nan"):
        sender.enqueue("canary_rollback", {"value": float("nan")})
    assert outbox.pending() == []


def test_ingest_counters_protocol_accepts_fake() -> None:
    assert isinstance(FakeCounters(), IngestCounters)


# ---------------------------------------------------------------------- restarts


def test_sender_restart_new_outbox_delivers_what_old_could_not(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    port = free_port()
    old, _ = make_sender(Outbox(path), f"http://127.0.0.1:{port}")
    event = old.enqueue("canary_rollback", ROLLBACK_PROPS)
    assert old.deliver_once() == 0
    del old  # "the process dies"

    server = IngestServer(port=port).start()
    try:
        new, _ = make_sender(Outbox(path), server.url)
        assert new.flush(2.0) is True
        assert [e["properties"]["event_id"] for e in server.events()] == [event.id]
    finally:
        server.stop()
    assert Outbox(path).pending() == []


def test_sender_child_process_enqueues_and_exits_parent_delivers(
    tmp_path: Path, server: IngestServer
) -> None:
    path = tmp_path / "outbox.jsonl"
    child = textwrap.dedent(
        f"""
        import os, sys
        from openfeature_canary.events._sender import TelemetrySender
        from openfeature_canary.events._outbox import Outbox
        sender = TelemetrySender(Outbox({str(path)!r}), None)
        event = sender.enqueue("canary_rollback", {{"from_pct": 25, "reason": "p95_breach"}})
        print(event.id, flush=True)
        os._exit(0)  # no cleanup, no delivery
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    child_id = done.stdout.strip()

    parent, _ = make_sender(Outbox(path), server.url)
    assert parent.deliver_once() == 1

    assert server.events() == [
        {
            "app": APP,
            "event_name": "canary_rollback",
            "properties": {"from_pct": 25, "reason": "p95_breach", "event_id": child_id},
        }
    ]


# ---------------------------------------------------------------------- outbox


def test_outbox_reopened_sees_pending_with_attempts(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    first = Outbox(path)
    a = OutboxEvent.create("canary_rollback", {"from_pct": 5}, now=10.0)
    b = OutboxEvent.create("canary_rollback", {"from_pct": 25}, now=11.0)
    first.enqueue(a)
    first.enqueue(b)
    first.record_attempt(a.id, "HTTP 503", 99.0)
    first.mark_delivered([b.id])

    (left,) = Outbox(path).pending()

    assert left.id == a.id
    assert (left.attempts, left.last_error, left.next_attempt_at) == (1, "HTTP 503", 99.0)
    assert left.properties == {"from_pct": 5}


def test_outbox_all_delivered_compacts_journal_to_the_remembered_ids(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.jsonl")
    events = [OutboxEvent.create("e", {"i": i}, now=0.0) for i in range(3)]
    for e in events:
        outbox.enqueue(e)

    outbox.mark_delivered(e.id for e in events)

    # One line remains: the delivered ids it remembers, so that a restart does not queue them
    # again (see tests/test_faults.py).
    lines = outbox.path.read_text().splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["delivered"]
    assert outbox.pending() == []


def test_outbox_long_journal_compacted_keeping_pending_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_outbox, "_COMPACT_SLACK", 10)
    outbox = Outbox(tmp_path / "o.jsonl")
    kept = OutboxEvent.create("canary_rollback", {"from_pct": 25}, now=0.0)
    outbox.enqueue(kept)
    outbox.record_attempt(kept.id, "HTTP 502", 42.0)

    for i in range(20):
        done = OutboxEvent.create("e", {"i": i}, now=0.0)
        outbox.enqueue(done)
        outbox.mark_delivered([done.id])

    assert len(outbox.path.read_text().splitlines()) < 12
    (left,) = Outbox(outbox.path).pending()
    assert (left.id, left.attempts, left.last_error, left.next_attempt_at) == (
        kept.id,
        1,
        "HTTP 502",
        42.0,
    )


def test_outbox_torn_trailing_line_skipped_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.jsonl"
    outbox = Outbox(path)
    kept = OutboxEvent.create("canary_rollback", {"from_pct": 25}, now=0.0)
    outbox.enqueue(kept)
    with open(path, "a") as fh:  # a crash in the middle of the next write
        fh.write('{"op": "enqueue", "event": {"id": "abc", "event_na')

    reopened = Outbox(path)
    with caplog.at_level(logging.WARNING, logger="openfeature_canary"):
        assert [e.id for e in reopened.pending()] == [kept.id]
        later = OutboxEvent.create("canary_rollback", {"from_pct": 50}, now=1.0)
        reopened.enqueue(later)  # starts on a fresh line: the torn one spoils nothing else
        assert [e.id for e in reopened.pending()] == [kept.id, later.id]

    warnings = [r for r in caplog.records if "unreadable line 2" in r.getMessage()]
    assert len(warnings) == 1


def test_outbox_shared_by_threads_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"

    def writer(n: int) -> None:
        box = Outbox(path)  # one instance per thread, as separate processes would have
        for i in range(25):
            box.enqueue(OutboxEvent.create("e", {"w": n, "i": i}, now=0.0))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    seen = {(e.properties["w"], e.properties["i"]) for e in Outbox(path).pending()}
    assert seen == {(n, i) for n in range(4) for i in range(25)}


def test_outbox_event_properties_read_only() -> None:
    props = {"from_pct": 25}
    event = OutboxEvent.create("canary_rollback", props, now=0.0)
    props["from_pct"] = 50

    assert event.properties["from_pct"] == 25
    with pytest.raises(TypeError):
        event.properties["from_pct"] = 50  # type: ignore[index]


def test_client_mock_transport_body_exact(outbox: Outbox) -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(200)

    client = IngestClient("http://ingest.test", app=APP, transport=httpx.MockTransport(handler))
    sender = TelemetrySender(outbox, client)
    event = sender.enqueue("canary_rollback", {"from_pct": 25, "reason": "p95_breach"})

    assert sender.deliver_once() == 1
    assert json.loads(seen[0]) == {
        "events": [
            {
                "app": APP,
                "event_name": "canary_rollback",
                "properties": {"from_pct": 25, "reason": "p95_breach", "event_id": event.id},
            }
        ]
    }
