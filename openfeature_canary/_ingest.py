"""Telemetry-ingest client and the background sender that drains the outbox into it.

The pieces::

    TelemetrySender.enqueue(name, props) ──fsync──▶ Outbox (journal on disk)
                │ wakes                                   │ pending()
                ▼                                         ▼
         sender thread ── batches ──▶ IngestClient.send ──POST──▶ {base_url}/telemetry/ingest
                │ 2xx: mark_delivered      failure: record_attempts + backoff (full jitter)

Delivery is at least once: an event can be posted again when the answer was lost, so every
event carries an ``event_id`` property for the ingest to drop duplicates. Nothing here runs on
the flag-evaluation path, and delivery problems are logged, never raised into the caller.
URLs are only ever shown through :func:`redact_url` (no ``user:password@``, no query string).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from openfeature_canary._errors import CanaryError
from openfeature_canary._outbox import JsonScalar, Outbox, OutboxEvent

__all__ = [
    "INGEST_PATH",
    "IngestClient",
    "IngestCounters",
    "IngestError",
    "NoopIngestCounters",
    "TelemetrySender",
    "redact_url",
]

log = logging.getLogger("openfeature_canary.telemetry")

#: Appended to the configured base URL (spec §2: ``POST {A8_URL}/telemetry/ingest``).
INGEST_PATH: Final = "/telemetry/ingest"

_REDACTED: Final = "***"
_BODY_PREVIEW: Final = 200


class IngestError(CanaryError):
    """A POST to the telemetry ingest failed: a transport error, a timeout or a non-2xx answer.

    ``status_code`` is the HTTP status, or ``None`` when no answer came. The message names the
    URL only in redacted form (see :func:`redact_url`).
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


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


