"""Telemetry-ingest client: ``POST {base_url}/telemetry/ingest``, with URL redaction.

The background sender that drains the outbox into it is :mod:`._sender`.

The pieces::

    TelemetrySender.enqueue(name, props) ──fsync──▶ Outbox (journal on disk)
                │ wakes                                   │ pending()
                ▼                                         ▼
         sender thread ── batches ──▶ IngestClient.send ──POST──▶ {base_url}/telemetry/ingest
                │ 2xx: mark_delivered      failure: record_attempts + backoff (full jitter)

Delivery is at least once: an event can be posted again when the answer was lost, so every
event carries an ``event_id`` property for the ingest to drop duplicates. Nothing here runs on
the flag-evaluation path, and delivery problems are logged, never raised into the caller.

Every attempt has a total deadline (``timeout_s``): httpx's timeouts bound each read, so an
ingest that drips its answer a byte at a time would hold a request forever. The POST runs in a
short-lived worker thread; at the deadline the caller stops waiting and shuts the connection's
socket down, which ends the worker's blocked read at once (a thread cannot be killed, a socket
can). Each attempt uses a fresh connection (no keep-alive), so the socket to shut down is
always the attempt's own.

URLs are only ever shown through :func:`redact_url` (no ``user:password@``, no query string),
and every secret of the URL (user, password, the basic-auth header, query values) is scrubbed
from error text and from httpx's and httpcore's log records, also when the server echoes it
back percent-encoded, HTML-escaped or JSON-escaped.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import html
import json
import logging
import math
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

import httpx

from openfeature_canary.errors import IngestError
from openfeature_canary.events._outbox import OutboxEvent

__all__ = [
    "INGEST_PATH",
    "IngestClient",
    "IngestCounters",
    "IngestError",
    "NoopIngestCounters",
    "ingest_url",
    "redact_url",
]

log = logging.getLogger("openfeature_canary.telemetry")

#: Appended to the configured base URL (spec §2: ``POST {A8_URL}/telemetry/ingest``).
INGEST_PATH: Final = "/telemetry/ingest"

_REDACTED: Final = "***"
#: Characters of an error body shown in an IngestError.
_BODY_PREVIEW: Final = 200
#: Bytes of an error body read at most (the rest is never read).
_BODY_READ: Final = 4096
#: How long the caller waits, after shutting the socket down at the deadline, for the worker
#: to wind down (it normally ends at once; only a blocked name lookup outlives this).
_ABORT_GRACE_S: Final = 0.25
#: The loggers whose records may carry the URL or an echoed secret.
_HTTP_LOGGERS: Final = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def redact_url(url: str) -> str:
    """The URL with its credentials and query string replaced by ``***``, safe for logs.

    >>> redact_url("http://user:secret@127.0.0.1:8080/base?token=abc")
    'http://***@127.0.0.1:8080/base?***'

    Anything that does not parse as a URL with a host is replaced as a whole.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<redacted url>"
    if not parts.scheme or not host:
        return "<redacted url>" if ("@" in url or "?" in url) else url
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    if "@" in parts.netloc:
        netloc = f"{_REDACTED}@{netloc}"
    query = _REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def ingest_url(base_url: str) -> str:
    """The endpoint events go to: ``base_url``'s path + ``/telemetry/ingest``, query kept.

    >>> ingest_url("http://127.0.0.1:9/a8/?token=abc")
    'http://127.0.0.1:9/a8/telemetry/ingest?token=abc'

    Raises :class:`IngestError` (URL redacted) when ``base_url`` is not an absolute http(s) URL.
    """
    try:
        parts = urlsplit(base_url) if "://" in base_url else None
        if parts is not None:
            parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise IngestError(f"telemetry URL {redact_url(base_url)}: must be an absolute http(s) URL")
    path = parts.path.rstrip("/") + INGEST_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# ---------------------------------------------------------------------- scrubbing secrets


