"""How late the asyncio event loop wakes up: :class:`EventLoopLagMonitor`."""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

from opentelemetry.metrics import MeterProvider, get_meter_provider

from openfeature_canary.instrumentation._names import (
    DEFAULT_LATENCY_BOUNDS_S,
    EVENT_LOOP_LAG_NAME,
    METER_NAME,
)

__all__ = ["EventLoopLagMonitor"]


class EventLoopLagMonitor:
    """Measure asyncio event-loop lag: how much later than asked a sleep wakes up.

    A task sleeps ``interval_s`` in a loop and records each oversleep in the histogram
    ``canary.event_loop.lag`` (seconds); ``max_lag_s`` is the worst seen since ``start()``.
    Blocking code on the loop (a sync driver, CPU work) shows up here before it shows in
    request latency. Start it inside the running loop, e.g. in the app's lifespan::

        monitor = EventLoopLagMonitor()
        await monitor.start()
        ...
        await monitor.stop()

    or ``async with EventLoopLagMonitor():``.
    """

    def __init__(
        self, interval_s: float = 0.1, *, meter_provider: MeterProvider | None = None
    ) -> None:
        if not interval_s > 0 or math.isinf(interval_s):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s}")
        self.interval_s = float(interval_s)
        mp = meter_provider if meter_provider is not None else get_meter_provider()
        self._histogram = mp.get_meter(METER_NAME).create_histogram(
            EVENT_LOOP_LAG_NAME,
            unit="s",
            description="How much later than asked the event loop woke a sleeping task.",
            explicit_bucket_boundaries_advisory=DEFAULT_LATENCY_BOUNDS_S,
        )
        self._task: asyncio.Task[None] | None = None
        self._max_lag_s = 0.0

    @property
    def max_lag_s(self) -> float:
        """The largest lag measured since the last ``start()`` (0.0 before any)."""
        return self._max_lag_s

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start measuring on the running loop (a second call while running does nothing)."""
        if self.running:
            return
        self._max_lag_s = 0.0
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="openfeature-canary-event-loop-lag"
        )

    async def stop(self) -> None:
        """Stop measuring and wait for the task to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # the caller itself is being cancelled
                raise

    async def __aenter__(self) -> EventLoopLagMonitor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval_s
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - start - interval)
            if lag > self._max_lag_s:
                self._max_lag_s = lag
            self._histogram.record(lag)
