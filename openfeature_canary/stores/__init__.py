"""State stores: where each flag's :class:`~openfeature_canary.state.RolloutState` lives.

``open_store(url)`` gives ``memory://`` (this process), ``file:///path/state.json`` (the
processes of one host) or ``redis://host:port/db`` (a fleet; the ``[redis]`` extra); all
implement the :class:`StateStore` protocol, whose every write is a compare-and-set on the
state's version. Each is also a :class:`FleetStore`: every process's published record and
the one decider lease of a fleet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openfeature_canary.stores._fleet import FleetDelegate, FleetStore, Lease
from openfeature_canary.stores._open import open_store
from openfeature_canary.stores._store import FileStateStore, MemoryStateStore, StateStore

if TYPE_CHECKING:
    from openfeature_canary.stores._redis import RedisStateStore

__all__ = [
    "FileStateStore",
    "FleetDelegate",
    "FleetStore",
    "Lease",
    "MemoryStateStore",
    "RedisStateStore",
    "StateStore",
    "open_store",
]


def __getattr__(name: str) -> object:
    """``RedisStateStore`` on first use (PEP 562): the ``[redis]`` extra stays unimported until
    a redis store is asked for."""
    if name == "RedisStateStore":
        from openfeature_canary.stores._redis import RedisStateStore

        return RedisStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
