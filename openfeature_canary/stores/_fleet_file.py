"""The file store's fleet part: records and the decider lease in files beside the state file.

The layout, beside the state file ``state.json``::

    state.json.fleet/processes/<process id>.json   {"heartbeat": …, "record": {…}}, atomic
    state.json.fleet/lease.json                    {"holder": …, "expires": …}, atomic
    state.json.fleet/lease.lock                    flock'ed around each lease change

A lease is taken or renewed under the ``flock`` (read, compared, replaced); it is read for
status without the lock, since it is only ever replaced whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary._forksafe import hold_locks_across_fork
from openfeature_canary.errors import StateStoreError
from openfeature_canary.stores._fleet_codec import (
    PROCESS_ID_RE,
    Lease,
    UnreadableRecords,
    check_lease_args,
    check_process_id,
    encode_lease,
    encode_record,
    parse_lease,
    taken_by_other,
)

__all__ = ["FileFleet"]


class FileFleet:
    """:class:`~openfeature_canary.stores.FleetStore` in files beside a state file (the file
    store's): one record file per process and the lease, each replaced atomically; the lease
    changed under ``flock``.

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
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        text = encode_record(process_id, record, now)
        with self._os_errors("cannot publish"):
            self._make_folder(self._records_dir)
            atomic_write_text(
                self._records_dir / f"{process_id}.json", text, mode=0o600, durable=False
            )

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
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
            if stem != name and PROCESS_ID_RE.fullmatch(stem):
                yield stem, self._records_dir / name

    def forget(self, process_id: str) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        check_process_id(process_id)
        with self._os_errors("cannot forget"):
            (self._records_dir / f"{process_id}.json").unlink(missing_ok=True)
        self._unreadable.forget(process_id)

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """See :class:`~openfeature_canary.stores.FleetStore`: read, compared and written
        under the lease's ``flock``."""
        holder, ttl, now = check_lease_args(holder, ttl_s, now)
        with self._lease_locked():
            if taken_by_other(self._read_lease(), holder, now):
                return False
            text = encode_lease(holder, now + ttl)
            atomic_write_text(self._lease_path, text, mode=0o600, durable=False)
            return True

    def release_lease(self, holder: str) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        check_process_id(holder, "lease holder")
        with self._lease_locked():
            lease = self._read_lease()
            if lease is not None and lease.holder == holder:
                self._lease_path.unlink(missing_ok=True)

    def lease(self) -> Lease | None:
        """See :class:`~openfeature_canary.stores.FleetStore`: the lease file is replaced
        atomically, so it is read without the lock (and never created)."""
        with self._os_errors("cannot read"):
            return self._read_lease()

    def lease_holder(self, now: float) -> str | None:
        """See :class:`~openfeature_canary.stores.FleetStore`."""
        lease = self.lease()
        return lease.holder if lease is not None and lease.held_at(now) else None

    def _read_lease(self) -> Lease | None:
        """The stored lease, or None when free; a damaged lease file counts as free (the
        next taker replaces it)."""
        try:
            data = json.loads(self._lease_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return parse_lease(data)

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
