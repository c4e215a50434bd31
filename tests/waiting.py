"""Waiting on a condition, for tests: poll until it holds, fail naming it when it does not.

A fixed ``time.sleep(x)`` before an assertion waits for something without saying what: on a
loaded machine (the suite runs under ``pytest -n N`` on 2 cores) ``x`` is too short, and on a
quiet one it is wasted. ``wait_until`` polls the condition itself, returns as soon as it holds
and fails with what it waited for once ``timeout_s`` is over.

A sleep that IS the scenario (a window in which something must NOT happen, time passing
across lease renewals, a child killed at a chosen delay) stays a sleep, with a comment that
says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], what: str, timeout_s: float = 10.0, every_s: float = 0.01
) -> T:
    """Poll ``condition()`` every ``every_s`` until it returns a true value, and return that
    value. :class:`AssertionError` naming ``what`` (and its last value) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what} (last: {value!r})")
        time.sleep(every_s)