def _secrets_of(url: str) -> list[str]:
    """What of ``url`` must never be shown, longest first: the user, the password, the
    basic-auth token httpx sends for them, the query and its values, each as written in the
    URL and decoded (and the query as httpx puts it on the wire)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: list[str] = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and userinfo:
        user, _, password = userinfo.partition(":")
        found += [userinfo, user, password]
        found += [unquote(userinfo), unquote(user), unquote(password)]
    queries = [parts.query]
    try:
        wire = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        wire = None
    if wire is not None:
        queries.append(wire.query.decode("ascii", "replace"))
        if wire.username or wire.password:
            # What httpx sends: ``Authorization: Basic base64(user:password)`` (decoded, UTF-8).
            userpass = f"{wire.username}:{wire.password}"
            token = base64.b64encode(userpass.encode("utf-8")).decode("ascii")
            found += [userpass, wire.username, wire.password, token, token.rstrip("=")]
    for query in queries:
        if not query:
            continue
        found += [query, unquote_plus(query)]
        for item in query.split("&"):
            _, eq, value = item.partition("=")
            secret = value if eq else item
            found += [secret, unquote_plus(secret)]
    if parts.fragment:
        found.append(parts.fragment)
    return sorted({s for s in found if s}, key=len, reverse=True)


def _char_pattern(ch: str) -> str:
    """A regex matching ``ch`` raw or in any form an echo may give it: percent-encoded (also
    twice: ``%253C``), ``+`` for a space, HTML-escaped (named, decimal and hex entities) or
    JSON-escaped (``\\"``, ``\\u003c``)."""
    code = ord(ch)
    forms = {
        re.escape(ch),
        re.escape(html.escape(ch)),
        "".join(f"%(?:25)?{b:02x}" for b in ch.encode("utf-8", "surrogatepass")),
        f"&#0*{code};",
        f"&#x0*{code:x};",
        re.escape(json.dumps(ch)[1:-1]),
    }
    if code < 0x10000:
        forms.add(rf"\\u{code:04x}")
    if ch == " ":
        forms.add(r"\+")
    if ch == "/":
        forms.add(r"\\/")
    return "(?:" + "|".join(sorted(forms, key=len, reverse=True)) + ")"


class _Scrubber:
    """Replaces the URL by its redacted form and every secret of it by ``***`` in a text,
    whatever way it was echoed (see :func:`_char_pattern`; letters match in any case)."""

    def __init__(self, url: str) -> None:
        self.shown = redact_url(url)
        urls = {url}
        with contextlib.suppress(httpx.InvalidURL, ValueError, TypeError):
            urls.add(str(httpx.URL(url)))
        self._urls = sorted(urls, key=len, reverse=True)
        secrets = _secrets_of(url)
        self._pattern = (
            re.compile(
                "|".join("".join(_char_pattern(c) for c in s) for s in secrets), re.IGNORECASE
            )
            if secrets
            else None
        )

    def __call__(self, text: str) -> str:
        for url in self._urls:
            text = text.replace(url, self.shown)
        if self._pattern is not None:
            text = self._pattern.sub(_REDACTED, text)
        return text


def _scrub(text: str, url: str) -> str:
    """``text`` with the URL redacted and any secret of it replaced, for messages from httpx
    and from the server (which may echo the request)."""
    return _Scrubber(url)(text)


def _one_line(text: str) -> str:
    """``text`` on one line of printable characters (a server's body may hold anything)."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


@runtime_checkable
class IngestCounters(Protocol):
    """Where the sender counts events: ``sent`` per event posted, ``accepted`` per event the
    ingest accepted (2xx). ``openfeature_canary.instrumentation.IngestInstruments`` fits; the
    ratio feeds the ``telemetry_acceptance`` signal."""

    def sent(self, count: int = 1) -> None:
        """Count ``count`` events posted (every attempt counts)."""
        ...

    def accepted(self, count: int = 1) -> None:
        """Count ``count`` events accepted with a 2xx answer."""
        ...


class NoopIngestCounters:
    """Counts nothing; the default when no counters are given."""

    def sent(self, count: int = 1) -> None:
        """Do nothing."""

    def accepted(self, count: int = 1) -> None:
        """Do nothing."""


class _ScrubLog(logging.Filter):
    """Scrubs one client's URL and secrets from httpx's and httpcore's log records (httpx logs
    every request's full URL at INFO, httpcore the response headers at DEBUG)."""

    def __init__(self, scrub: _Scrubber) -> None:
        super().__init__()
        self._scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self._scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._arg(v) for k, v in record.args.items()}
        return True

    def _arg(self, value: object) -> object:
        if isinstance(value, str | bytes | httpx.URL):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            scrubbed = self._scrub(text)
            return value if scrubbed == text else scrubbed
        return value


