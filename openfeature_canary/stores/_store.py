"""State stores: where rollout states live, behind one small protocol.

- ``memory://``: this process only (tests, the demo, a single worker).
- ``file:///path/state.json``: several processes on one host; writes take an inter-process
  lock and replace the file atomically, so a reader never sees half a state.

Every write is a compare-and-set on the state's version: a change based on a stale read fails
with :class:`StaleStateError` instead of silently overwriting someone else's rollback.
"""

from __future__ import annotations

import fcntl
import json
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary._errors import StaleStateError, StateStoreError
from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary._state import RolloutState

__all__ = ["FileStateStore", "MemoryStateStore", "StateStore", "open_store"]

_FORMAT = 1


@runtime_checkable
class StateStore(Protocol):
    """Where rollout states are kept. Implementations must be safe to share between threads."""

    url: str

    def load(self, flag_key: str) -> RolloutState | None:
        """The flag's state, or ``None`` when it was never written."""
        ...

    def load_all(self) -> dict[str, RolloutState]:
        """Every stored state by flag key."""
        ...

    def save(self, state: RolloutState, expected_version: int) -> None:
        """Write ``state`` if the stored version is still ``expected_version`` (0 = absent).

        Raises :class:`StaleStateError` when another writer got there first and
        :class:`StateStoreError` when the store cannot be written.
        """
        ...

    def change_token(self) -> object:
        """A cheap value that differs whenever any state changed (for polling)."""
        ...


class MemoryStateStore:
    """States in a dict of this process. ``open_store("memory://")`` gives a fresh one."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._states: dict[str, RolloutState] = {}
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._changes = 0

    def load(self, flag_key: str) -> RolloutState | None:
        """See :class:`StateStore`."""
        return self._states.get(flag_key)

    def load_all(self) -> dict[str, RolloutState]:
        """See :class:`StateStore`."""
        return dict(self._states)

    def save(self, state: RolloutState, expected_version: int) -> None:
        """See :class:`StateStore`."""
        with self._lock:
            current = self._states.get(state.flag_key)
            _check_version(self.url, state, current, expected_version)
            self._states[state.flag_key] = state
            self._changes += 1

    def change_token(self) -> object:
        """See :class:`StateStore`."""
        return self._changes


class FileStateStore:
    """All flags' states in one JSON file, shared by the processes of one host.

    Writers hold ``fcntl.flock`` on ``<file>.lock`` and replace the file with an atomic rename
    (after ``fsync``), so readers need no lock and never see a torn file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"file://{self.path}"
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.Lock()
        renew_locks_after_fork(self, "_thread_lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateStoreError(f"{self.url}: cannot create folder: {exc.strerror}") from exc

    def _read(self) -> dict[str, RolloutState]:
        try:
            raw = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateStoreError(f"{self.url}: cannot read: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
            if data.get("format") != _FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}")
            return {k: RolloutState.from_dict(v) for k, v in data["flags"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateStoreError(f"{self.url}: corrupt state file: {exc}") from exc

    def load(self, flag_key: str) -> RolloutState | None:
        """See :class:`StateStore`."""
        return self._read().get(flag_key)

    def load_all(self) -> dict[str, RolloutState]:
        """See :class:`StateStore`."""
        return self._read()

    def save(self, state: RolloutState, expected_version: int) -> None:
        """See :class:`StateStore`."""
        try:
            with self._thread_lock, open(self._lock_path, "a+b") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                states = self._read()
                _check_version(self.url, state, states.get(state.flag_key), expected_version)
                states[state.flag_key] = state
                self._write(states)
        except OSError as exc:
            raise StateStoreError(f"{self.url}: cannot write: {exc.strerror or exc}") from exc

    def _write(self, states: dict[str, RolloutState]) -> None:
        payload: dict[str, Any] = {
            "format": _FORMAT,
            "flags": {k: s.to_dict() for k, s in states.items()},
        }
        atomic_write_text(self.path, json.dumps(payload, indent=1, sort_keys=True))

    def change_token(self) -> object:
        """See :class:`StateStore`: the file's inode and mtime change with every rename."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)


def _check_version(
    url: str, state: RolloutState, current: RolloutState | None, expected: int
) -> None:
    found = current.version if current else 0
    if found != expected:
        raise StaleStateError(
            f"{url}: {state.flag_key}: state changed underneath (expected version {expected}, "
            f"found {found}); re-read and retry"
        )


def open_store(url: str) -> StateStore:
    """Open a store from its URL: ``memory://`` or ``file:///path/state.json``.

    Raises :class:`StateStoreError` naming the URL when it is not understood.
    """
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return MemoryStateStore()
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StateStoreError(f"store URL {url!r}: file URLs need an absolute path (file:///…)")
        path = unquote(parsed.path)
        if not path.startswith("/"):
            # A relative path would follow each worker's current folder and split the state.
            raise StateStoreError(f"store URL {url!r}: file URLs need an absolute path (file:///…)")
        if path.endswith("/"):
            raise StateStoreError(
                f"store URL {url!r}: needs a file name, e.g. file:///var/lib/x.json"
            )
        return FileStateStore(path)
    if parsed.scheme == "redis":
        raise StateStoreError(
            f"store URL {url!r}: the redis store is not available in this version"
        )
    raise StateStoreError(
        f"store URL {url!r}: unknown scheme {parsed.scheme!r} (use memory:// or file:///path)"
    )
