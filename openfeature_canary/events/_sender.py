"""The background sender that drains the durable outbox into the ingest client.

Nothing here runs on the flag-evaluation path; delivery problems are logged (with the URL
redacted), never raised into the caller. See :mod:`._ingest` for the client and the picture.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Final, Protocol

import httpx

from openfeature_canary.errors import CanaryError
from openfeature_canary.events._ingest import (
    IngestClient,
    IngestCounters,
    IngestError,
    NoopIngestCounters,
)
from openfeature_canary.events._outbox import JsonScalar, Outbox, OutboxEvent
from openfeature_canary.events._queue import EventQueue
from openfeature_canary.events._redis_outbox import RedisOutbox
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.stores import FileStateStore, RedisStateStore, StateStore

__all__ = ["EventSink", "TelemetrySender", "outbox_for", "outbox_path_for", "sender_for_plan"]

log = logging.getLogger("openfeature_canary.telemetry")

#: The shortest timed wait between two rounds of the thread (seconds); an enqueue, a flush or
#: a stop still wakes it at once.
_MIN_WAIT_S: Final = 0.05


class EventSink(Protocol):
    """Where a transition's event goes (:class:`TelemetrySender` is the durable one).

    ``enqueue`` must return quickly and keep the event across a crash once it returns. The
    pipeline gives every event an ``event_id`` derived from the transition it announces; a
    sink that is handed the same ``event_id`` again should drop it (the durable
    :class:`TelemetrySender` does), which makes a start-up reconciliation safe.
    """

    def enqueue(self, event_name: str, properties: Mapping[str, JsonScalar]) -> object: ...


def outbox_for(store: StateStore, reports_dir: Path) -> EventQueue:
    """Where a rollout's events wait: in the store's Redis for a ``redis://`` store (every
    process of the fleet shares one outbox), else the file :func:`outbox_path_for` names. No
    I/O."""
    if isinstance(store, RedisStateStore):
        return RedisOutbox(store)
    return Outbox(outbox_path_for(store, reports_dir))


def outbox_path_for(store: StateStore, reports_dir: Path) -> Path:
    """Where a rollout's events wait in a file: beside the state file for a ``file://`` store
    (so every process of the host, the CLI included, shares one outbox), else in the reports
    folder (:func:`outbox_for` puts a ``redis://`` store's in Redis instead)."""
    if isinstance(store, FileStateStore):
        return store.path.with_name(store.path.name + ".outbox.jsonl")
    return reports_dir / "telemetry-outbox.jsonl"


def sender_for_plan(
    plan: RolloutPlan,
    outbox: EventQueue | Path,
    *,
    environ: Mapping[str, str],
    counters: IngestCounters | None = None,
    transport: httpx.BaseTransport | None = None,
) -> TelemetrySender:
    """The durable sender of a plan's events: ``outbox`` (see :func:`outbox_for`; a path is a
    file :class:`Outbox`) drained into ``POST {url}/telemetry/ingest`` (the plan's ``url``, or
    its ``url_env`` read from ``environ``). No I/O until the first event or
    :meth:`TelemetrySender.start`.

    A missing or unusable URL must not stop a service from serving its flags: it is logged
    loudly and the events wait in the outbox until the URL is fixed and the process restarted.
    """
    url = plan.telemetry.resolve_url(environ)
    client: IngestClient | None = None
    if url:
        try:
            client = IngestClient(
                url, app=plan.telemetry.app, timeout_s=plan.telemetry.timeout_s, transport=transport
            )
        except IngestError as exc:
            log.error("telemetry ingest disabled, events stay in the outbox: %s", exc)
    queue = Outbox(outbox) if isinstance(outbox, Path) else outbox
    return TelemetrySender(queue, client, counters=counters)


class TelemetrySender:
    """Drains an :class:`EventQueue` (an :class:`Outbox` file, or a :class:`RedisOutbox`) into
    an :class:`IngestClient` from a background thread.

    Use one per process that emits rollout events::

        sender = TelemetrySender(Outbox(path), IngestClient(url, app="scholarship_api"))
        sender.start()
        sender.enqueue("canary_rollback", {"from_pct": 25, "reason": "p95_breach"})
        ...
        sender.flush(5.0); sender.stop()

    Pending events go out in batches of up to ``batch_size`` per POST. A failed batch is kept
    with one more attempt and a retry time ``now + uniform(0, min(max_backoff_s,
    base_backoff_s * 2 ** (attempts - 1)))`` (exponential backoff, full jitter) persisted in
    the outbox; the sender also holds back further POSTs until then. Delivery problems are
    logged with the redacted URL, never raised. With ``client=None`` (no URL configured)
    events stay in the outbox and one warning is logged.

    ``rng`` and ``clock`` (seconds, ``time.time`` by default) are injectable for tests; the
    thread's own waits use real time, at most ``poll_interval_s`` at a stretch, so it also
    notices events that other processes put into a shared outbox (a look at an unchanged
    outbox is one ``stat``). The thread never polls in a tight loop: without a client it sleeps
    until :meth:`enqueue`, :meth:`flush` or :meth:`stop` wakes it, and after a failure until
    the backoff's retry time. :meth:`start` imports everything a delivery needs before the
    thread exists, so that no import is under way in it when the process forks.
    """

    def __init__(
        self,
        outbox: EventQueue,
        client: IngestClient | None,
        *,
        counters: IngestCounters | None = None,
        max_backoff_s: float = 300,
        base_backoff_s: float = 1.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
    ) -> None:
        if base_backoff_s <= 0 or max_backoff_s < base_backoff_s:
            raise ValueError(
                f"TelemetrySender: need 0 < base_backoff_s <= max_backoff_s, got "
                f"{base_backoff_s} and {max_backoff_s}"
            )
        if batch_size < 1:
            raise ValueError(f"TelemetrySender: batch_size must be >= 1, got {batch_size}")
        self.outbox = outbox
        self.client = client
        self.counters: IngestCounters = counters or NoopIngestCounters()
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._hold_until = float("-inf")
        self._warned_no_client = False
        self._round_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._force = False
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart_in_child(ref))

    # ------------------------------------------------------------------ public

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self.running:
            return
        if self.client is None:
            self._warn_no_client()
        else:
            # On this thread, before the sender's exists: an import under way in a background
            # thread when the process forks leaves the child a half-imported module for good.
            self.client.prepare()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="openfeature-canary-telemetry", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout_s`` for it; pending events stay queued."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def enqueue(self, event_name: str, properties: Mapping[str, JsonScalar]) -> OutboxEvent | None:
        """Queue an event durably, then wake the sender; return the queued event.

        The ``event_id`` property is the event's identity, so that the ingest can drop the
        duplicates that at-least-once delivery may produce: when given (a non-empty string) it
        is the outbox id, and an event whose id is pending or was delivered recently is not
        queued again (``None`` is returned); when absent, a fresh uuid4 is used and added.
        Raises ``ValueError`` for a property that is not a JSON scalar (or an ``event_id`` that
        is not a non-empty string) and :class:`~openfeature_canary.events.OutboxError` when the
        event could not be written.
        """
        given = properties.get("event_id")
        if given is not None and (not isinstance(given, str) or not given):
            raise ValueError(f"event {event_name}: event_id must be a non-empty string")
        event = OutboxEvent.create(event_name, properties, now=self._clock(), event_id=given)
        if given is None:
            event = replace(event, properties={**event.properties, "event_id": event.id})
        if not self.outbox.enqueue(event):
            return None
        self._wake.set()
        return event

    def deliver_once(self) -> int:
        """One synchronous delivery round over the due events; return how many were accepted.

        Stops at the first failed batch (the rest waits for the backoff). Never raises for
        delivery problems.
        """
        return self._round(force=False)

    def flush(self, timeout_s: float) -> bool:
        """Deliver now (ignoring backoff once) and wait until the outbox is empty.

        Returns ``True`` when nothing is pending, ``False`` when ``timeout_s`` ran out first
        (or there is no client to deliver with). Without a running thread the rounds run on
        the calling thread.
        """
        deadline = time.monotonic() + timeout_s
        if self.client is None:
            self._warn_no_client()
            return not self._pending_safely()
        if not self.running:
            # Each attempt gets only the time left, so a slow ingest cannot hold the caller
            # (e.g. the CLI's 5 s flush) past its deadline.
            self._round(force=True, deadline=deadline)
            while self._pending_safely():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait_s = self._wait_s()
                time.sleep(min(remaining, remaining if wait_s is None else wait_s))
                self._round(force=False, deadline=deadline)
            return True
        with self._progress:
            self._force = True
            self._wake.set()
            return self._progress.wait_for(
                lambda: not self._pending_safely(),
                timeout=max(0.0, deadline - time.monotonic()),
            )

    def backoff_s(self, attempts: int) -> float:
        """The delay before retry number ``attempts`` (1 = after the first failure)."""
        cap = min(self.max_backoff_s, self.base_backoff_s * 2.0 ** max(0, attempts - 1))
        return self._rng.uniform(0.0, cap)

    # ------------------------------------------------------------------ internals

    def _round(self, *, force: bool, deadline: float | None = None) -> int:
        with self._round_lock:
            if self.client is None:
                self._warn_no_client()
                return 0
            now = self._clock()
            if not force and now < self._hold_until:
                return 0
            try:
                pending = self.outbox.pending()
            except CanaryError as exc:
                log.error("telemetry: cannot read the outbox: %s", exc)
                return 0
            due = [e for e in pending if force or e.next_attempt_at <= now]
            delivered = 0
            for start in range(0, len(due), self.batch_size):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                batch = due[start : start + self.batch_size]
                if not self._deliver(self.client, batch, left):
                    break
                delivered += len(batch)
            return delivered

    def _deliver(
        self, client: IngestClient, batch: list[OutboxEvent], time_left: float | None = None
    ) -> bool:
        # ``sent`` is counted once the outcome is known, together with ``accepted``: counted
        # before the POST, a scrape in between would see an in-flight batch as refused.
        try:
            client.send(batch, timeout_s=time_left)
        except IngestError as exc:
            self.counters.sent(len(batch))
            attempts = max(e.attempts for e in batch) + 1
            delay = self.backoff_s(attempts)
            retry_at = self._clock() + delay
            self._hold_until = retry_at
            log.warning(
                "telemetry: delivery of %d event(s) to %s failed (attempt %d), retrying in "
                "%.1fs: %s",
                len(batch),
                client.display_url,
                attempts,
                delay,
                exc,
            )
            try:
                self.outbox.record_attempts((e.id for e in batch), str(exc), retry_at)
            except CanaryError as record_exc:
                log.error("telemetry: cannot record the failed attempt: %s", record_exc)
            return False
        self.counters.sent(len(batch))
        self.counters.accepted(len(batch))
        self._hold_until = float("-inf")
        try:
            self.outbox.mark_delivered(e.id for e in batch)
        except CanaryError as exc:
            # They will be posted again later; the ingest drops them by event_id.
            log.error("telemetry: delivered but cannot mark in the outbox: %s", exc)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with self._progress:
                force, self._force = self._force, False
            try:
                self._round(force=force)
            except Exception:  # keep the sender alive; the next round retries
                log.exception("telemetry: delivery round failed")
            with self._progress:
                self._progress.notify_all()
            wait_s = self._wait_s()
            # A floor under a timed wait: whatever the clock says, an idle sender never spins.
            self._wake.wait(None if wait_s is None else max(_MIN_WAIT_S, wait_s))

    def _wait_s(self) -> float | None:
        """Real seconds until the next round is worth running (at most the poll interval);
        ``None`` when nothing can be delivered from here (no client): until woken."""
        if self.client is None:
            return None
        try:
            pending = self.outbox.pending()
        except CanaryError:
            return self.poll_interval_s
        if not pending:
            return self.poll_interval_s
        due_at = max(min(e.next_attempt_at for e in pending), self._hold_until)
        return min(self.poll_interval_s, max(0.0, due_at - self._clock()))

    def _pending_safely(self) -> bool:
        try:
            return bool(self.outbox.pending())
        except CanaryError:
            return True

    def _warn_no_client(self) -> None:
        if not self._warned_no_client:
            self._warned_no_client = True
            log.warning(
                "telemetry: no ingest URL configured; events stay in %r until a sender with "
                "a URL delivers them",
                self.outbox,
            )


def _restart_in_child(ref: weakref.ref[TelemetrySender]) -> None:
    sender = ref()
    if sender is None:
        return
    was_running = sender._thread is not None
    # Locks held by threads that do not exist in the child would never be released.
    sender._round_lock = threading.Lock()
    sender._progress = threading.Condition()
    sender._thread = None
    if was_running:
        sender.start()
