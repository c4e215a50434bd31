"""What a state store offers a fleet: each process's published record, and one decider lease.

Every process of a service publishes a small record (its cumulative signals) with a heartbeat;
exactly one process at a time holds the lease and decides (spec §10). :class:`FleetStore` is
the protocol; the memory and file stores implement it with the helpers of this module, the
``redis://`` store with ``stores/_redis_fleet.py``. Times are the rollout clock's seconds,
given by the caller (``now``), never read here.

The file store's layout, beside its state file ``state.json``::

    state.json.fleet/processes/<process id>.json   {"heartbeat": …, "record": {…}}, atomic
    state.json.fleet/lease.json                    {"holder": …, "expires": …}, atomic
    state.json.fleet/lease.lock                    flock'ed around each lease change
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary._forksafe import hold_locks_across_fork
from openfeature_canary.errors import StateStoreError

__all__ = [
    "MAX_RECORD_BYTES",
    "FileFleet",
    "FleetDelegate",
    "FleetStore",
    "MemoryFleet",
    "UnreadableRecords",
    "check_lease_args",
    "check_process_id",
    "decode_record",
    "encode_record",
    "parse_lease",
]

log = logging.getLogger("openfeature_canary")

#: The largest record (its JSON text with the heartbeat, in bytes) a store accepts.
MAX_RECORD_BYTES: Final = 1024 * 1024
_PROCESS_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@runtime_checkable
class FleetStore(Protocol):
    """What a state store offers a fleet: each process's published record, and one lease."""

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        """Write this process's record (JSON-safe) with heartbeat ``now`` (replaces its last
        one)."""
        ...

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """Every published record: process id -> (heartbeat, record). A record that cannot be
        read (torn, corrupt, wrong shape at the top level) is left out with one log warning
        per id."""
        ...

    def forget(self, process_id: str) -> None:
        """Drop a process's record (it is gone)."""
        ...

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """Take the decider lease, or renew it when ``holder`` has it: True when ``holder`` holds
        it until ``now + ttl_s``; False (no exception, nothing logged) when another holder's lease
        has not expired at ``now``. Atomic across processes/hosts."""
        ...

    def release_lease(self, holder: str) -> None:
        """Give the lease up if ``holder`` has it (a clean shutdown: takeover is immediate)."""
        ...

    def lease_holder(self, now: float) -> str | None:
        """Who holds an unexpired lease at ``now`` (for status and tests)."""
        ...


class FleetDelegate:
    """The :class:`FleetStore` methods of a state store, passed on to its ``_fleet``."""

    _fleet: FleetStore

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        self._fleet.publish(process_id, record, now)

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        return self._fleet.records()

    def forget(self, process_id: str) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        self._fleet.forget(process_id)

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        return self._fleet.try_lease(holder, ttl_s, now)

    def release_lease(self, holder: str) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        self._fleet.release_lease(holder)

    def lease_holder(self, now: float) -> str | None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        return self._fleet.lease_holder(now)


# ---------------------------------------------------------------------- shared checks


def check_process_id(process_id: object, what: str = "process id") -> str:
    """``process_id`` when it is 1-128 of ``A-Z a-z 0-9 _ . : -``; ValueError naming it else."""
    if not isinstance(process_id, str) or not _PROCESS_ID_RE.fullmatch(process_id):
        raise ValueError(
            f"{what} {process_id!r:.80}: must be 1-128 characters of A-Z a-z 0-9 _ . : -"
        )
    return process_id


def _check_time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    return float(value)


def check_lease_args(holder: str, ttl_s: float, now: float) -> tuple[str, float, float]:
    """The arguments of :meth:`FleetStore.try_lease`, checked (ValueError naming the bad one)."""
    check_process_id(holder, "lease holder")
    ttl = _check_time(ttl_s, "lease ttl_s")
    if ttl <= 0:
        raise ValueError(f"lease ttl_s must be positive, got {ttl_s!r}")
    return holder, ttl, _check_time(now, "lease now")


