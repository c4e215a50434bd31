"""``open_store(url)``: a state store from its URL.

The ``redis://`` store is imported here, when such a URL is opened, not before: it is the
``[redis]`` extra, and ``import openfeature_canary`` must work without it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from openfeature_canary.errors import StateStoreError
from openfeature_canary.stores._store import FileStateStore, MemoryStateStore, StateStore

__all__ = ["open_store"]


def open_store(url: str) -> StateStore:
    """Open a store from its URL: ``memory://``, ``file:///path/state.json`` or
    ``redis://host:port/db`` (see :class:`~openfeature_canary.stores.RedisStateStore`).

    Raises :class:`StateStoreError` naming the URL when it is not understood.
    """
    if not url.strip():
        raise StateStoreError(
            f"store URL {url!r} is empty: give memory://, file:///path/state.json or "
            "redis://host:port/db"
        )
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return MemoryStateStore()
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StateStoreError(f"store URL {url!r}: file URLs need an absolute path (file:///…)")
        path = unquote(parsed.path)
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in path):
            raise StateStoreError(
                f"store URL {url!r}: a file path cannot contain control characters "
                "(a NUL byte %00, a newline %0A, …)"
            )
        if not path.startswith("/"):
            # A relative path would follow each worker's current folder and split the state.
            raise StateStoreError(f"store URL {url!r}: file URLs need an absolute path (file:///…)")
        if path.endswith("/"):
            raise StateStoreError(
                f"store URL {url!r}: needs a file name, e.g. file:///var/lib/x.json"
            )
        return FileStateStore(path)
    if parsed.scheme in ("redis", "rediss"):
        # The [redis] extra: loaded only when a redis:// URL is opened (a deferred optional
        # dependency, not a cycle: _redis imports nothing of this module).
        from openfeature_canary.stores._redis import RedisStateStore

        return RedisStateStore(url)
    raise StateStoreError(
        f"store URL {url!r}: unknown scheme {parsed.scheme!r} (use memory://, file:///path "
        "or redis://host:port/db)"
    )
