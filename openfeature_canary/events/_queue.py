"""What a :class:`~openfeature_canary.events.TelemetrySender` needs of its durable queue.

Two implementations: the file :class:`~openfeature_canary.events.Outbox` (the processes of one
host) and :class:`~openfeature_canary.events.RedisOutbox` (every process of a fleet, on the
``redis://`` store's Redis). :func:`~openfeature_canary.events.outbox_for` picks the one that
matches a state store.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from openfeature_canary.events._outbox import OutboxEvent

__all__ = ["EventQueue"]


class EventQueue(Protocol):
    """A durable queue of :class:`OutboxEvent`, possibly shared by several processes.

    Every method raises :class:`~openfeature_canary.events.OutboxError` when the queue cannot
    be read or written (its location in the message).
    """

    def enqueue(self, event: OutboxEvent) -> bool:
        """Keep ``event`` durably; ``False`` (and nothing written) when its id is pending or
        among the recently delivered ones."""
        ...

    def pending(self) -> list[OutboxEvent]:
        """The undelivered events in the order they were queued, with their attempts."""
        ...

    def mark_delivered(self, ids: Iterable[str]) -> None:
        """Forget these events and remember their ids (a bounded number of the newest)."""
        ...

    def record_attempts(self, ids: Iterable[str], error: str, next_attempt_at: float) -> None:
        """Record one failed delivery of each of these pending events: why, and when to
        retry."""
        ...
