"""Fork safety: a forked child never inherits a lock held by a thread that is not there.

Pre-fork servers (gunicorn with ``--preload``, uWSGI, uvicorn's workers) fork after import,
while background threads run. ``os.fork()`` copies only the forking thread: a lock that another
thread held at that moment stays held forever in the child, and an ``flock`` it held stays held
through the file description the child inherits, so every process's writes wait until the
child exits. This module's one set of ``os.register_at_fork`` handlers runs the handlers that
objects register here, in a fixed order (not in the order the objects were created):

1. **Before the fork**, in levels: OpenTelemetry's SDK locks around one data point
   (:func:`hold_opentelemetry_across_fork`), then the hooks' own (``MetricsHook``'s
   collection lock), then the locks around file writes (:func:`hold_locks_across_fork`:
   nothing is taken under them). Each is acquired, so the fork waits for the recording, fold
   or write under way and nothing is half done across it. The wait is bounded by
   :data:`FORK_WAIT_S` in all; past it the fork goes on (logged) and the child renews what
   could not be taken.
2. **After the fork**: in the parent the locks are released (reverse order); in the child
   they are replaced by fresh ones (the SDK's, all of them, re-initialized), then the
   background threads are restarted (:func:`on_fork` with ``level=THREADS``).

Before any of that, the fork waits (within the same bound) until no other thread is inside an
import, then holds Python's import lock across it (:class:`_Imports`): a module that another
thread was importing at the fork would stay half imported in the child for good, its import
lock held by a thread that is not there.

A lock that may be held across slow work (the telemetry sender's round, during an HTTP POST;
a controller's transition; a policy tick) is never waited for: :func:`renew_locks_after_fork`
only gives the child a fresh one. The evaluation path takes none of these locks.
"""

from __future__ import annotations

import _imp
import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "FORK_WAIT_S",
    "HOOKS",
    "OPENTELEMETRY",
    "RENEW",
    "THREADS",
    "WRITES",
    "acquire_until",
    "hold_locks_across_fork",
    "hold_opentelemetry_across_fork",
    "on_fork",
    "renew_locks_after_fork",
]

log = logging.getLogger("openfeature_canary")

#: The longest a fork waits, in all, for the locks it takes (seconds).
FORK_WAIT_S: Final = 5.0

# Levels: the order in which handlers run before the fork (after it: the reverse, and the
# threads last). The forking thread holds the lower levels' locks while it waits for a higher
# level's: a thread holding a lock of one level must never wait for one of a lower level.
OPENTELEMETRY: Final = 0
HOOKS: Final = 1
WRITES: Final = 2
RENEW: Final = 3  # after_in_child only
THREADS: Final = 4  # after_in_child only, once every lock is renewed

#: ``before(owner, deadline)``: ``deadline`` is a ``time.monotonic()`` value.
Before = Callable[[Any, float], None]
After = Callable[[Any], None]


@dataclass(eq=False)
class _Handlers:
    ref: Callable[[], Any]
    level: int
    before: Before | None
    after_in_parent: After | None
    after_in_child: After | None


# The one deliberate module-level state of the package: os.register_at_fork is itself
# process-wide and cannot be unregistered, so the handlers of every object live in one
# process-wide registry (registered once, pruned as owners die).
_registry: list[_Handlers] = []
_registry_lock = threading.Lock()
#: The handlers entered by the fork under way, each with its owner (alive until it ends).
_active: list[tuple[_Handlers, Any]] = []
_busy: list[str] = []
_PRUNE_MIN: Final = 256
_prune_at = _PRUNE_MIN


def on_fork(
    owner: Any,
    *,
    level: int,
    before: Before | None = None,
    after_in_parent: After | None = None,
    after_in_child: After | None = None,
) -> None:
    """Run these handlers around every ``os.fork()`` while ``owner`` exists.

    Each is called with ``owner`` (``before`` also with the deadline of the wait); keep them
    from referring to ``owner`` themselves, or it lives forever. ``before`` must not wait past
    the deadline (:func:`acquire_until`).
    """
    global _prune_at
    handlers = _Handlers(_weak(owner), level, before, after_in_parent, after_in_child)
    with _registry_lock:
        if len(_registry) >= _prune_at:  # objects come and go: forget the gone ones
            _registry[:] = [h for h in _registry if h.ref() is not None]
            _prune_at = max(_PRUNE_MIN, 2 * len(_registry))
        _registry.append(handlers)


def acquire_until(lock: Any, deadline: float, what: str = "") -> bool:
    """Acquire ``lock`` unless ``deadline`` (``time.monotonic()``) passes first.

    A lock still busy at the deadline is named (``what``) in one warning after the fork.
    """
    remaining = deadline - time.monotonic()
    if lock.acquire(timeout=remaining) if remaining > 0 else lock.acquire(blocking=False):
        return True
    _busy.append(what or type(lock).__name__)
    return False


