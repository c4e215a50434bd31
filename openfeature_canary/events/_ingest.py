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
can); that shared state is :mod:`._attempt`. Each attempt uses a fresh connection (no
keep-alive), so the socket to shut down is always the attempt's own.

URLs are only ever shown through :func:`redact_url` (no ``user:password@``, no query string),
and every secret of the URL (user, password, the basic-auth header, query values) is scrubbed
from error text and from httpx's and httpcore's log records, also when the server echoes it
back percent-encoded, HTML-escaped or JSON-escaped (:mod:`._redact`).
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import httpx

from openfeature_canary.errors import IngestError
from openfeature_canary.events._attempt import Answer, Attempt
from openfeature_canary.events._outbox import OutboxEvent
from openfeature_canary.events._redact import (
    Scrubber,
    ScrubLog,
    add_log_filter,
    one_line,
    redact_url,
    remove_log_filter,
)

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

#: Characters of an error body shown in an IngestError.
_BODY_PREVIEW: Final = 200
#: Bytes of an error body read at most (the rest is never read).
_BODY_READ: Final = 4096
#: How long the caller waits, after shutting the socket down at the deadline, for the worker
#: to wind down (it normally ends at once; only a blocked name lookup outlives this).
_ABORT_GRACE_S: Final = 0.25


#: What a first POST imports lazily (found by recording the imports of a first delivery in a
#: fresh interpreter): httpcore pulls in h11, its sync and async halves and certifi; the
#: optional h2, socksio, anyio and trio are tried and skipped when absent; the ``idna``
#: codec is looked up when the host is encoded.
_DELIVERY_MODULES: Final = (
    "httpcore",
    "h11",
    "certifi",
    "importlib.resources",
    "encodings.idna",
    "stringprep",
    "ssl",
)


def import_delivery_modules() -> None:
    """Import what a first POST would otherwise import in the thread that makes it (see
    :meth:`IngestClient.prepare`). A module that is not installed is skipped."""
    for name in _DELIVERY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    codecs.lookup("idna")


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
        self._scrub = Scrubber(self._url)
        # The connection pool is made on first use: constructing a client does no I/O.
        self._transport = transport
        self._http_client: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self._closed = False
        self._prepared = False
        # httpx logs every request's full URL (credentials and query included) at INFO.
        self._log_filter = ScrubLog(self._scrub)
        add_log_filter(self._log_filter)
        self._unfilter = weakref.finalize(self, remove_log_filter, self._log_filter)
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

    def prepare(self) -> None:
        """Import everything a POST needs and build the HTTP client, on the calling thread.

        Call it before handing the client to a background thread (:meth:`TelemetrySender.start`
        does): httpx imports its transport, httpcore, h11 and certifi lazily on the first
        request, and a process that forks while another thread is inside such an import
        leaves its child a module half imported for good (and every later POST of the child
        fails). Idempotent; no network I/O (the TLS context reads the CA bundle).
        """
        if self._prepared:
            return
        import_delivery_modules()
        with contextlib.suppress(Exception):  # send() reports a client that cannot be built
            self._http()
        self._prepared = True

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
        attempt = Attempt()
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
            preview = one_line(self._scrub(answer.body))[:_BODY_PREVIEW]
            reason = one_line(self._scrub(answer.reason))
            raise IngestError(
                f"POST {self.display_url}: HTTP {answer.status}"
                + (f" {reason}" if reason else "")
                + (f": {preview}" if preview else ""),
                status_code=answer.status,
            )

    def _post(
        self, http: httpx.Client, body: dict[str, Any], budget: float, attempt: Attempt
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
                answer = Answer(
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
        error = IngestError(f"POST {self.display_url}: {type(exc).__name__}: {one_line(safe)}")
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