def encode_record(process_id: str, record: Mapping[str, Any], now: float) -> str:
    """The stored text of a record: ``{"heartbeat": now, "record": record}`` as JSON.

    ValueError naming the process when the id, ``now`` or the record is not acceptable (not
    JSON-safe, NaN, over :data:`MAX_RECORD_BYTES`)."""
    check_process_id(process_id)
    heartbeat = _check_time(now, f"process {process_id}: heartbeat")
    if not isinstance(record, Mapping):
        raise ValueError(f"process {process_id}: record must be a mapping, got {type(record)}")
    try:
        text = json.dumps(
            {"heartbeat": heartbeat, "record": dict(record)},
            separators=(",", ":"),
            allow_nan=False,
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"process {process_id}: record is not JSON-safe: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > MAX_RECORD_BYTES:
        raise ValueError(
            f"process {process_id}: record is {size} bytes, more than {MAX_RECORD_BYTES}"
        )
    return text


def decode_record(raw: bytes | str) -> tuple[float, dict[str, Any]]:
    """(heartbeat, record) of a stored text; ValueError saying what is wrong with it."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # not UTF-8, not JSON (a torn or foreign value)
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    heartbeat, record = data.get("heartbeat"), data.get("record")
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float):
        raise ValueError(f"heartbeat: expected a number, got {heartbeat!r:.40}")
    if not math.isfinite(heartbeat):
        raise ValueError(f"heartbeat: expected a finite number, got {heartbeat!r}")
    if not isinstance(record, dict):
        raise ValueError(f"record: expected a JSON object, got {type(record).__name__}")
    return float(heartbeat), record


class UnreadableRecords:
    """Which process ids' records could not be read: each is warned about once, until it
    reads fine again or is forgotten (the decider reads every tick; one broken file must not
    fill the log). Safe to share between threads."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        hold_locks_across_fork(self, "_lock")

    def decode(
        self, process_id: str, where: str, raw: bytes | str
    ) -> tuple[float, dict[str, Any]] | None:
        """The decoded record, or None (warned once) when it cannot be read."""
        try:
            found = decode_record(raw)
        except ValueError as exc:
            self.left_out(process_id, where, str(exc))
            return None
        self.forget(process_id)
        return found

    def left_out(self, process_id: str, where: str, reason: str) -> None:
        """Warn (once) that this id's record in ``where`` is left out, and why."""
        with self._lock:
            first = process_id not in self._warned
            self._warned.add(process_id)
        if first:
            log.warning(
                "openfeature-canary: %s: fleet record of process %s in %s left out: %s",
                self._url,
                process_id,
                where,
                reason,
            )

    def forget(self, process_id: str) -> None:
        """Warn again if this id's record is unreadable later."""
        with self._lock:
            self._warned.discard(process_id)


# ---------------------------------------------------------------------- memory


class MemoryFleet:
    """:class:`FleetStore` in dicts of this process (the memory store's)."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lease: tuple[str, float] | None = None
        self._lock = threading.Lock()
        hold_locks_across_fork(self, "_lock")

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        """See :class:`FleetStore`: kept as a JSON copy, as the other stores keep it."""
        found = decode_record(encode_record(process_id, record, now))
        with self._lock:
            self._records[process_id] = found

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """See :class:`FleetStore`."""
        with self._lock:
            return dict(self._records)

    def forget(self, process_id: str) -> None:
        """See :class:`FleetStore`."""
        check_process_id(process_id)
        with self._lock:
            self._records.pop(process_id, None)

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """See :class:`FleetStore`."""
        holder, ttl, now = check_lease_args(holder, ttl_s, now)
        with self._lock:
            if _taken_by_other(self._lease, holder, now):
                return False
            self._lease = (holder, now + ttl)
            return True

    def release_lease(self, holder: str) -> None:
        """See :class:`FleetStore`."""
        check_process_id(holder, "lease holder")
        with self._lock:
            if self._lease is not None and self._lease[0] == holder:
                self._lease = None

    def lease_holder(self, now: float) -> str | None:
        """See :class:`FleetStore`."""
        lease = self._lease
        return lease[0] if lease is not None and lease[1] > now else None


def _taken_by_other(lease: tuple[str, float] | None, holder: str, now: float) -> bool:
    """Whether ``lease`` (holder, expires) is another holder's, unexpired at ``now``."""
    return lease is not None and lease[0] != holder and lease[1] > now


# ---------------------------------------------------------------------- file


class FileFleet:
    """:class:`FleetStore` in files beside a state file (the file store's): one record file
    per process and the lease, each replaced atomically; the lease changed under ``flock``.

    See the module docstring for the layout. Safe to share between threads and to fork.
    """

    def __init__(self, state_path: Path, url: str) -> None:
        self._url = url
        self._parent = state_path.parent
        self._folder = state_path.with_name(state_path.name + ".fleet")
        self._records_dir = self._folder / "processes"
        self._lease_path = self._folder / "lease.json"
        self._lock_path = self._folder / "lease.lock"
        self._unreadable = UnreadableRecords(url)
        self._thread_lock = threading.Lock()
        # A fork waits for the lease change under way: a child must not inherit its flock.
        hold_locks_across_fork(self, "_thread_lock")

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        """See :class:`FleetStore`."""
        text = encode_record(process_id, record, now)
        with self._os_errors("cannot publish"):
            self._make_folder(self._records_dir)
            atomic_write_text(
                self._records_dir / f"{process_id}.json", text, mode=0o600, durable=False
            )

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """See :class:`FleetStore`."""
        found: dict[str, tuple[float, Mapping[str, Any]]] = {}
        for process_id, path in self._record_files():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # forgotten meanwhile
                continue
            except OSError as exc:  # one unreadable file (a folder, no permission): not all
                self._unreadable.left_out(process_id, str(path), exc.strerror or str(exc))
                continue
            record = self._unreadable.decode(process_id, str(path), raw)
            if record is not None:
                found[process_id] = record
        return found

    def _record_files(self) -> Iterator[tuple[str, Path]]:
        names: list[str] = []
        with self._os_errors("cannot read"):
            self._check_parent()
            with suppress(FileNotFoundError):
                names = os.listdir(self._records_dir)
        for name in sorted(names):
            stem = name.removesuffix(".json")
            # Others: the temporary files of a write under way (atomic_write_text).
            if stem != name and _PROCESS_ID_RE.fullmatch(stem):
                yield stem, self._records_dir / name

    def forget(self, process_id: str) -> None:
        """See :class:`FleetStore`."""
        check_process_id(process_id)
        with self._os_errors("cannot forget"):
            (self._records_dir / f"{process_id}.json").unlink(missing_ok=True)
        self._unreadable.forget(process_id)

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """See :class:`FleetStore`: read, compared and written under the lease's ``flock``."""
        holder, ttl, now = check_lease_args(holder, ttl_s, now)
        with self._lease_locked():
            if _taken_by_other(self._read_lease(), holder, now):
                return False
            self._write_lease({"holder": holder, "expires": now + ttl})
            return True

    def release_lease(self, holder: str) -> None:
        """See :class:`FleetStore`."""
        check_process_id(holder, "lease holder")
        with self._lease_locked():
            lease = self._read_lease()
            if lease is not None and lease[0] == holder:
                self._lease_path.unlink(missing_ok=True)

    def lease_holder(self, now: float) -> str | None:
        """See :class:`FleetStore`: the lease file is replaced atomically, read without lock."""
        with self._os_errors("cannot read"):
            lease = self._read_lease()
        return lease[0] if lease is not None and lease[1] > now else None

    def _read_lease(self) -> tuple[str, float] | None:
        """(holder, expires), or None when free; a damaged lease file counts as free (the
        next taker replaces it)."""
        try:
            data = json.loads(self._lease_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return parse_lease(data)

    def _write_lease(self, lease: dict[str, Any]) -> None:
        lease_text = json.dumps(lease, separators=(",", ":"))
        atomic_write_text(self._lease_path, lease_text, mode=0o600, durable=False)

    @contextmanager
    def _lease_locked(self) -> Iterator[None]:
        with self._os_errors("cannot change the lease"):
            self._make_folder(self._folder)
            with self._thread_lock:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                with os.fdopen(fd, "r+b") as lock_file:
                    fcntl.flock(lock_file, fcntl.LOCK_EX)
                    yield

    def _make_folder(self, folder: Path) -> None:
        self._check_parent()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _check_parent(self) -> None:
        # As the state store: a typo in the path must not create folders somewhere.
        if not self._parent.is_dir():
            raise StateStoreError(f"{self._url}: folder {self._parent} does not exist")

    @contextmanager
    def _os_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            text = f"{self._url}: fleet: {what}{where}: {exc.strerror or exc}"
            raise StateStoreError(text) from exc


def parse_lease(data: object) -> tuple[str, float] | None:
    """(holder, expires) of a stored lease object, or None when it is not one."""
    if not isinstance(data, dict):
        return None
    holder, expires = data.get("holder"), data.get("expires")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return None
    return (holder, float(expires)) if isinstance(holder, str) and math.isfinite(expires) else None
