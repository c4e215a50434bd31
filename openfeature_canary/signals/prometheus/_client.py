"""Instant queries against Prometheus' HTTP API, each call under one total deadline.

``POST {url}/api/v1/query`` with ``query``, ``time`` and ``timeout`` as a form (long queries
never meet a URL length limit, and httpx's request log shows no PromQL). httpx's timeouts bound
each network operation, not a request: a server that drips its answer a byte at a time would
hold a request forever. So a call runs on its own event loop in a short-lived worker thread,
under ``asyncio.wait_for`` (which cancels the request wherever it is: connecting, sending,
reading headers or body, and closes its connection); the caller also stops waiting at the
deadline plus a small grace, whatever the worker does (a stuck name lookup cannot be
cancelled). A fresh loop and client per call keep this safe from any thread, inside a running
event loop, and across ``fork()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from openfeature_canary.plan._promql import promql_duration

__all__ = ["PrometheusApi", "QueryFailed", "Sample", "Session"]

T = TypeVar("T")

QUERY_PATH: Final = "/api/v1/query"
#: Bytes of an answer read at most: our queries return a handful of series.
_MAX_BODY: Final = 4 * 1024 * 1024
#: Characters of a body or query shown in an error.
_PREVIEW: Final = 200
#: How long the caller waits past the deadline for the worker's own cancellation to land.
_GRACE_S: Final = 0.25


class QueryFailed(Exception):
    """A query gave no usable answer. ``transient``: the server could not be reached or did
    not answer in time (the next query would most likely fail the same way)."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector (or the scalar, with no labels)."""

    labels: Mapping[str, str]
    value: float


def _one_line(text: str, limit: int = _PREVIEW) -> str:
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _api_error(doc: object) -> str:
    if isinstance(doc, dict) and doc.get("error"):
        kind = doc.get("errorType")
        return _one_line(f"{kind}: {doc['error']}" if kind else str(doc["error"]))
    return ""


def _number(raw: object) -> float:
    if not isinstance(raw, list | tuple) or len(raw) != 2 or not isinstance(raw[1], str):
        raise QueryFailed(f"malformed sample {_one_line(repr(raw))}")
    try:
        return float(raw[1])  # Prometheus writes NaN, +Inf and -Inf as such
    except ValueError:
        raise QueryFailed(f"malformed sample value {_one_line(raw[1])!r}") from None


def parse_answer(status: int, reason: str, body: bytes) -> tuple[Sample, ...]:
    """The samples of an instant-query answer; :class:`QueryFailed` saying what was wrong."""
    text = body.decode("utf-8", errors="replace")
    try:
        doc: Any = json.loads(text)
    except ValueError:
        doc = None
    if not 200 <= status < 300:
        detail = _api_error(doc) or _one_line(text)
        raise QueryFailed(f"HTTP {status} {reason}".rstrip() + (f": {detail}" if detail else ""))
    if not isinstance(doc, dict):
        raise QueryFailed(f"the answer is not JSON: {_one_line(text) or '(empty body)'}")
    if doc.get("status") != "success":
        detail = _api_error(doc) or "no error message"
        raise QueryFailed(f"status {_one_line(str(doc.get('status')))!r}: {detail}")
    data = doc.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind == "scalar":
        return (Sample(MappingProxyType({}), _number(result)),)
    if kind != "vector" or not isinstance(result, list):
        raise QueryFailed(f"expected an instant vector or a scalar, got {kind!r}")
    samples = []
    for item in result:
        labels = item.get("metric") if isinstance(item, dict) else None
        if not isinstance(labels, dict):
            raise QueryFailed(f"malformed vector element {_one_line(repr(item))}")
        value = _number(item.get("value"))
        samples.append(Sample(MappingProxyType({str(k): str(v) for k, v in labels.items()}), value))
    return tuple(samples)


