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
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary._forksafe import hold_locks_across_fork
from openfeature_canary._validate import _show, _show_key
from openfeature_canary.errors import StaleStateError, StateStoreError
from openfeature_canary.state import RolloutState
from openfeature_canary.stores._fleet import FileFleet, FleetDelegate, MemoryFleet
from openfeature_canary.stores._json import json_kind, no_duplicates

__all__ = ["FileStateStore", "MemoryStateStore", "StateStore"]

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

    def save_many(self, changes: Sequence[tuple[RolloutState, int]]) -> tuple[bool, ...]:
        """:meth:`save` for several flags in one write: each ``(state, expected_version)`` is
        written if its flag's stored version is still the expected one.

        Returns, per change, whether it was written (``False``: another writer got there
        first). Raises :class:`StateStoreError` when the store cannot be written (then none
        was).
        """
        ...

    def change_token(self) -> object:
        """A cheap value that differs whenever any state changed (for polling)."""
        ...


class MemoryStateStore(FleetDelegate):
    """States in a dict of this process. ``open_store("memory://")`` gives a fresh one.

    Also a :class:`~openfeature_canary.stores.FleetStore` (records and lease in dicts)."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._states: dict[str, RolloutState] = {}
        self._lock = threading.Lock()
        hold_locks_across_fork(self, "_lock")
        self._changes = 0
        self._fleet = MemoryFleet()

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

    def save_many(self, changes: Sequence[tuple[RolloutState, int]]) -> tuple[bool, ...]:
        """See :class:`StateStore`."""
        with self._lock:
            written = _apply(self._states, changes)
            self._changes += any(written)
            return written

    def change_token(self) -> object:
        """See :class:`StateStore`."""
        return self._changes


class FileStateStore(FleetDelegate):
    """All flags' states in one JSON file, shared by the processes of one host.

    Writers hold ``fcntl.flock`` on ``<file>.lock`` and replace the file with an atomic rename
    (after ``fsync``), so readers need no lock and never see a torn file. The file is parsed
    once per change: a read compares the file's bytes with the last parsed ones. The folder
    must exist (a typo in the path must not start a rollout that no service reads); the file
    and its lock are created owner-only (``0600``). As a
    :class:`~openfeature_canary.stores.FleetStore` it keeps the fleet's records and lease in
    ``<file>.fleet/`` (docs/stores.md).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"file://{self.path}"
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.Lock()
        # A fork waits for the write under way: a child must not inherit its flock.
        hold_locks_across_fork(self, "_thread_lock")
        self._parsed: tuple[bytes, dict[str, RolloutState]] | None = None
        self._fleet = FileFleet(self.path, self.url)

    def _read(self) -> dict[str, RolloutState]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if not self.path.parent.is_dir():
                raise StateStoreError(
                    f"{self.url}: folder {self.path.parent} does not exist"
                ) from None
            return {}
        except OSError as exc:
            raise StateStoreError(f"{self.url}: cannot read: {exc.strerror or exc}") from exc
        except ValueError as exc:  # a NUL byte in a path given directly (not via open_store)
            raise StateStoreError(f"{self.url!r}: cannot read: {exc}") from exc
        cached = self._parsed
        if cached is not None and cached[0] == raw:
            return cached[1]
        states = _parse_states(self.url, raw)
        self._parsed = (raw, states)
        return states

    def load(self, flag_key: str) -> RolloutState | None:
        """See :class:`StateStore`."""
        return self._read().get(flag_key)

    def load_all(self) -> dict[str, RolloutState]:
        """See :class:`StateStore`."""
        return dict(self._read())

    def save(self, state: RolloutState, expected_version: int) -> None:
        """See :class:`StateStore`."""
        with self._locked() as states:
            _check_version(self.url, state, states.get(state.flag_key), expected_version)
            states[state.flag_key] = state
            self._write(states)

    def save_many(self, changes: Sequence[tuple[RolloutState, int]]) -> tuple[bool, ...]:
        """See :class:`StateStore`: one lock, one read, one atomic write for every change."""
        with self._locked() as states:
            written = _apply(states, changes)
            if any(written):
                self._write(states)
            return written

    @contextmanager
    def _locked(self) -> Iterator[dict[str, RolloutState]]:
        """The stored states (a copy to change) under the inter-process write lock."""
        if not self.path.parent.is_dir():
            raise StateStoreError(f"{self.url}: folder {self.path.parent} does not exist")
        try:
            with self._thread_lock:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                with os.fdopen(fd, "r+b") as lock_file:
                    fcntl.flock(lock_file, fcntl.LOCK_EX)
                    yield dict(self._read())
        except OSError as exc:
            raise StateStoreError(f"{self.url}: cannot write: {exc.strerror or exc}") from exc

    def _write(self, states: dict[str, RolloutState]) -> None:
        payload: dict[str, Any] = {
            "format": _FORMAT,
            "flags": {k: s.to_dict() for k, s in states.items()},
        }
        atomic_write_text(
            self.path, json.dumps(payload, separators=(",", ":"), sort_keys=True), mode=0o600
        )

    def change_token(self) -> object:
        """See :class:`StateStore`: the file's inode, size and times change with every rename."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateStoreError(f"{self.url}: cannot read: {exc.strerror or exc}") from exc
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _parse_states(url: str, raw: bytes) -> dict[str, RolloutState]:
    """The states of a state file's bytes, validated; :class:`StateStoreError` naming the
    store and, for a bad value, the flag and the field (``flags.x.percent: must be …``)."""

    def corrupt(detail: str) -> StateStoreError:
        return StateStoreError(f"{url}: corrupt state file: {detail}")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = f"0x{raw[exc.start]:02x}"
        raise corrupt(f"not UTF-8 text (byte {byte} at offset {exc.start})") from exc
    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except RecursionError:
        raise corrupt("nested too deeply to be a state file") from None
    except ValueError as exc:  # JSONDecodeError, a duplicate key, an integer beyond the limit
        raise corrupt(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise corrupt(f"expected a JSON object, got {json_kind(data)}")
    found = data.get("format")
    if type(found) is not int or found != _FORMAT:
        raise corrupt(f"unsupported format {_show(found)}" if "format" in data else "no 'format'")
    flags = data.get("flags")
    if not isinstance(flags, dict):
        raise corrupt("'flags' is not an object" if "flags" in data else "no 'flags'")
    states: dict[str, RolloutState] = {}
    try:
        for key, entry in flags.items():
            path = f"flags.{_show_key(key)}"
            state = RolloutState.from_dict(entry, path=path)
            if state.flag_key != key:
                raise StateStoreError(
                    f"{path}.flag_key: must be its entry's key {_show(key)}, got "
                    f"{_show(state.flag_key)}"
                )
            states[key] = state
    except StateStoreError as exc:
        raise corrupt(str(exc)) from exc
    return states


def _apply(
    states: dict[str, RolloutState], changes: Sequence[tuple[RolloutState, int]]
) -> tuple[bool, ...]:
    written = []
    for state, expected in changes:
        current = states.get(state.flag_key)
        ok = (current.version if current else 0) == expected
        if ok:
            states[state.flag_key] = state
        written.append(ok)
    return tuple(written)


def _check_version(
    url: str, state: RolloutState, current: RolloutState | None, expected: int
) -> None:
    found = current.version if current else 0
    if found != expected:
        raise StaleStateError(
            f"{url}: {state.flag_key}: state changed underneath (expected version {expected}, "
            f"found {found}); re-read and retry"
        )