def hold_locks_across_fork(
    owner: Any, *attributes: str, factory: Callable[[], Any] = threading.Lock
) -> None:
    """Acquire ``owner.<attribute>`` before a fork, release it after it in the parent, and
    replace it by a fresh ``factory()`` lock in the child.

    For locks held only around short local work that must not be half done across a fork,
    such as a file write under an ``flock``: the fork waits for it. Nothing may be taken while
    holding one of them (see the levels in the module docstring).
    """
    held: list[Any] = []

    def before(obj: Any, deadline: float) -> None:
        for name in attributes:
            lock = getattr(obj, name)
            if acquire_until(lock, deadline, f"{type(obj).__name__}.{name}"):
                held.append(lock)

    def after_in_parent(_obj: Any) -> None:
        while held:
            held.pop().release()

    def after_in_child(obj: Any) -> None:
        held.clear()
        for name in attributes:
            setattr(obj, name, factory())

    on_fork(
        owner,
        level=WRITES,
        before=before,
        after_in_parent=after_in_parent,
        after_in_child=after_in_child,
    )


def renew_locks_after_fork(
    owner: Any, *attributes: str, factory: Callable[[], Any] = threading.Lock
) -> None:
    """In a forked child, replace ``owner.<attribute>`` by a fresh ``factory()`` lock.

    For locks the fork must not wait for: held across slow work (a network round, a whole
    transition) or around other locks.
    """

    def renew(obj: Any) -> None:
        for name in attributes:
            setattr(obj, name, factory())

    on_fork(owner, level=RENEW, after_in_child=renew)


# ---------------------------------------------------------------------- OpenTelemetry


_otel_targets: list[Callable[[], Any]] = []


def hold_opentelemetry_across_fork(target: Any) -> None:
    """Make an OpenTelemetry SDK meter provider safe to fork (opentelemetry-python #4345).

    ``target`` is a ``MeterProvider``, one of its ``MetricReader`` s, or the API's proxy of
    the global one (resolved at each fork); anything else (a no-op provider) is ignored. A
    recording holds an aggregation's lock (and a view-instrument match's for a new attribute
    set); a collection holds the reader's, the measurement consumer's and the reader
    storage's for its whole run (observable callbacks included), and a match's and an
    aggregation's around each data point. Left held in a child, its next recording or
    collection would wait forever. Before a fork, every match's, aggregation's and exemplar
    reservoir's lock is acquired (in the SDK's order), so no data point is half updated: the
    fork waits microseconds, never for a whole collection; the parent releases them. The
    child, where only its thread exists, walks the SDK's objects and re-initializes every
    lock: these, the collection's, the meters', a periodic reader's export lock. Registering
    the same provider again, or another of its objects, changes nothing.
    """
    ref = _weak(target)
    with _registry_lock:
        _otel_targets[:] = [r for r in _otel_targets if r() is not None]
        if not any(r() is target for r in _otel_targets):
            _otel_targets.append(ref)


class _OpenTelemetryLocks:
    def __init__(self) -> None:
        self.held: list[Any] = []

    def before(self, deadline: float) -> None:
        # What a recording holds, and a collection around one data point: waited for (a few
        # microseconds). A whole collection is not: it may run slow callbacks.
        for consumer, _providers in _consumers():
            for match in _matches(consumer):
                # Its aggregations are listed once it is held: none can be added meanwhile.
                self._take(getattr(match, "_lock", None), deadline, "view-instrument match")
                for agg in tuple(getattr(match, "_attributes_aggregation", {}).values()):
                    self._take(getattr(agg, "_lock", None), deadline, "aggregation")
                    reservoir = getattr(agg, "_reservoir", None)
                    self._take(getattr(reservoir, "_lock", None), deadline, "exemplar reservoir")

    def _take(self, lock: Any, deadline: float, what: str) -> None:
        if lock is not None and acquire_until(lock, deadline, f"OpenTelemetry {what}"):
            self.held.append(lock)

    def after_in_parent(self) -> None:
        while self.held:
            self.held.pop().release()

    def after_in_child(self) -> None:
        # Only this thread exists: walk the SDK's objects and free every lock it has, also
        # those held by a collection under way or an instrument created during the fork.
        self.held.clear()
        for consumer, providers in _consumers():
            for lock in _every_lock(consumer, providers):
                reinit = getattr(lock, "_at_fork_reinit", None)
                if reinit is not None:
                    reinit()


def _consumers() -> list[tuple[Any, list[Any]]]:
    """Each registered SDK measurement consumer, once, with its known meter providers."""
    consumers: dict[int, tuple[Any, list[Any]]] = {}
    for ref in _otel_targets:
        parts = _sdk_parts(ref())
        if parts is not None:
            consumer, provider = parts
            entry = consumers.setdefault(id(consumer), (consumer, []))
            if provider is not None and all(p is not provider for p in entry[1]):
                entry[1].append(provider)
    return list(consumers.values())


def _matches(consumer: Any) -> list[Any]:
    """The consumer's view-instrument matches, reader by reader, instrument by instrument."""
    found: list[Any] = []
    for storage in tuple(getattr(consumer, "_reader_storages", {}).values()):
        for matches in tuple(getattr(storage, "_instrument_view_instrument_matches", {}).values()):
            found.extend(matches)
    return found


