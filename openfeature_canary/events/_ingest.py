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
URLs are only ever shown through :func:`redact_url` (no ``user:password@``, no query string).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from openfeature_canary.errors import CanaryError
from openfeature_canary.events._outbox import OutboxEvent

__all__ = [
    "INGEST_PATH",
    "IngestClient",
    "IngestCounters",
    "IngestError",
    "NoopIngestCounters",
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
        # The connection pool is made on first use: constructing a client does no I/O.
        self._transport = transport
        self._http_client: httpx.Client | None = None
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

    def _http(self) -> httpx.Client:
        if self._http_client is None:
            self._http_client = httpx.Client(timeout=self.timeout_s, transport=self._transport)
        return self._http_client

    def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._http_client is not None:
            self._http_client.close()
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
            response = self._http().post(self._url, json=self.body(events))
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
