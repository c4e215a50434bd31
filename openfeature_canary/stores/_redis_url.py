"""A ``redis://`` URL, checked: host, database, ``prefix=`` and ``timeout=``; and the client import.

Kept apart from the store so that the ``[redis]`` extra is imported only when a ``redis://`` URL
is opened, and so that every message shows the URL without its password.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from openfeature_canary.errors import StateStoreError

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TIMEOUT_S", "RedisOptions", "import_redis", "parse_redis_url"]

DEFAULT_PREFIX: Final = "openfeature-canary"
DEFAULT_TIMEOUT_S: Final = 1.0
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_OPTIONS: Final = ("prefix", "timeout")


@dataclass(frozen=True)
class RedisOptions:
    """A parsed ``redis://`` URL: ``url`` is what messages show (no password)."""

    url: str
    connect_url: str
    prefix: str
    timeout: float


def import_redis(url: str) -> Any:
    """The ``redis`` module (with ``backoff`` and ``retry``); :class:`StateStoreError` naming
    the URL and the extra to install when it is missing."""
    try:
        import redis
        import redis.backoff
        import redis.retry
    except ImportError:
        raise StateStoreError(
            f"store URL {url!r} needs the redis package: pip install 'openfeature-canary[redis]'"
        ) from None
    return redis


def parse_redis_url(url: str) -> RedisOptions:
    """Check a ``redis://`` URL; :class:`StateStoreError` naming it and what is wrong."""
    shown = _scrubbed(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 address
        raise StateStoreError(f"store URL {shown!r}: {exc}") from None

    def bad(detail: str) -> StateStoreError:
        return StateStoreError(f"store URL {shown!r}: {detail}")

    try:
        parts.port  # noqa: B018  (parsing it is the check)
    except ValueError:
        raise bad("the port must be a number in 1..65535") from None
    if parts.fragment:
        raise bad("has a #fragment; options go in the query: ?prefix=…&timeout=…")
    if not parts.hostname:
        raise bad("needs a host, e.g. redis://127.0.0.1:6379/0")
    db = parts.path.strip("/") or "0"
    if not (db.isascii() and db.isdigit()):
        raise bad(f"the database must be a number, e.g. /0, got {parts.path!r}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    given = dict(pairs)
    unknown = sorted({k for k, _ in pairs} - set(_OPTIONS))
    if unknown or len(given) != len(pairs):
        got = ", ".join(unknown) or repr(parts.query)
        raise bad(f"the options are prefix= and timeout=, each once; got {got}")
    prefix = given.get("prefix", DEFAULT_PREFIX)
    if not _PREFIX_RE.fullmatch(prefix):
        raise bad(f"prefix= must be 1-100 of A-Z a-z 0-9 . _ : - (starting alnum), got {prefix!r}")
    try:
        timeout = float(given.get("timeout", DEFAULT_TIMEOUT_S))
    except ValueError:
        timeout = math.nan
    if not (math.isfinite(timeout) and 0 < timeout <= 60):
        raise bad(f"timeout= must be seconds in (0, 60], got {given.get('timeout')!r}")
    connect = urlunsplit((parts.scheme, parts.netloc, f"/{int(db)}", "", ""))
    return RedisOptions(url=shown, connect_url=connect, prefix=prefix, timeout=timeout)


def _scrubbed(url: str) -> str:
    """``url`` with its password replaced by ``***`` (everything before ``@`` if it cannot be
    parsed)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user, host = parts.username or "", parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else url
