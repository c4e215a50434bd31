"""This process's part in a fleet: publish its signals, decide only while it holds the lease.

Every process serves flags. Exactly one at a time runs the policy of a rollout: the one holding
the decider lease in the state store (:class:`~openfeature_canary.stores.FleetStore`). Every
process that records traffic publishes its cumulative signals to the store at each tick, and
the decider reads them all (:class:`~openfeature_canary.signals.FleetSignalSource`), so it
judges the whole fleet's traffic. Losing the race for the lease is the normal case, not an
error: it is logged once, at INFO, when this process's role changes.

**Timing** (docs/fleet.md). The lease is renewed at every runner round (:meth:`Fleet.renew`,
every ``refresh_interval``, 0.1-0.5 s), not only at the policy tick, so it can be short: a
holder that dies stops renewing and another process takes over once the lease has expired,
within ``lease_ttl + lease_ttl / 8 + refresh_interval`` (9.5 s with the defaults), and decides
at its next tick: within 2 ticks of the reference plan's 10 s. A live holder renews about 8
times per lease (``lease_ttl / 8`` apart, fewer store calls than one per round), so it keeps
the lease through a stall of up to 7/8 of it.

**A decider that stalled past its lease** (a GC pause, a slow store) cannot act on it: the
store's compare-and-set on the state's version refuses any transition from a state another
decider has changed meanwhile (the fence: it holds whatever the timing), and :meth:`Fleet.holds`
tells the round, without I/O, whether the lease it took is still in force now, to drop a
decision made on evidence read under an expired lease before applying it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.errors import StateStoreError

if TYPE_CHECKING:
    from openfeature_canary.signals import TriggerReading
    from openfeature_canary.signals._fleet import Publisher
    from openfeature_canary.stores._fleet import FleetStore

__all__ = ["DEFAULT_LEASE_TTL_S", "RENEWALS_PER_LEASE", "Fleet", "check_lease_ttl", "decider_id"]

log = logging.getLogger("openfeature_canary")

#: How long a decider's lease lasts without renewal. With the renewal at every runner round,
#: a dead decider is replaced ~9.5 s after its last renewal, and the new one decides at its
#: next tick: within 2 ticks (20 s) of the reference plan's 10 s tick.
DEFAULT_LEASE_TTL_S: Final = 8.0
#: How many times a live holder renews its lease per ``lease_ttl`` (at most): it talks to the
#: store every ``lease_ttl / 8`` seconds, not at every round (a redis store's runs 10 a second).
RENEWALS_PER_LEASE: Final = 8


def check_lease_ttl(lease_ttl_s: float | None, renew_every_s: float | None = None) -> float:
    """The lease's ttl for a process renewing it every ``renew_every_s`` seconds (its runner's
    ``refresh_interval``; the plan's tick where no runner renews it): ``lease_ttl_s``, checked,
    or by default :data:`DEFAULT_LEASE_TTL_S` (longer when renewals are rarer).

    ValueError with one line naming ``lease_ttl`` when it is not a positive number, or shorter
    than two renewals (a live decider would lose its lease between two of them):

    >>> check_lease_ttl(None, 0.5)
    8.0
    >>> check_lease_ttl(0.5, 0.5)
    Traceback (most recent call last):
    ValueError: lease_ttl 0.5 s: must be at least twice the interval it is renewed at (0.5 s)
    """
    if renew_every_s is not None and not (math.isfinite(renew_every_s) and renew_every_s > 0):
        raise ValueError(f"lease renewal interval must be positive, got {renew_every_s!r}")
    if lease_ttl_s is None:
        return max(DEFAULT_LEASE_TTL_S, 2 * (renew_every_s or 0.0))
    if (
        isinstance(lease_ttl_s, bool)
        or not isinstance(lease_ttl_s, int | float)
        or not math.isfinite(lease_ttl_s)
        or lease_ttl_s <= 0
    ):
        raise ValueError(f"lease_ttl must be a positive number of seconds, got {lease_ttl_s!r}")
    if renew_every_s is not None and lease_ttl_s < 2 * renew_every_s:
        raise ValueError(
            f"lease_ttl {lease_ttl_s:g} s: must be at least twice the interval it is renewed "
            f"at ({renew_every_s:g} s)"
        )
    return float(lease_ttl_s)


def decider_id(fleet: Fleet | None) -> str:
    """Who decides in this process, for the decision log's ``by``: the fleet's process id
    (``host:pid:hex``, as in the store's lease), or ``host:pid`` without a fleet."""
    if fleet is not None:
        return fleet.process_id
    return f"{socket.gethostname() or 'host'}:{os.getpid()}"


class Fleet:
    """Publishes this process's signals and holds (or waits for) the decider lease.

    ``publisher`` is ``None`` for a process that records no traffic (the ``controller``
    command); ``decide=False`` for a process that only serves and publishes (a fleet whose
    policy runs in a dedicated controller). ``renew_every_s``, when given, is how often
    :meth:`renew` is called (``lease_ttl_s`` is checked against it, see
    :func:`check_lease_ttl`).

    What the caller calls, and when:

    - :meth:`renew` at every runner round (every ``refresh_interval``), before the policy
      round: takes or keeps the lease (no publishing);
    - :meth:`round` once per policy tick, before deciding: publishes, then takes or keeps the
      lease; True when this process decides at ``now``;
    - :meth:`holds` right before applying a decision: whether the lease is still in force
      (no I/O); False after a stall past it;
    - :meth:`release` on a clean shutdown: another process takes over at once.
    """

    def __init__(
        self,
        store: FleetStore,
        process_id: str,
        *,
        publisher: Publisher | None = None,
        decide: bool = True,
        lease_ttl_s: float | None = None,
        renew_every_s: float | None = None,
    ) -> None:
        self.store = store
        self._process_id = process_id
        self.publisher = publisher
        self.decide = decide
        self.lease_ttl_s = check_lease_ttl(lease_ttl_s, renew_every_s)
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._round_at: float | None = None
        #: The id the lease state below was obtained under: a forked child has a new id
        #: (its publisher's), and must not take its parent's lease for its own.
        self._as: str | None = None
        self._tried_at: float | None = None
        self._held_until = -math.inf
        self._leader = False
        self._publish_failing = False
        self._lease_failing = False
        #: The policy's last trigger readings (set by the rollout's metrics): published with
        #: this process's record while it decides, so every process can show them.
        self.readings: Callable[[], Mapping[tuple[str, str], TriggerReading]] | None = None

    @property
    def process_id(self) -> str:
        """Who this process is in the store: its publisher's id (which a forked child
        renews, so two workers never share one), else the id it was given."""
        return self.publisher.process_id if self.publisher is not None else self._process_id

    @property
    def leader(self) -> bool:
        """True while this process held the lease at its last round or renewal."""
        return self._leader and self._as == self.process_id

    def round(self, now: float) -> bool:
        """Publish this process's signals, then take or renew the lease: True when this
        process decides at ``now``. Idempotent within one ``now``."""
        with self._lock:
            if self._round_at == now:
                return self.leader
            self._round_at = now
            self._publish(now)
            return self._hold(now)

    def renew(self, now: float) -> bool:
        """Take or renew the lease at ``now``, without publishing: the runner's call at every
        round. Asks the store at most every ``lease_ttl / 8`` seconds; True while this process
        holds the lease."""
        with self._lock:
            return self._hold(now)

    def holds(self, now: float) -> bool:
        """Whether the lease this process last took or renewed is still in force at ``now``
        (no I/O). Ask it right before applying a decision: a process that stalled past its
        lease must not act on what it read while it held it."""
        return self.leader and now < self._held_until

    def release(self) -> None:
        """Give the lease up (a clean shutdown: another process takes over at once)."""
        with self._lock:
            if not self.leader:
                return
            self._leader = False
            self._held_until = -math.inf
            log.info(
                "openfeature-canary: process %s stops deciding (gives the decider lease up)",
                self.process_id,
            )
            try:
                self.store.release_lease(self.process_id)
            except StateStoreError as exc:
                log.warning("openfeature-canary: cannot release the decider lease: %s", exc)

    def _hold(self, now: float) -> bool:
        """Take or renew the lease, unless the store was asked less than ttl/8 ago (whose
        answer still stands: a lease taken then lasts 7/8 of its ttl past ``now``)."""
        if not self.decide:
            return False
        if self._as != self.process_id:  # first call, or in a forked child: start afresh
            self._as = self.process_id
            self._tried_at, self._held_until, self._leader = None, -math.inf, False
        tried = self._tried_at
        if tried is not None and 0 <= now - tried < self.lease_ttl_s / RENEWALS_PER_LEASE:
            return self._leader
        self._tried_at = now
        leader = self._try_lease(now)
        self._held_until = now + self.lease_ttl_s if leader else -math.inf
        self._set_role(leader)
        return leader

    def _set_role(self, leader: bool) -> None:
        if leader and not self._leader:
            log.info("openfeature-canary: process %s decides", self.process_id)
        elif self._leader and not leader:
            log.info(
                "openfeature-canary: process %s stops deciding (the decider lease was lost: "
                "another process holds it, or the store could not be read)",
                self.process_id,
            )
        self._leader = leader

    def _publish(self, now: float) -> None:
        if self.publisher is None:
            return
        # Only the decider's readings count: a process that does not decide publishes none.
        readings = self.readings() if self.readings is not None and self.holds(now) else None
        try:
            self.publisher.publish(now, readings)
        except StateStoreError as exc:
            if not self._publish_failing:  # once per outage, not every tick
                log.warning("openfeature-canary: cannot publish this process's signals: %s", exc)
            self._publish_failing = True
            return
        if self._publish_failing:
            log.info("openfeature-canary: publishing this process's signals again")
        self._publish_failing = False

    def _try_lease(self, now: float) -> bool:
        try:
            taken = self.store.try_lease(self.process_id, self.lease_ttl_s, now)
        except StateStoreError as exc:
            # Cannot tell who decides: deciding blind could double a transition, and the
            # store's compare-and-set would refuse it anyway. Wait for the store; say so once
            # per outage (this runs at every round).
            if not self._lease_failing:
                log.warning("openfeature-canary: cannot take the decider lease: %s", exc)
            self._lease_failing = True
            return False
        if self._lease_failing:
            log.info("openfeature-canary: the decider lease can be read again")
        self._lease_failing = False
        return taken
