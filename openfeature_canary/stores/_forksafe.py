"""Locks that survive ``os.fork()``: pre-fork servers (gunicorn) fork after import.

A lock held by another thread at the moment of the fork stays held forever in the child,
where that thread does not exist; the next background tick would hang. Each object that
owns locks used by background work renews them in the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["renew_locks_after_fork"]


def renew_locks_after_fork(
    owner: Any, *attributes: str, factory: Callable[[], Any] = threading.Lock
) -> None:
    """In a forked child, replace ``owner.<attribute>`` by a fresh ``factory()`` lock."""
    ref = weakref.ref(owner)

    def renew() -> None:
        obj = ref()
        if obj is not None:
            for name in attributes:
                setattr(obj, name, factory())

    os.register_at_fork(after_in_child=renew)