def _add_log_filter(log_filter: logging.Filter) -> None:
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).addFilter(log_filter)


def _remove_log_filter(log_filter: logging.Filter) -> None:
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).removeFilter(log_filter)


@dataclass(frozen=True)
class _Answer:
    """What the ingest answered: the status line and the start of the body (non-2xx only)."""

    status: int
    reason: str
    body: str


class _Attempt:
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
        self.answer: _Answer | None = None
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

    def finish(self, answer: _Answer | None, error: Exception | None) -> None:
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


def _decode(data: bytes, charset: str | None) -> str:
    try:
        codecs.lookup(charset or "utf-8")
    except LookupError:
        charset = None
    return data.decode(charset or "utf-8", errors="replace")


class IngestClient:
    """Posts events to ``{base_url}/telemetry/ingest`` in the spec §2 body shape.

    Use it through a :class:`TelemetrySender` (which retries); call :meth:`send` directly only
    when a failure should surface at once::

        client = IngestClient(os.environ["A8_URL"], app="scholarship_api")
        client.send([event])   # raises IngestError on a transport error, the deadline or a non-2xx

    ``timeout_s`` is each attempt's total deadline: connecting, sending and reading the answer
    together (a server that drips its answer is cut off at the deadline and its connection
    closed). Credentials in the URL (``http://user:pw@host``) are sent as HTTP basic auth and a
    query string is kept, but neither ever appears in a log line or an error message.
    ``transport`` replaces the network (e.g. ``httpx.MockTransport``); the caller still returns at
    the deadline, but only the default transport's connection can be shut down there.
    """

    def __init__(
        self,
        base_url: str,
        *,
        app: str,
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"IngestClient: timeout_s must be a number > 0, got {timeout_s!r}")
        self.app = app
        self.timeout_s = float(timeout_s)
        self._base_url = base_url
        self._url = ingest_url(base_url)
        #: The ingest endpoint, safe to show.
        self.display_url = redact_url(self._url)
        self._scrub = _Scrubber(self._url)
        # The connection pool is made on first use: constructing a client does no I/O.
        self._transport = transport
        self._http_client: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self._closed = False
        # httpx logs every request's full URL (credentials and query included) at INFO.
        self._log_filter = _ScrubLog(self._scrub)
        _add_log_filter(self._log_filter)
        self._unfilter = weakref.finalize(self, _remove_log_filter, self._log_filter)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(ref))

    def __repr__(self) -> str:
        return f"IngestClient({self.display_url!r}, app={self.app!r})"

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _http(self) -> httpx.Client:
        with self._http_lock:
            if self._http_client is None:
                # No keep-alive: every attempt opens its own connection, so the socket shut
                # down at a missed deadline is that attempt's, and never a pooled one.
                self._http_client = httpx.Client(
                    timeout=self.timeout_s,
                    transport=self._transport,
                    limits=httpx.Limits(max_keepalive_connections=0),
                )
            return self._http_client

    def close(self) -> None:
        """Close the HTTP connection pool."""
        with self._http_lock:
            self._closed = True
            client, self._http_client = self._http_client, None
        if client is not None:
            client.close()
        self._unfilter()

    def body(self, events: Sequence[OutboxEvent]) -> dict[str, Any]:
        """The JSON body :meth:`send` posts for ``events``."""
        return {
            "events": [
                {"app": self.app, "event_name": e.event_name, "properties": dict(e.properties)}
                for e in events
            ]
        }

    def send(self, events: Sequence[OutboxEvent], *, timeout_s: float | None = None) -> None:
        """POST ``events`` in one request; return on 2xx, raise :class:`IngestError` otherwise.

        The attempt's total deadline is ``timeout_s`` when given (e.g. what is left of a
        flush), but never more than the client's own ``timeout_s``. This call returns by the
        deadline (plus a fraction of a second), whatever the server does.
        """
        if not events:
            return
        if self._closed:
            raise IngestError(f"POST {self.display_url}: the client is closed")
        budget = self.timeout_s if timeout_s is None else min(self.timeout_s, timeout_s)
        if not budget > 0:
            raise ValueError(f"IngestClient.send: timeout_s must be > 0, got {timeout_s!r}")
        deadline = time.monotonic() + budget
        try:
            http = self._http()
        except Exception as exc:  # e.g. a malformed proxy URL in the environment
            # Its message may hold a proxy's credentials, which the scrubber does not know.
            raise IngestError(
                f"POST {self.display_url}: cannot set up the HTTP client: {type(exc).__name__}"
            ) from None
        body = self.body(events)
        attempt = _Attempt()
        worker = threading.Thread(
            target=self._post,
            args=(http, body, budget, attempt),
            name="openfeature-canary-ingest-post",
            daemon=True,
        )
        try:
            worker.start()
        except RuntimeError as exc:  # no thread to be had: as good as no answer
            raise IngestError(f"POST {self.display_url}: cannot start the request: {exc}") from exc
        worker.join(max(0.0, deadline - time.monotonic()))
        if not attempt.expire():
            # The socket is shut down: the worker's read ends now and the connection closes.
            worker.join(_ABORT_GRACE_S)
            raise IngestError(self._timed_out(budget))
        if attempt.error is not None:
            raise self._transport_error(attempt.error, budget)
        answer = attempt.answer
        if answer is not None and not 200 <= answer.status < 300:
            preview = _one_line(self._scrub(answer.body))[:_BODY_PREVIEW]
            reason = _one_line(self._scrub(answer.reason))
            raise IngestError(
                f"POST {self.display_url}: HTTP {answer.status}"
                + (f" {reason}" if reason else "")
                + (f": {preview}" if preview else ""),
                status_code=answer.status,
            )

    def _post(
        self, http: httpx.Client, body: dict[str, Any], budget: float, attempt: _Attempt
    ) -> None:
        """The worker thread: make the request, read at most a bounded start of an error body."""
        trace: Callable[[str, dict[str, Any]], None] = attempt.trace
        try:
            with http.stream(
                "POST",
                self._url,
                json=body,
                timeout=httpx.Timeout(budget),
                extensions={"trace": trace},
            ) as response:
                data = b""
                if not 200 <= response.status_code < 300:
                    for chunk in response.iter_bytes():
                        data += chunk
                        if len(data) >= _BODY_READ:
                            break
                answer = _Answer(
                    response.status_code,
                    response.reason_phrase,
                    _decode(data[:_BODY_READ], response.charset_encoding),
                )
            attempt.finish(answer, None)
        except Exception as exc:  # handed to the caller, which raises it as an IngestError
            attempt.finish(None, exc)
        finally:
            attempt.release()

    def _timed_out(self, budget: float) -> str:
        return (
            f"POST {self.display_url}: Timeout: no complete answer within the {budget:g}s "
            "deadline; connection closed"
        )

    def _transport_error(self, exc: Exception, budget: float) -> IngestError:
        if isinstance(exc, httpx.TimeoutException):
            error = IngestError(f"{self._timed_out(budget)} ({type(exc).__name__})")
            return _chain(error, None)
        detail = str(exc) or type(exc).__name__
        safe = self._scrub(detail)
        error = IngestError(f"POST {self.display_url}: {type(exc).__name__}: {_one_line(safe)}")
        # The original exception may carry the URL or an echoed secret in its message: chain it
        # only when there was nothing to hide, so that a logged traceback cannot leak a secret.
        return _chain(error, exc if safe == detail else None)


def _reset_in_child(ref: weakref.ref[IngestClient]) -> None:
    client = ref()
    if client is not None:
        # The parent's connection pool and locks are not the child's: a lock that a parent
        # thread held at the fork would never be released here. Start afresh (without closing
        # the parent's connections, which the parent still uses).
        client._http_lock = threading.Lock()
        client._http_client = None


def _chain(error: IngestError, cause: BaseException | None) -> IngestError:
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error
