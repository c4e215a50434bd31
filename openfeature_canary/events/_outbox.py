"""A durable, file-backed queue of telemetry events (the "outbox").

Rollback events must reach the telemetry ingest even when the ingest is down or the process
dies right after the rollback. :meth:`Outbox.enqueue` therefore returns only once the event
is on disk (``fsync``); a background sender
(:class:`~openfeature_canary.events.TelemetrySender`)
delivers what :meth:`Outbox.pending` returns and records the outcome.

On disk the outbox is an append-only JSON-lines journal::

    {"op": "enqueue", "event": {"id": "…", "event_name": "canary_rollback", …}}
    {"op": "attempt", "id": "…", "error": "HTTP 503", "next_attempt_at": 1700000012.5}
    {"op": "delivered", "ids": ["…"]}

Replaying it gives the pending events, and the ids of the last :data:`REMEMBERED_DELIVERED`
delivered ones. An event's id is its identity: :meth:`Outbox.enqueue` writes nothing for an id
that is pending or was delivered recently, so a transition announced twice (by the process
that made it and by a start-up reconciliation, see
:meth:`~openfeature_canary.policy.Pipeline.reconcile`) is queued once.

Every write holds ``fcntl.flock`` on ``<file>.lock``, so several processes on one host may share
an outbox; a read holds it shared. Linux ``flock`` has no writer preference (readers that keep
overlapping keep a writer out for as long as they run), so a writer first takes
``<file>.turnstile`` and holds it while it waits for the exclusive lock, and a reader passes
through the turnstile (takes and drops it) before its shared lock: once a writer waits, no new
reader gets in. A reader whose outbox file did not change since its last read (same inode,
size and modification time) answers from memory without any lock.

When nothing is pending the journal is rewritten to the one line that remembers the delivered
ids, and when it has grown much longer than what is pending it is rewritten the same way
(atomically, with ``os.replace``). A line torn by a crash mid-write is skipped with a
warning; the next write starts on a fresh line, so one torn line never spoils another.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from openfeature_canary._atomicfile import atomic_write_text, fsync_dir
from openfeature_canary._forksafe import hold_locks_across_fork
from openfeature_canary.errors import OutboxError

__all__ = ["REMEMBERED_DELIVERED", "JsonScalar", "Outbox", "OutboxError", "OutboxEvent"]

log = logging.getLogger("openfeature_canary.telemetry")

#: What an event property may hold: a JSON scalar.
JsonScalar = str | int | float | bool | None

# Rewrite the journal once it has this many lines more than there are pending events.
_COMPACT_SLACK: Final = 1000

#: How many delivered event ids an outbox remembers (the newest), so that an event announced
#: again after its delivery (a start-up reconciliation) is not queued twice. Kept across the
#: journal's compaction; about 35 bytes each on disk.
REMEMBERED_DELIVERED: Final = 2000


@dataclass(frozen=True)
class OutboxEvent:
    """One queued telemetry event and its delivery bookkeeping.

    ``id`` identifies the event: a fresh uuid4 hex string, or the ``event_id`` its producer
    derived from what it announces (see :meth:`create`). ``properties`` holds JSON scalars only
    (it is copied into a read-only mapping). ``attempts`` counts failed deliveries,
    ``next_attempt_at`` is the earliest time (seconds, same clock as ``created_at``) of the next
    try and ``last_error`` the reason the last try failed.

    >>> event = OutboxEvent.create("canary_rollback", {"from_pct": 25}, now=0.0)
    >>> event.attempts, event.properties["from_pct"]
    (0, 25)
    """

    id: str
    event_name: str
    properties: Mapping[str, JsonScalar]
    created_at: float
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None

    def __post_init__(self) -> None:
        if not self.event_name:
            raise ValueError("an outbox event needs an event_name")
        clean: dict[str, JsonScalar] = {}
        for key, value in self.properties.items():
            if not isinstance(key, str):
                raise ValueError(f"event {self.event_name}: property names must be str: {key!r}")
            if value is not None and not isinstance(value, str | int | float | bool):
                raise ValueError(
                    f"event {self.event_name}: property {key!r} must be a JSON scalar "
                    f"(str, int, float, bool or None), got {type(value).__name__}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"event {self.event_name}: property {key!r} is {value}")
            clean[key] = value
        object.__setattr__(self, "properties", MappingProxyType(clean))

    @classmethod
    def create(
        cls,
        event_name: str,
        properties: Mapping[str, JsonScalar],
        *,
        now: float,
        event_id: str | None = None,
    ) -> OutboxEvent:
        """A new event, due at once, with ``event_id`` as its id (a fresh uuid4 when ``None``).

        Give an id derived from what the event announces to make queueing it idempotent.
        """
        if event_id is not None and not event_id:
            raise ValueError(f"event {event_name}: an empty event_id")
        return cls(
            id=uuid.uuid4().hex if event_id is None else event_id,
            event_name=event_name,
            properties=properties,
            created_at=now,
            next_attempt_at=now,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the journal."""
        return {
            "id": self.id,
            "event_name": self.event_name,
            "properties": dict(self.properties),
            "created_at": self.created_at,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutboxEvent:
        """Inverse of :meth:`to_dict`; ``ValueError``/``KeyError``/``TypeError`` when malformed."""
        last_error = data.get("last_error")
        return cls(
            id=str(data["id"]),
            event_name=str(data["event_name"]),
            properties=dict(data["properties"]),
            created_at=float(data["created_at"]),
            attempts=int(data.get("attempts", 0)),
            next_attempt_at=float(data.get("next_attempt_at", data["created_at"])),
            last_error=None if last_error is None else str(last_error),
        )


@dataclass
class _Replay:
    events: dict[str, OutboxEvent] = field(default_factory=dict)
    #: The newest delivered ids, oldest first (an ordered set).
    delivered: dict[str, None] = field(default_factory=dict)
    lines: int = 0
    corrupt: list[tuple[int, str]] = field(default_factory=list)

    def knows(self, event_id: str) -> bool:
        return event_id in self.events or event_id in self.delivered


class Outbox:
    """A durable queue of :class:`OutboxEvent` in one journal file, shared by the processes of
    one host.

    Use it behind a :class:`~openfeature_canary.events._ingest.TelemetrySender`; use it directly to
    inspect what is still undelivered::

        outbox = Outbox(Path("canary-reports/telemetry-outbox.jsonl"))
        outbox.enqueue(OutboxEvent.create("canary_rollback", {"from_pct": 25}, now=time.time()))
        [e.event_name for e in outbox.pending()]   # ['canary_rollback'], also after a restart

    Every method raises :class:`OutboxError` when the file cannot be read or written.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._turnstile_path = self.path.with_name(self.path.name + ".turnstile")
        self._thread_lock = threading.Lock()
        self._warned: set[tuple[int, int]] = set()
        self._cache_key: tuple[int, int, int] | None = None
        self._cache = _Replay()
        # No I/O here: the folder is created by the first write (a provider's constructor
        # must not touch the disk).
        _reset_after_fork(self)

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"

    # ------------------------------------------------------------------ public

    def enqueue(self, event: OutboxEvent) -> bool:
        """Append ``event``; return once it is on disk (``fsync``), so it survives a crash.

        Idempotent by id: an event whose id is pending, or among the last
        :data:`REMEMBERED_DELIVERED` delivered, is not written again (returns ``False``).
        """
        return self._append([{"op": "enqueue", "event": event.to_dict()}], unless_known=event.id)

    def pending(self) -> list[OutboxEvent]:
        """The undelivered events, oldest first (due or not: see ``next_attempt_at``)."""
        if not self.path.parent.is_dir():
            return []  # nothing was ever written
        with self._thread_lock:
            cached = self._cached_if_unchanged()
        if cached is not None:
            return list(cached.events.values())
        with self._locked(exclusive=False):
            return list(self._replay().events.values())

    def mark_delivered(self, ids: Iterable[str]) -> None:
        """Forget these events (the ingest accepted them) and remember their ids (the newest
        :data:`REMEMBERED_DELIVERED`), so that they are not queued again."""
        id_list = list(dict.fromkeys(ids))
        if not id_list:
            return
        self._append([{"op": "delivered", "ids": id_list}])

    def record_attempt(self, event_id: str, error: str, next_attempt_at: float) -> None:
        """Record a failed delivery of one event: one more attempt, why, and when to retry."""
        self.record_attempts([event_id], error, next_attempt_at)

    def record_attempts(self, ids: Iterable[str], error: str, next_attempt_at: float) -> None:
        """:meth:`record_attempt` for a whole failed batch, with one ``fsync``."""
        records = [
            {"op": "attempt", "id": i, "error": error, "next_attempt_at": next_attempt_at}
            for i in dict.fromkeys(ids)
        ]
        if records:
            self._append(records)

    # ------------------------------------------------------------------ internals

    def _cached_if_unchanged(self) -> _Replay | None:
        """The last replay when the file is still the one it was read from (caller holds
        the thread lock), else ``None``. No ``flock``: a write under way changes the size or
        the modification time before it ends, and a compaction the inode."""
        if self._cache_key is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None  # let the locked read report it
        if (st.st_ino, st.st_size, st.st_mtime_ns) != self._cache_key:
            return None
        return self._cache

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        try:
            if exclusive:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            with (
                self._thread_lock,
                _open_lock(self._turnstile_path) as turnstile,
                _open_lock(self._lock_path) as lock_file,
            ):
                # Writer preference (module docstring): a writer waits holding the turnstile,
                # so readers arriving meanwhile wait behind it instead of overlapping forever.
                fcntl.flock(turnstile, fcntl.LOCK_EX)
                if not exclusive:
                    fcntl.flock(turnstile, fcntl.LOCK_UN)
                fcntl.flock(lock_file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                if exclusive:
                    fcntl.flock(turnstile, fcntl.LOCK_UN)
                yield
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: {exc.strerror or exc}") from exc

    def _append(self, records: list[dict[str, Any]], *, unless_known: str | None = None) -> bool:
        data = "".join(json.dumps(r, allow_nan=False, sort_keys=True) + "\n" for r in records)
        with self._locked(exclusive=True):
            if unless_known is not None and self._replay().knows(unless_known):
                return False
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                # A crash mid-write leaves a line without its newline; start a fresh one so
                # that the torn line stays the only casualty.
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = "\n" + data
                _write_all(fd, data.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            if not existed:
                fsync_dir(self.path.parent)
            self._compact_if_due()
        return True

    def _replay(self) -> _Replay:
        """Read the journal (caller holds the lock); cached while the file is unchanged."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._cache_key, self._cache = None, _Replay()
            return self._cache
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key == self._cache_key:
            return self._cache
        with open(self.path, "rb") as fh:
            raw = fh.read()
        replay = _parse(raw)
        for lineno, problem in replay.corrupt:
            if (st.st_ino, lineno) not in self._warned:
                self._warned.add((st.st_ino, lineno))
                log.warning(
                    "outbox %s: skipping unreadable line %d (%s); a write was probably torn",
                    self.path,
                    lineno,
                    problem,
                )
        self._cache_key, self._cache = key, replay
        return replay

    def _compact_if_due(self) -> None:
        replay = self._replay()
        # What a compacted journal holds: one line of remembered ids, one line per pending event.
        needed = len(replay.events) + (1 if replay.delivered else 0)
        slack = replay.lines - needed
        if slack <= 0 or (replay.events and slack < _COMPACT_SLACK):
            return
        records: list[dict[str, Any]] = []
        if replay.delivered:
            records.append({"op": "delivered", "ids": list(replay.delivered)})
        records += ({"op": "enqueue", "event": e.to_dict()} for e in replay.events.values())
        text = "".join(json.dumps(r, allow_nan=False, sort_keys=True) + "\n" for r in records)
        atomic_write_text(self.path, text, mode=0o600)


def _open_lock(path: Path) -> Any:
    """The outbox's lock file, created owner-only like the outbox itself."""
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")


def _parse(raw: bytes) -> _Replay:
    replay = _Replay()
    events = replay.events
    delivered = replay.delivered
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        replay.lines += 1
        try:
            record = json.loads(line)
            op = record["op"]
            if op == "enqueue":
                event = OutboxEvent.from_dict(record["event"])
                events[event.id] = event
            elif op == "attempt":
                found = events.get(str(record["id"]))
                if found is not None:
                    error = record.get("error")
                    events[found.id] = replace(
                        found,
                        attempts=found.attempts + 1,
                        last_error=None if error is None else str(error),
                        next_attempt_at=float(record["next_attempt_at"]),
                    )
            elif op == "delivered":
                for raw_id in record["ids"]:
                    event_id = str(raw_id)
                    events.pop(event_id, None)
                    delivered.pop(event_id, None)  # re-inserted as the newest
                    delivered[event_id] = None
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            replay.corrupt.append((lineno, f"{type(exc).__name__}: {exc}"[:200]))
    if len(delivered) > REMEMBERED_DELIVERED:
        for old_id in list(delivered)[: len(delivered) - REMEMBERED_DELIVERED]:
            del delivered[old_id]
    return replay


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _reset_after_fork(outbox: Outbox) -> None:
    """Fork safety: a fork waits for the write (or read) under way, whose ``flock`` the child
    would otherwise inherit and keep (every process's writes then wait for the child to
    exit); the child gets a fresh thread lock."""
    hold_locks_across_fork(outbox, "_thread_lock")
