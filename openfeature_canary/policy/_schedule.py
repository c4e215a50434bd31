"""The background thread: notices other processes' changes and ticks the policy when due.

It never runs on the evaluation path. After ``os.fork()`` (pre-fork servers such as
gunicorn) the thread does not exist in the child; :class:`BackgroundRunner` restarts it there.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable

from openfeature_canary._controller import Rollout

__all__ = ["BackgroundRunner"]

log = logging.getLogger("openfeature_canary")


class BackgroundRunner:
    """Every ``interval`` seconds of wall time: re-read the store if it changed, run
    ``on_poll``, and tick each controller whose ``tick`` is due by the rollout's clock."""

    def __init__(
        self,
        rollout: Rollout,
        *,
        interval: float = 0.5,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        self.rollout = rollout
        self.interval = interval
        self.on_poll = on_poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: object = rollout.store.change_token()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart_in_child(ref))

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="openfeature-canary-runner", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run_once(self) -> None:
        """One round of the loop's work (also used by tests)."""
        token = self.rollout.store.change_token()
        if token != self._token:
            self._token = token
            self.rollout.refresh()
        if self.on_poll is not None:
            self.on_poll()
        for ctl in self.rollout.controllers():
            if ctl.decider is not None:
                ctl.tick_if_due()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # keep the guard alive; the policy treats errors on its own
                log.exception("openfeature-canary background round failed")


def _restart_in_child(ref: weakref.ref[BackgroundRunner]) -> None:
    runner = ref()
    if runner is None or runner._thread is None:
        return
    runner._thread = None
    runner.start()
