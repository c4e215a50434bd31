"""State stores: where each flag's :class:`~openfeature_canary.state.RolloutState` lives.

``open_store(url)`` gives ``memory://`` (this process), ``file:///path/state.json`` (the
processes of one host) or ``redis://host:port/db`` (a fleet; the ``[redis]`` extra); all
implement the :class:`StateStore` protocol, whose every write is a compare-and-set on the
state's version. Each is also a :class:`FleetStore`: every process's published record and
the one decider lease of a fleet.
"""

from __future__ import annotations

from openfeature_canary.stores._fleet import FleetStore, Lease
from openfeature_canary.stores._redis import RedisStateStore
from openfeature_canary.stores._store import (
    FileStateStore,
    MemoryStateStore,
    StateStore,
    open_store,
)

__all__ = [
    "FileStateStore",
    "FleetStore",
    "Lease",
    "MemoryStateStore",
    "RedisStateStore",
    "StateStore",
    "open_store",
]
