"""How the state store reads, as the provider serves it: ready, stale, or error (old path)."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from openfeature_canary.errors import StateStoreError

__all__ = ["StoreHealth"]

_STATES = ("not_ready", "ready", "stale", "error")


class StoreHealth:
    """The store's health and what it means for serving (pure bookkeeping, no I/O).

    ``ready``: the store was read; ``stale``: it cannot be read, the last known state is
    served for up to ``max_staleness`` seconds; ``error``: every flag serves the old path
    (``unavailable`` says why). The provider acts on what :meth:`read` and :meth:`failed`
    return (rebuild its views, emit the OpenFeature event, log).
    """

    def __init__(self, max_staleness: float) -> None:
        self.max_staleness = max_staleness
        self.state = "not_ready"
        #: Why every flag serves the old path (``None`` unless ``error``).
        self.unavailable: str | None = None
        self._failing_since: float | None = None

    def read(self) -> bool:
        """The store was read: True when that made it ready again (it was not)."""
        self._failing_since = None
        if self.state == "ready":
            return False
        self.state, self.unavailable = "ready", None
        return True

    def unreadable(self, error: StateStoreError) -> None:
        """The first read failed (``initialize``): the old path at once."""
        self.state = "error"
        self.unavailable = f"{error}; serving the old path until it can be read"

    def failed(self, error: StateStoreError, now: float) -> tuple[bool, bool]:
        """A read failed at ``now``: (became stale, became error) by this failure."""
        if self._failing_since is None:
            self._failing_since = now
        stale = self.state == "ready" and self.max_staleness > 0
        if stale:
            self.state = "stale"
        erred = self.state != "error" and now - self._failing_since >= self.max_staleness
        if erred:
            self.unreadable(error)
        return stale, erred

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        """The ``canary.store.health`` gauge: 1 for the current health, 0 for the others."""
        current = self.state
        for health in _STATES:
            yield Observation(int(health == current), {"canary.store.health": health})