class Session:
    """One call's connection to Prometheus: run :meth:`instant` queries inside it."""

    def __init__(self, client: httpx.AsyncClient, endpoint: str, timeout: str) -> None:
        self._client = client
        self._endpoint = endpoint
        self._timeout = timeout

    async def instant(self, query: str, at: float) -> tuple[Sample, ...]:
        """Evaluate ``query`` at unix time ``at``; :class:`QueryFailed` names the query."""
        form = {"query": query, "time": f"{at:.3f}", "timeout": self._timeout}
        async with self._client.stream("POST", self._endpoint, data=form) as response:
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_BODY:
                    raise QueryFailed(f"answer larger than {_MAX_BODY} bytes")
            status, reason = response.status_code, response.reason_phrase
        try:
            return parse_answer(status, reason, body)
        except QueryFailed as exc:
            raise QueryFailed(f"{exc} (query: {_one_line(query)})") from None


def _display(url: str) -> str:
    """``url`` without credentials or query string: safe for logs and readings."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class PrometheusApi:
    """Where queries go, and how long one call may take (``timeout_s``, in total).

    ``url`` is Prometheus' base URL (``http://prometheus:9090``, or with a path prefix); put
    credentials in ``headers`` (``{"Authorization": "Bearer …"}``), never in the URL, which
    is shown in readings and logs (``ValueError`` otherwise).
    """

    def __init__(
        self, url: str, *, timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> None:
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except (ValueError, TypeError, AttributeError):
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Prometheus URL {url!r}: must be an absolute http(s) URL")
        if "@" in parts.netloc or parts.query:
            raise ValueError(
                "Prometheus URL: give credentials in headers=, not in the URL "
                "(and no query string): the URL is shown in readings and logs"
            )
        self.timeout_s = float(timeout_s)
        self.display_url = _display(url)
        self._endpoint = self.display_url + QUERY_PATH
        self._headers = dict(headers or {})
        self._server_timeout = promql_duration(self.timeout_s)
        self._ssl: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        # Building a context loads the CA bundle (~20 ms): once per source, shared by calls
        # (two threads racing here build two, harmlessly; no lock to inherit across a fork).
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def run(self, job: Callable[[Session], Awaitable[T]]) -> T:
        """Run ``job`` (its queries) within ``timeout_s``; :class:`QueryFailed` otherwise."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        worker = threading.Thread(
            target=self._work, args=(job, future), name="openfeature-canary-prometheus", daemon=True
        )
        try:
            worker.start()
        except RuntimeError as exc:
            raise QueryFailed(f"cannot start the query: {exc}", transient=True) from None
        try:
            return future.result(self.timeout_s + _GRACE_S)
        except concurrent.futures.TimeoutError:
            raise QueryFailed(self._late(), transient=True) from None

    def _late(self) -> str:
        return f"no complete answer within the {self.timeout_s:g} s deadline"

    def _work(
        self, job: Callable[[Session], Awaitable[T]], future: concurrent.futures.Future[T]
    ) -> None:
        loop = asyncio.new_event_loop()
        try:
            future.set_result(loop.run_until_complete(self._bounded(job)))
        except BaseException as exc:  # handed to the caller, which turns it into a reading
            future.set_exception(exc)
        finally:
            loop.close()

    async def _bounded(self, job: Callable[[Session], Awaitable[T]]) -> T:
        try:
            return await asyncio.wait_for(self._open(job), self.timeout_s)
        except asyncio.TimeoutError:
            raise QueryFailed(self._late(), transient=True) from None
        except httpx.TimeoutException as exc:
            raise QueryFailed(f"{self._late()} ({type(exc).__name__})", transient=True) from None
        except httpx.TransportError as exc:
            detail = _one_line(str(exc)) or "no detail"
            raise QueryFailed(f"{type(exc).__name__}: {detail}", transient=True) from None

    async def _open(self, job: Callable[[Session], Awaitable[T]]) -> T:
        async with httpx.AsyncClient(
            timeout=self.timeout_s, headers=self._headers, verify=self._context()
        ) as client:
            return await job(Session(client, self._endpoint, self._server_timeout))
