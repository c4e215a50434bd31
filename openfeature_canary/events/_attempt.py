"""One POST to the ingest, shared between the caller and the worker thread that makes it.

Every attempt has a total deadline: httpx's timeouts bound each read, so an ingest that drips
its answer a byte at a time would hold a request forever. The caller waits for the worker
until the deadline, then :meth:`Attempt.expire` shuts the connection's socket down, which ends
the worker's blocked read at once (a thread cannot be killed, a socket can).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Answer", "Attempt"]


@dataclass(frozen=True)
class Answer:
    """What the ingest answered: the status line and the start of the body (non-2xx only)."""

    status: int
    reason: str
    body: str


class Attempt:
    """One POST's shared state between the caller and the worker thread that makes it.

    The worker records its connection's socket (a ``dup`` of it, so that closing or reusing the
    original descriptor can never redirect a shutdown) through httpcore's ``trace`` extension;
    :meth:`expire` shuts it down, which ends a blocked read or write at once. The lock makes
    "finished" and "expired" exclusive: the caller sees a result only if it came in time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self._released = False
        self.done = False
        self.answer: Answer | None = None
        self.error: Exception | None = None

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore's trace callback: keep the socket of every connection the attempt opens."""
        if not name.endswith("connect_tcp.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            if self._released:
                return
            try:
                watched = sock.dup()
            except OSError:
                return  # no hard stop for this attempt; the caller still returns in time
            self._sockets.append(watched)
            if self._expired:
                _shutdown(watched)

    def finish(self, answer: Answer | None, error: Exception | None) -> None:
        """The worker's outcome; ignored once the attempt expired."""
        with self._lock:
            if not self._expired:
                self.done, self.answer, self.error = True, answer, error

    def expire(self) -> bool:
        """Past the deadline: shut the connection down unless the worker finished first.
        Returns whether it was in time (the outcome then stands)."""
        with self._lock:
            if self.done:
                return True
            self._expired = True
            for sock in self._sockets:
                _shutdown(sock)
            return False

    def release(self) -> None:
        """The worker is done with the connection: close the watched duplicates."""
        with self._lock:
            self._released = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer: nothing left to stop
        sock.shutdown(socket.SHUT_RDWR)
