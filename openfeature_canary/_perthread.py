"""Per-thread shards: counts each thread writes alone (no lock), added up when a reader collects.

``MetricsHook`` (evaluations) and the tracking recorder (``track()``) both count on a hot path
where an OpenTelemetry call per event, and its locks, would cost as much as the work itself. So
each thread counts into a *shard* of its own, and :class:`PerThread` keeps the shards:

- a thread's first use announces its shard with an atomic ``deque.append`` (:meth:`join`); the
  hot path afterwards reads ``local.shard`` and never takes a lock;
- the thread's ``threading.local`` storage also holds a token, which CPython frees when the
  thread ends, after its last use; a weak-reference callback on it then queues the shard, whose
  final counts the owner's ``fold`` adds into a total, so short-lived threads cost nothing once
  gone. An ending thread never waits: if the lock is busy, its holder folds the queue after it;
- collection takes :attr:`lock` and reads :meth:`settle`'s live shards beside the folded total,
  so a thread ending meanwhile is counted once, live or folded;
- around a fork the lock is held (:meth:`before_fork`, :meth:`after_fork_in_parent`) so no fold
  is left half done, and the child gets a fresh lock (:meth:`after_fork_in_child`); what the
  child does with the other threads' shards is the owner's choice.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from openfeature_canary._forksafe import acquire_until

__all__ = ["PerThread", "Shard"]


class Shard(Protocol):
    """What a shard needs: the weak reference to its thread's token (``None`` once folded)."""

    token: weakref.ref[Any] | None


S = TypeVar("S", bound=Shard)


class _Token:
    """Held only by its thread's ``threading.local`` storage: freed when the thread ends."""

    __slots__ = ("__weakref__",)


class PerThread(Generic[S]):
    """The shards of every thread: ``new()`` makes a thread's shard, ``fold(shard)`` adds an
    ended thread's final counts to the owner's total (called with :attr:`lock` held).

    ``local.shard`` is the calling thread's shard once it has one (the hot path reads it
    directly and calls :meth:`join` on ``AttributeError``).
    """

    def __init__(self, new: Callable[[], S], fold: Callable[[S], None], name: str) -> None:
        self.local = threading.local()
        #: Taken by collection and folding only, never by the hot path.
        self.lock = threading.Lock()
        self._new = new
        self._add_to_total = fold
        self._name = name
        self._fork_locked = False
        self._live: set[S] = set()  # live threads' shards (under the lock)
        self._joined: deque[S] = deque()  # new threads' shards, not yet in ``_live``
        self._ended: deque[S] = deque()  # ended threads' shards, not yet folded

    def join(self) -> S:
        """The calling thread's first use: its shard, announced without a lock."""
        shard = self._new()
        token = _Token()
        shard.token = weakref.ref(token, lambda _: self._thread_ended(shard))
        local = self.local
        local.token = token  # the thread's storage is the only owner of the token
        local.shard = shard
        self._joined.append(shard)  # atomic; folding and collection take it in
        return shard

    def _thread_ended(self, shard: S) -> None:
        """The token's callback, on the ending thread after its last use: fold (queued for
        the holder when the lock is busy; never waits)."""
        self._ended.append(shard)
        self.fold_ended()

    def fold_ended(self) -> None:
        """Fold the queued ended shards if the lock is free. Call it after releasing the lock:
        a shard queued while it was held is then never left behind."""
        while self._ended and self.lock.acquire(blocking=False):
            try:
                self.settle()
            finally:
                self.lock.release()

    def settle(self) -> set[S]:
        """Take in the new shards, fold the ended ones; return the live shards. Lock held."""
        live, joined, ended = self._live, self._joined, self._ended
        while joined:  # only a lock holder takes from the queues
            shard = joined.popleft()
            if shard.token is not None:  # not folded yet (its thread may be gone already)
                live.add(shard)
        while ended:
            self.fold(ended.popleft())
        return live

    def fold(self, shard: S) -> None:
        """Add an ended thread's counts (final: nothing writes them any more) to the total.

        Lock held. The shard may still wait in the join queue (a thread that ended right
        after it began), whose draining then skips it.
        """
        if shard.token is None:  # folded already (a fork folds without the callback)
            return
        shard.token = None
        self._live.discard(shard)
        self._add_to_total(shard)

    def forget(self) -> None:
        """Drop every shard uncounted, the calling thread's too (its next use joins afresh):
        a forked child that starts from zero. Lock held or not needed (one thread left)."""
        for shard in (*self._live, *self._joined, *self._ended):
            shard.token = None  # never folded (a callback may still run for it)
        self._live.clear()
        self._joined.clear()
        self._ended.clear()
        if getattr(self.local, "shard", None) is not None:
            del self.local.shard
            del self.local.token

    def before_fork(self, deadline: float) -> None:
        """Hold the lock across the fork (no fold half done in the child), until ``deadline``."""
        self._fork_locked = acquire_until(self.lock, deadline, self._name)

    def after_fork_in_parent(self) -> None:
        """Release the lock held across the fork; fold what ended meanwhile."""
        if self._fork_locked:
            self._fork_locked = False
            self.lock.release()
            self.fold_ended()

    def after_fork_in_child(self) -> S | None:
        """A fresh lock in the child (only this thread exists); this thread's shard, if any."""
        self.lock = threading.Lock()
        self._fork_locked = False
        mine: S | None = getattr(self.local, "shard", None)
        return mine