def _secrets_of(url: str) -> list[str]:
    """The substrings of ``url`` that must never be shown, longest first."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [url]
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and userinfo:
        found.append(userinfo)
        user, _, password = userinfo.partition(":")
        found.append(password or user)
    if parts.query:
        found.append(parts.query)
        found.extend(v for _, v in parse_qsl(parts.query, keep_blank_values=False) if v)
    if parts.fragment:
        found.append(parts.fragment)
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(text: str, url: str) -> str:
    """``text`` with the URL redacted and any secret of it replaced, for messages from httpx
    and from the server (which may echo the request)."""
    text = text.replace(url, redact_url(url))
    for secret in _secrets_of(url):
        text = text.replace(secret, _REDACTED)
    return text


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


class _RedactHttpxLog(logging.Filter):
    """Shows one client's URL redacted in httpx's own log records."""

    def __init__(self, url: str, shown: str) -> None:
        super().__init__()
        self._url = url
        self._shown = shown

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                self._shown if isinstance(a, httpx.URL | str) and str(a) == self._url else a
                for a in record.args
            )
        return True


class IngestClient:
    """Posts events to ``{base_url}/telemetry/ingest`` in the spec §2 body shape.

    Use it through a :class:`TelemetrySender` (which retries); call :meth:`send` directly only
    when a failure should surface at once::

        client = IngestClient(os.environ["A8_URL"], app="scholarship_api")
        client.send([event])   # raises IngestError on a transport error or a non-2xx answer

    Credentials in the URL (``http://user:pw@host``) are sent as HTTP basic auth and a query
    string is kept, but neither ever appears in a log line or an error message. ``transport``
    replaces the network (e.g. ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        app: str,
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self._base_url = base_url
        try:
            parts = urlsplit(base_url) if "://" in base_url else None
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise IngestError(
                f"telemetry URL {redact_url(base_url)}: must be an absolute http(s) URL"
            )
        path = parts.path.rstrip("/") + INGEST_PATH
        self._url = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        #: The ingest endpoint, safe to show.
        self.display_url = redact_url(self._url)
        self._http = httpx.Client(timeout=timeout_s, transport=transport)
        # httpx logs every request's full URL (credentials and query included) at INFO.
        self._log_filter = _RedactHttpxLog(str(httpx.URL(self._url)), self.display_url)
        httpx_logger = logging.getLogger("httpx")
        httpx_logger.addFilter(self._log_filter)
        self._unfilter = weakref.finalize(self, httpx_logger.removeFilter, self._log_filter)

    def __repr__(self) -> str:
        return f"IngestClient({self.display_url!r}, app={self.app!r})"

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()
        self._unfilter()

    def body(self, events: Sequence[OutboxEvent]) -> dict[str, Any]:
        """The JSON body :meth:`send` posts for ``events``."""
        return {
            "events": [
                {"app": self.app, "event_name": e.event_name, "properties": dict(e.properties)}
                for e in events
            ]
        }

    def send(self, events: Sequence[OutboxEvent]) -> None:
        """POST ``events`` in one request; return on 2xx, raise :class:`IngestError` otherwise."""
        if not events:
            return
        try:
            response = self._http.post(self._url, json=self.body(events))
        except httpx.HTTPError as exc:
            detail = str(exc) or type(exc).__name__
            safe = _scrub(detail, self._url)
            error = IngestError(
                f"POST {self.display_url}: {type(exc).__name__}: {safe}"
                + (
                    f" (timeout {self.timeout_s:g}s)"
                    if isinstance(exc, httpx.TimeoutException)
                    else ""
                )
            )
            # The original exception may carry the URL in its message: chain it only when
            # there was nothing to hide, so that a logged traceback cannot leak a secret.
            if safe == detail:
                raise error from exc
            raise error from None
        if not 200 <= response.status_code < 300:
            preview = _scrub(response.text[:_BODY_PREVIEW].replace("\n", " "), self._url)
            raise IngestError(
                f"POST {self.display_url}: HTTP {response.status_code} "
                f"{response.reason_phrase}" + (f": {preview}" if preview else ""),
                status_code=response.status_code,
            )


class TelemetrySender:
    """Drains an :class:`Outbox` into an :class:`IngestClient` from a background thread.

    Use one per process that emits rollout events::

        sender = TelemetrySender(Outbox(path), IngestClient(url, app="scholarship_api"))
        sender.start()
        sender.enqueue("canary_rollback", {"from_pct": 25, "reason": "p95_breach"})
        ...
        sender.flush(5.0); sender.stop()

    Pending events go out in batches of up to ``batch_size`` per POST. A failed batch is kept
    with one more attempt and a retry time ``now + uniform(0, min(max_backoff_s,
    base_backoff_s * 2 ** (attempts - 1)))`` (exponential backoff, full jitter) persisted in
    the outbox; the sender also holds back further POSTs until then. Delivery problems are
    logged with the redacted URL, never raised. With ``client=None`` (no URL configured)
    events stay in the outbox and one warning is logged.

    ``rng`` and ``clock`` (seconds, ``time.time`` by default) are injectable for tests; the
    thread's own waits use real time, at most ``poll_interval_s`` at a stretch, so it also
    notices events that other processes put into a shared outbox.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: IngestClient | None,
        *,
        counters: IngestCounters | None = None,
        max_backoff_s: float = 300,
        base_backoff_s: float = 1.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
    ) -> None:
        if base_backoff_s <= 0 or max_backoff_s < base_backoff_s:
            raise ValueError(
                f"TelemetrySender: need 0 < base_backoff_s <= max_backoff_s, got "
                f"{base_backoff_s} and {max_backoff_s}"
            )
        if batch_size < 1:
            raise ValueError(f"TelemetrySender: batch_size must be >= 1, got {batch_size}")
        self.outbox = outbox
        self.client = client
        self.counters: IngestCounters = counters or NoopIngestCounters()
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._hold_until = float("-inf")
        self._warned_no_client = False
        self._round_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._force = False
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart_in_child(ref))

    # ------------------------------------------------------------------ public

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self.running:
            return
        if self.client is None:
            self._warn_no_client()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="openfeature-canary-telemetry", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout_s`` for it; pending events stay queued."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def enqueue(self, event_name: str, properties: Mapping[str, JsonScalar]) -> OutboxEvent:
        """Queue an event durably, then wake the sender; return the queued event.

        An ``event_id`` property (the outbox id) is added unless one is given, so that the
        ingest can drop the duplicates that at-least-once delivery may produce. Raises
        ``ValueError`` for a property that is not a JSON scalar and
        :class:`~openfeature_canary._outbox.OutboxError` when the event could not be written.
        """
        event = OutboxEvent.create(event_name, properties, now=self._clock())
        if "event_id" not in event.properties:
            event = replace(event, properties={**event.properties, "event_id": event.id})
        self.outbox.enqueue(event)
        self._wake.set()
        return event

    def deliver_once(self) -> int:
        """One synchronous delivery round over the due events; return how many were accepted.

        Stops at the first failed batch (the rest waits for the backoff). Never raises for
        delivery problems.
        """
        return self._round(force=False)

    def flush(self, timeout_s: float) -> bool:
        """Deliver now (ignoring backoff once) and wait until the outbox is empty.

        Returns ``True`` when nothing is pending, ``False`` when ``timeout_s`` ran out first
        (or there is no client to deliver with). Without a running thread the rounds run on
        the calling thread.
        """
        deadline = time.monotonic() + timeout_s
        if self.client is None:
            self._warn_no_client()
            return not self._pending_safely()
        if not self.running:
            self._round(force=True)
            while self._pending_safely():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(remaining, self._wait_s()))
                self._round(force=False)
            return True
        with self._progress:
            self._force = True
            self._wake.set()
            return self._progress.wait_for(
                lambda: not self._pending_safely(),
                timeout=max(0.0, deadline - time.monotonic()),
            )

    def backoff_s(self, attempts: int) -> float:
        """The delay before retry number ``attempts`` (1 = after the first failure)."""
        cap = min(self.max_backoff_s, self.base_backoff_s * 2.0 ** max(0, attempts - 1))
        return self._rng.uniform(0.0, cap)

    # ------------------------------------------------------------------ internals

    def _round(self, *, force: bool) -> int:
        with self._round_lock:
            if self.client is None:
                self._warn_no_client()
                return 0
            now = self._clock()
            if not force and now < self._hold_until:
                return 0
            try:
                pending = self.outbox.pending()
            except CanaryError as exc:
                log.error("telemetry: cannot read the outbox: %s", exc)
                return 0
            due = [e for e in pending if force or e.next_attempt_at <= now]
            delivered = 0
            for start in range(0, len(due), self.batch_size):
                batch = due[start : start + self.batch_size]
                if not self._deliver(self.client, batch):
                    break
                delivered += len(batch)
            return delivered

    def _deliver(self, client: IngestClient, batch: list[OutboxEvent]) -> bool:
        # ``sent`` is counted once the outcome is known, together with ``accepted``: counted
        # before the POST, a scrape in between would see an in-flight batch as refused.
        try:
            client.send(batch)
        except IngestError as exc:
            self.counters.sent(len(batch))
            attempts = max(e.attempts for e in batch) + 1
            delay = self.backoff_s(attempts)
            retry_at = self._clock() + delay
            self._hold_until = retry_at
            log.warning(
                "telemetry: delivery of %d event(s) to %s failed (attempt %d), retrying in "
                "%.1fs: %s",
                len(batch),
                client.display_url,
                attempts,
                delay,
                exc,
            )
            try:
                self.outbox.record_attempts((e.id for e in batch), str(exc), retry_at)
            except CanaryError as record_exc:
                log.error("telemetry: cannot record the failed attempt: %s", record_exc)
            return False
        self.counters.sent(len(batch))
        self.counters.accepted(len(batch))
        self._hold_until = float("-inf")
        try:
            self.outbox.mark_delivered(e.id for e in batch)
        except CanaryError as exc:
            # They will be posted again later; the ingest drops them by event_id.
            log.error("telemetry: delivered but cannot mark in the outbox: %s", exc)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with self._progress:
                force, self._force = self._force, False
            try:
                self._round(force=force)
            except Exception:  # keep the sender alive; the next round retries
                log.exception("telemetry: delivery round failed")
            with self._progress:
                self._progress.notify_all()
            self._wake.wait(self._wait_s())

    def _wait_s(self) -> float:
        """Real seconds until the next round is worth running (at most the poll interval)."""
        try:
            pending = self.outbox.pending()
        except CanaryError:
            return self.poll_interval_s
        if not pending:
            return self.poll_interval_s
        due_at = max(min(e.next_attempt_at for e in pending), self._hold_until)
        return min(self.poll_interval_s, max(0.0, due_at - self._clock()))

    def _pending_safely(self) -> bool:
        try:
            return bool(self.outbox.pending())
        except CanaryError:
            return True

    def _warn_no_client(self) -> None:
        if not self._warned_no_client:
            self._warned_no_client = True
            log.warning(
                "telemetry: no ingest URL configured; events stay in the outbox %s until a "
                "sender with a URL delivers them",
                self.outbox.path,
            )


def _restart_in_child(ref: weakref.ref[TelemetrySender]) -> None:
    sender = ref()
    if sender is None:
        return
    was_running = sender._thread is not None
    # Locks held by threads that do not exist in the child would never be released.
    sender._round_lock = threading.Lock()
    sender._progress = threading.Condition()
    sender._thread = None
    if was_running:
        sender.start()
