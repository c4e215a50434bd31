"""Keeping an ingest URL's secrets out of logs and errors: redaction and scrubbing.

URLs are only ever shown through :func:`redact_url` (no ``user:password@``, no query string).
A :class:`Scrubber` replaces the URL by its redacted form, and every secret of it (user,
password, the basic-auth header httpx sends, query values) by ``***``, in any text: also when
a server echoes it back percent-encoded, HTML-escaped or JSON-escaped. :class:`ScrubLog` does
the same to httpx's and httpcore's log records. Used by
:class:`~openfeature_canary.events.IngestClient`.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import re
from typing import Final
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

import httpx

__all__ = [
    "HTTP_LOGGERS",
    "REDACTED",
    "ScrubLog",
    "Scrubber",
    "add_log_filter",
    "one_line",
    "redact_url",
    "remove_log_filter",
]

#: What a secret is replaced by.
REDACTED: Final = "***"
#: The loggers whose records may carry the URL or an echoed secret.
HTTP_LOGGERS: Final = (
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
        netloc = f"{REDACTED}@{netloc}"
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


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


class Scrubber:
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
            text = self._pattern.sub(REDACTED, text)
        return text


def one_line(text: str) -> str:
    """``text`` on one line of printable characters (a server's body may hold anything)."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


class ScrubLog(logging.Filter):
    """Scrubs one client's URL and secrets from httpx's and httpcore's log records (httpx logs
    every request's full URL at INFO, httpcore the response headers at DEBUG)."""

    def __init__(self, scrub: Scrubber) -> None:
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


def add_log_filter(log_filter: logging.Filter) -> None:
    for name in HTTP_LOGGERS:
        logging.getLogger(name).addFilter(log_filter)


def remove_log_filter(log_filter: logging.Filter) -> None:
    for name in HTTP_LOGGERS:
        logging.getLogger(name).removeFilter(log_filter)