def _every_lock(consumer: Any, providers: list[Any]) -> list[Any]:
    """Every lock of a consumer's SDK objects (call in the child only: nothing changes)."""
    objects: list[Any] = [consumer]
    for provider in providers:
        for meter in getattr(provider, "_meters", {}).values():
            objects.append(meter)
    storages = getattr(consumer, "_reader_storages", {})
    objects += [*storages, *storages.values()]  # the readers, their storages
    for match in _matches(consumer):
        objects.append(match)
        for agg in getattr(match, "_attributes_aggregation", {}).values():
            objects += [agg, getattr(agg, "_reservoir", None)]
    names = ("_lock", "_export_lock", "_instrument_registration_lock", "_instrument_ids_lock")
    return [lock for obj in objects for name in names if (lock := getattr(obj, name, None))]


def _sdk_parts(target: Any) -> tuple[Any, Any] | None:
    """(measurement consumer, meter provider or None) of an SDK provider, reader or proxy."""
    for _ in range(3):
        if target is None:
            return None
        consumer = getattr(target, "_measurement_consumer", None)
        if consumer is not None:
            return consumer, target
        owner = getattr(getattr(target, "_collect", None), "__self__", None)
        if owner is not None and hasattr(owner, "_reader_storages"):
            return owner, None  # a reader: its collect callback is the consumer's
        target = getattr(target, "_real_meter_provider", None)  # the API's global proxy
    return None


_OTEL: Final = _OpenTelemetryLocks()


# ---------------------------------------------------------------------- imports in flight


class _Imports:
    """No import under way in another thread at a fork (see the module docstring).

    An import holds its module's lock (``importlib._bootstrap._module_locks``) while the
    module runs; a new one first takes the interpreter's import lock (``_imp``) to get it.
    So: wait until no module lock is held by another thread, take the import lock (no new
    import can start), check again, and hold it across the fork. CPython's own fork takes the
    import lock too and gives the child one level of it: released after the fork in both.
    """

    def __init__(self) -> None:
        self.held = False

    def before(self, deadline: float) -> None:
        me = threading.get_ident()
        while True:
            busy = _imports_in_flight(me)
            if not busy:
                _imp.acquire_lock()
                if not _imports_in_flight(me):
                    self.held = True
                    return
                _imp.release_lock()  # one started meanwhile: let it finish
            elif time.monotonic() >= deadline:
                _busy.append("the import of " + ", ".join(busy))
                return
            else:
                time.sleep(0.001)

    def after(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(RuntimeError):  # not held (another CPython's fork)
                _imp.release_lock()


def _imports_in_flight(me: int) -> list[str]:
    """The modules other threads are importing now (CPython's module locks)."""
    bootstrap = sys.modules.get("importlib._bootstrap")
    locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return []
    found = []
    for name, ref in list(locks.items()):
        lock = ref() if callable(ref) else None
        owner = getattr(lock, "owner", None)
        if getattr(lock, "count", 0) and owner not in (None, 0, me):
            found.append(str(name))
    return found


_IMPORTS: Final = _Imports()


# ---------------------------------------------------------------------- the os handlers


def _weak(owner: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(owner)
    except TypeError:  # not weakly referable: kept alive
        return lambda: owner


def _before() -> None:
    deadline = time.monotonic() + FORK_WAIT_S
    _busy.clear()
    _registry_lock.acquire()  # only held to append: never for long
    live = [(h, owner) for h in _registry if (owner := h.ref()) is not None]
    _registry[:] = [h for h, _ in live]
    live.sort(key=lambda pair: pair[0].level)
    _active[:] = live
    _call(_OTEL.before, deadline)
    for handlers, owner in live:
        if handlers.before is not None:
            _call(handlers.before, owner, deadline)
    # Last: while it is held no thread can start an import, so nothing else may wait on it.
    _call(_IMPORTS.before, deadline)


def _after_in_parent() -> None:
    _call(_IMPORTS.after)
    active = list(_active)
    _active.clear()
    _registry_lock.release()
    for handlers, owner in reversed(active):
        if handlers.after_in_parent is not None:
            _call(handlers.after_in_parent, owner)
    _call(_OTEL.after_in_parent)
    _warn_busy()


def _after_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    active = list(_active)
    _active.clear()
    # Locks first (reverse order), then the threads that will take them.
    order = [p for p in reversed(active) if p[0].level != THREADS]
    order += [p for p in active if p[0].level == THREADS]
    _call(_IMPORTS.after)
    _call(_OTEL.after_in_child)
    for handlers, owner in order:
        if handlers.after_in_child is not None:
            _call(handlers.after_in_child, owner)
    _busy.clear()  # the parent tells


def _call(handler: Callable[..., None], *args: Any) -> None:
    try:
        handler(*args)
    except Exception:  # one object's handler must not leave the others' locks held
        log.exception("openfeature-canary: fork handler failed")


def _warn_busy() -> None:
    if _busy:
        log.warning(
            "openfeature-canary: os.fork() waited %gs for %s and went on; the child renews "
            "them, but a file lock held at the fork stays held until the child exits",
            FORK_WAIT_S,
            ", ".join(dict.fromkeys(_busy)),
        )
        _busy.clear()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )
