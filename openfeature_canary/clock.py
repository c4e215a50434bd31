"""Clocks: where the controller and policy get "now" from.

Time is injected so that a 24-hour plan runs in a test in a second::

    clock = ManualClock(start=0.0)
    provider = CanaryProvider(plan, clock=clock)
    clock.advance(600)          # ten virtual minutes later
    provider.controller("dataservice-read-canary").tick()
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Anything with ``now() -> float`` (seconds since the epoch, or any fixed origin)."""

    def now(self) -> float:
        """Return the current time in seconds."""
        ...


class SystemClock:
    """Wall-clock time (``time.time()``). The default outside tests and the demo."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()


class ManualClock:
    """A clock that moves only when told to; safe to share between threads.

    >>> clock = ManualClock(start=100.0)
    >>> clock.advance(60)
    160.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the current virtual time."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance: seconds must be >= 0, got {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to an absolute time, which must not be earlier than the current one."""
        with self._lock:
            if now < self._now:
                raise ValueError(f"ManualClock.set: {now} is before the current time {self._now}")
            self._now = float(now)
