"""A small telemetry-ingest server on 127.0.0.1, for the demo and the tests.

It accepts ``POST /telemetry/ingest`` with the body of spec §2, keeps the events in memory
(deduplicated by ``properties.event_id`` when present, as a real ingest should) and answers
``200 {"accepted": n}``. ``fail_with`` makes it answer an error status instead.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["IngestServer"]


class IngestServer:
    """``with IngestServer() as server: ... server.url ... server.events``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.events: list[Mapping[str, Any]] = []
        self.requests = 0
        self.fail_with: int | None = None
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL (``http://127.0.0.1:PORT``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def named(self, event_name: str) -> list[Mapping[str, Any]]:
        """The received events called ``event_name``."""
        with self._lock:
            return [e for e in self.events if e.get("event_name") == event_name]

    def start(self) -> IngestServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="ingest-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> IngestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _receive(self, body: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            if self.fail_with is not None:
                return self.fail_with, {"error": "unavailable"}
        try:
            events = json.loads(body)["events"]
            if not isinstance(events, list):
                raise TypeError("events must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"error": f"bad body: {exc}"}
        with self._lock:
            for event in events:
                event_id = str(event.get("properties", {}).get("event_id", ""))
                if event_id and event_id in self._ids:
                    continue
                self._ids.add(event_id)
                self.events.append(event)
        return 200, {"accepted": len(events)}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/telemetry/ingest":
                    self._answer(404, {"error": "not found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                status, payload = server._receive(self.rfile.read(length))
                self._answer(status, payload)

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the demo prints its own lines

        return Handler
