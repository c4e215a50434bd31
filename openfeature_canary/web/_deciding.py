"""The status page of the process that decides: served while this process holds the lease.

In a fleet (``uvicorn --workers 4`` on one store) every worker builds the same provider with
the same ``status_page_port``; only one can bind it, and only the decider has what the page
shows first hand (its trigger readings, its decisions as it makes them). So each process runs
a small watcher that binds the page when it becomes the decider and frees the port when it
stops deciding; after a takeover the new decider binds the same port within a poll or two.
A process outside a fleet always decides for itself, so it serves the page at once.
"""

from __future__ import annotations

import logging
import threading

from openfeature_canary._forksafe import THREADS, on_fork
from openfeature_canary.policy import Rollout
from openfeature_canary.web._server import DEFAULT_HOST, StatusPage

__all__ = ["DecidingStatusPage"]

log = logging.getLogger("openfeature_canary")


class DecidingStatusPage:
    """Serve :class:`StatusPage` on ``host:port`` only while ``rollout``'s process decides.

    ``poll_s`` is how often the watcher looks at the lease it holds (a read of memory: the
    runner renews the lease, the watcher only reads :attr:`Fleet.leader`). A port another
    process still holds is retried at the next poll, and logged once.
    """

    def __init__(
        self, rollout: Rollout, *, port: int, host: str = DEFAULT_HOST, poll_s: float = 0.5
    ) -> None:
        self.page = StatusPage(rollout, port=port, host=host)  # checks host and port
        self.rollout = rollout
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bind_failed = False
        # A pre-fork server's worker restarts the watcher (the page forgot the parent's socket).
        on_fork(self, level=THREADS, after_in_child=_restart_in_child)

    @property
    def serving(self) -> bool:
        """True while the page is bound (this process decides)."""
        return self.page.serving

    def deciding(self) -> bool:
        """Whether this process decides now (outside a fleet: always)."""
        fleet = self.rollout.fleet
        return fleet is None or fleet.leader

    def sync(self) -> None:
        """Bind or free the page to match whether this process decides (one watcher step)."""
        if not self.deciding():
            if self.page.serving:
                self.page.stop()
                log.info("openfeature-canary: status page stopped: this process stops deciding")
            return
        if self.page.serving:
            return
        try:
            self.page.start()
            self._bind_failed = False
        except OSError as exc:  # the old decider may not have freed the port yet
            if not self._bind_failed:
                log.warning(
                    "openfeature-canary: status page: cannot bind %s:%s: %s (retrying)",
                    self.page.host,
                    self.page.port,
                    exc,
                )
            self._bind_failed = True

    def start(self) -> DecidingStatusPage:
        """Start the watcher thread (one sync at once)."""
        if self._thread is not None:
            return self
        self._stop.clear()
        self.sync()
        self._thread = threading.Thread(target=self._run, name="canary-status-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the watcher and the page (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5.0)
        self.page.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
            except Exception as exc:  # the watcher must outlive one bad step
                log.error("openfeature-canary: status page watcher: %s", exc)


def _restart_in_child(watch: DecidingStatusPage) -> None:
    if watch._thread is None:  # it was not running
        return
    watch._thread = None
    watch._stop = threading.Event()
    watch.start()
