"""Shadow comparisons: run the new path beside the old one and count what differs."""

from __future__ import annotations

import logging
import operator
import random
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

from opentelemetry.metrics import MeterProvider

from openfeature_canary.instrumentation._instruments import INSTRUMENTS
from openfeature_canary.instrumentation._names import ATTR_FLAG_KEY

__all__ = ["SupportsRandom", "shadow_compare"]

log = logging.getLogger("openfeature_canary")

T = TypeVar("T")


class SupportsRandom(Protocol):
    """What :func:`shadow_compare` needs of ``rng``: ``random.Random`` fits."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...


class _ModuleRandom:
    """The ``random`` module's shared generator as a :class:`SupportsRandom`."""

    def random(self) -> float:
        return random.random()


_RANDOM: Final[SupportsRandom] = _ModuleRandom()


def shadow_compare(
    flag_key: str,
    primary: T,
    shadow: Callable[[], object] | object,
    *,
    compare: Callable[[Any, Any], object] = operator.eq,
    sample_rate: float = 1.0,
    meter_provider: MeterProvider | None = None,
    rng: SupportsRandom | None = None,
) -> T:
    """Compare the served result with the other path's and count discrepancies; return ``primary``.

    Use it while a canary runs to prove the new path answers like the old one: serve
    ``primary``, give the other path as ``shadow`` (a value, or a zero-argument callable that
    is only called when this call is sampled). A sampled call adds 1 to
    ``canary.ledger.comparisons``; it adds 1 to ``canary.ledger.mismatches`` when
    ``compare(primary, shadow_value)`` is false, **or when the shadow (or ``compare``) raises**:
    a path that fails where the served one succeeded is a discrepancy, and the
    ``ledger_mismatch`` trigger should see it. Values are never logged (they may be personal
    data); the exception type is.

    It never changes what the caller returns and never raises into the request: any error is
    logged and counted. ``sample_rate`` (clamped to [0, 1]) is the share of calls compared;
    ``rng`` (``random.Random`` by default) makes sampling reproducible in tests.

    >>> rows = shadow_compare("dataservice-read-canary", sql_rows,
    ...                       lambda: dataservice.get(provider_id), sample_rate=0.1)
    ... # doctest: +SKIP
    """
    try:
        if not sample_rate > 0.0:  # also NaN
            return primary
        if sample_rate < 1.0 and (rng or _RANDOM).random() >= sample_rate:
            return primary
        instruments = INSTRUMENTS.get(meter_provider)
        attributes = {ATTR_FLAG_KEY: flag_key}
        instruments.comparisons.add(1, attributes)
        try:
            value = shadow() if callable(shadow) else shadow
            same = bool(compare(primary, value))
        except Exception as exc:
            log.warning(
                "%s: shadow path failed (%s): counted as a mismatch", flag_key, type(exc).__name__
            )
            same = False
        if not same:
            log.warning("%s: shadow result differs from the served one", flag_key)
            instruments.mismatches.add(1, attributes)
    except Exception:
        log.exception("%s: shadow comparison could not be recorded", flag_key)
    return primary
