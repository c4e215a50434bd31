"""The one tick schedule of a process: a background thread that reads the store and ticks.

Every ``interval`` seconds of wall time it re-reads the store when its change token moved (one
read for every flag), reports the store's health, and ticks each flag whose ``tick`` is due by
the rollout's clock. A :class:`~openfeature.contrib.hook.canary.PolicyHook` shares the same
per-flag schedule (``Controller.tick_if_due``), so a flag is ticked once per period whoever gets
there first. It never runs on the evaluation path. After ``os.fork()`` (pre-fork servers such
as gunicorn) the thread does not exist in the child; the runner restarts it there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from openfeature_canary._forksafe import THREADS, on_fork
from openfeature_canary.errors import StateStoreError
from openfeature_canary.policy._rollout import Rollout
from openfeature_canary.policy.round import run_round

__all__ = ["BackgroundRunner", "StoreHealth"]

log = logging.getLogger("openfeature_canary")

#: Told after each read of the store: ``None`` when it was read, else the error.
StoreHealth = Callable[[StateStoreError | None], None]

_NOT_READ = object()


class BackgroundRunner:
    """The background thread of one rollout (see the module docstring).

    ``on_poll`` runs after each read (the provider rebuilds what depends on the environment);
    ``on_health`` is told whether the store could be read.
    """

    def __init__(
        self,
        rollout: Rollout,
        *,
        interval: float = 0.5,
        on_poll: Callable[[], None] | None = None,
        on_health: StoreHealth | None = None,
        renew: Callable[[float], object] | None = None,
    ) -> None:
        self.rollout = rollout
        #: Called with the rollout clock's now at every round: a fleet's lease renewal.
        self.renew = renew
        self.interval = interval
        self.on_poll = on_poll
        self.on_health = on_health
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: object = _NOT_READ
        # In a forked child, once every lock is renewed (_forksafe).
        on_fork(self, level=THREADS, after_in_child=_restart_in_child)

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
        """One round: read the store if it changed, then a policy round
        (:func:`~openfeature_canary.policy.run_round`)."""
        if self.renew is not None:  # every round, not every tick: the lease can be short
            self.renew(self.rollout.clock.now())
        self.read_store()
        if self.on_poll is not None:
            self.on_poll()
        # The store was read once for every flag just above (or cannot be read); the due
        # flags decide and their changes are written together.
        run_round(self.rollout)
        if self.rollout.metrics is not None:  # the fleet's view, for whoever scrapes here
            self.rollout.metrics.refresh_fleet(self.rollout.clock.now())

    def read_store(self) -> bool:
        """Re-read every flag when the store's change token moved; report its health.

        The token is only taken after a successful read, so a failing store is read again
        every round until it recovers.
        """
        try:
            token = self.rollout.store.change_token()
            if token != self._token:
                self.rollout.load()
                self._token = token
        except StateStoreError as exc:
            self._health(exc)
            return False
        self._health(None)
        return True

    def _health(self, error: StateStoreError | None) -> None:
        if self.on_health is not None:
            self.on_health(error)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # keep the thread alive; the policy treats errors on its own
                log.exception("openfeature-canary: background round failed")


def _restart_in_child(runner: BackgroundRunner) -> None:
    if runner._thread is None:  # it was not running
        return
    runner._thread = None
    runner.start()
