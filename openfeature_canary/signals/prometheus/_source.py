"""The Prometheus signal source: the built-in signals as PromQL, for fleets (spec §6, §10).

A decider that judges a whole fleet reads what Prometheus scraped from every process::

    source = PrometheusSignalSource("http://prometheus:9090", queries=plan.signals)
    rollout = Rollout(plan, store="redis://…", policy=Autopilot(source))

Each read is an instant query (``POST /api/v1/query``) evaluated at the reading's end time, so
the caller's clock must be unix time (``SystemClock``). Prometheus keeps the history, so there
are no snapshots: :meth:`PrometheusSignalSource.snapshot` only marks the start of a policy
tick (see there). A failing Prometheus never raises: every reading then carries ``error`` and
the trigger's ``on_error`` decides. ``docs/signals.md`` ("Prometheus source") has the rules.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, TypeVar

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.evidence import Tracked
from openfeature_canary.plan._promql import (
    promql_duration,
    validate_queries,
)
from openfeature_canary.plan._signals import BASELINE, CANARY, split_signal
from openfeature_canary.signals._counts import EMPTY_COHORT, CohortCounts, CountsReading
from openfeature_canary.signals._histogram import count_above, count_at_least
from openfeature_canary.signals._protocol import SignalReading
from openfeature_canary.signals.prometheus._client import (
    PrometheusApi,
    QueryFailed,
    Sample,
    Session,
)
from openfeature_canary.signals.prometheus._queries import PrometheusNames, QueryBook, SignalQueries

__all__ = ["DEFAULT_PROMETHEUS_TIMEOUT_S", "PrometheusSignalSource"]

if TYPE_CHECKING:
    from openfeature_canary.plan import RolloutPlan

T = TypeVar("T")

log = logging.getLogger("openfeature_canary")

#: Total time one read may take (every query of it, connecting included).
DEFAULT_PROMETHEUS_TIMEOUT_S: Final = 5.0
_HISTOGRAM_SIGNALS: Final = frozenset(
    ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "event_loop_lag_ms")
)


def _round(x: float) -> int:
    """A count from a float Prometheus computed (half up: ``increase`` gives 99.7 or 100.4)."""
    return math.floor(x + 0.5)


def _check_time(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite time, got {value}")


def _check_window(window_s: float) -> None:
    if not (window_s > 0 and math.isfinite(window_s)):
        raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")


def _short(query: str) -> str:
    return query if len(query) <= 200 else query[:199] + "…"


def _single(samples: tuple[Sample, ...], query: str) -> float | None:
    if len(samples) > 1:
        raise QueryFailed(
            f"{len(samples)} series where one was expected (aggregate them, e.g. with "
            f"sum(…)) (query: {_short(query)})"
        )
    return samples[0].value if samples else None


def _count(samples: tuple[Sample, ...], query: str) -> float:
    """A count: no series at all means nothing was counted (a series appears only after its
    first measurement), so an empty result is 0; NaN, infinite or negative is an error."""
    value = _single(samples, query)
    if value is None:
        return 0.0
    if not (math.isfinite(value) and value >= 0):
        raise QueryFailed(f"a count of {value:g} (query: {_short(query)})")
    return value


async def _evaluate(session: Session, q: SignalQueries, at: float) -> tuple[float | None, int]:
    """(value, n) of one signal read."""
    if q.count is None:
        n = _round(_count(await session.instant(q.value, at), q.value))
        return float(n), n
    counted = _count(await session.instant(q.count, at), q.count)
    if counted <= 0:
        return None, 0  # a quiet window: no value, and no error (as in process)
    n = _round(counted)
    value = _single(await session.instant(q.value, at), q.value)
    if value is None or not math.isfinite(value):
        got = "no series" if value is None else f"{value:g}"
        raise QueryFailed(
            f"{got} although {counted:g} samples were counted (query: {_short(q.value)})"
        )
    return (round(value, 9) if q.ms else value), n


def _buckets(samples: Iterable[Sample], query: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Cumulative ``le`` buckets (seconds) -> bounds in ms and per-bucket counts, the last one
    ``+Inf``. Negative steps (series summed from processes with other bounds, a reset caught by
    one bucket series and not the next) are clamped to 0, as ``histogram_quantile`` does."""
    cumulative: dict[float, float] = {}
    for sample in samples:
        try:
            le = float(sample.labels["le"])
        except (KeyError, ValueError):
            raise QueryFailed(
                f"a bucket without a numeric le label (query: {_short(query)})"
            ) from None
        if not math.isfinite(sample.value):
            raise QueryFailed(f"a bucket count of {sample.value:g} (query: {_short(query)})")
        cumulative[le] = cumulative.get(le, 0.0) + sample.value
    if not cumulative:
        return (), (0.0,)
    if math.inf not in cumulative:
        raise QueryFailed(f"no +Inf bucket (query: {_short(query)})")
    counts: list[float] = []
    reached = 0.0
    for le in sorted(cumulative):
        counts.append(max(cumulative[le] - reached, 0.0))
        reached = max(reached, cumulative[le])
    bounds = tuple(round(le * 1000, 9) for le in sorted(cumulative)[:-1])
    return bounds, tuple(counts)


async def _beyond(
    session: Session, query: str, at: float, threshold: float, inclusive: bool
) -> tuple[float | None, int]:
    bounds, counts = _buckets(await session.instant(query, at), query)
    total = sum(counts)
    if total <= 0:
        return None, 0
    count = count_at_least if inclusive else count_above
    return float(count(threshold, bounds, counts)), _round(total)


async def _counts(
    session: Session, queries: tuple[str, str], at: float, label: str
) -> tuple[CohortCounts, CohortCounts]:
    buckets_q, errors_q = queries
    buckets = await session.instant(buckets_q, at)
    errors = await session.instant(errors_q, at)
    cohorts: list[CohortCounts] = []
    for variant in (CANARY, BASELINE):
        bounds, counts = _buckets((s for s in buckets if s.labels.get(label) == variant), buckets_q)
        ints = tuple(_round(c) for c in counts)
        n = sum(ints)
        if n == 0:
            cohorts.append(EMPTY_COHORT)
            continue
        failed = sum(s.value for s in errors if s.labels.get(label) == variant)
        if not math.isfinite(failed):
            raise QueryFailed(f"a 5xx count of {failed:g} (query: {_short(errors_q)})")
        cohorts.append(CohortCounts(n, min(max(_round(failed), 0), n), bounds, ints))
    return cohorts[0], cohorts[1]


async def _tracked(
    session: Session, queries: tuple[str, ...], at: float, labels: tuple[str, str]
) -> dict[str, dict[str, Tracked]]:
    """Per variant, per event: the tracking counters' growth (count, valued, total, squares)."""
    sums: dict[tuple[str, str], list[float]] = {}
    for field, query in enumerate(queries):
        for sample in await session.instant(query, at):
            variant, event = sample.labels.get(labels[0]), sample.labels.get(labels[1])
            if variant is None or event is None:
                continue
            if not math.isfinite(sample.value):
                raise QueryFailed(f"a tracked total of {sample.value:g} (query: {_short(query)})")
            sums.setdefault((variant, event), [0.0, 0.0, 0.0, 0.0])[field] += sample.value
    out: dict[str, dict[str, Tracked]] = {CANARY: {}, BASELINE: {}}
    for (variant, event), (count, valued, total, squares) in sums.items():
        n = max(_round(count), 0)
        if variant in out and n:
            out[variant][event] = Tracked(
                n, min(max(_round(valued), 0), n), max(total, 0.0), max(squares, 0.0)
            )
    return out


class PrometheusSignalSource:
    """The built-in signals read from Prometheus, for a decider that judges a whole fleet.

    Use it when every process of the service is scraped by Prometheus and one process (or
    ``openfeature-canary controller``) decides; a single process can use
    :class:`InProcessSignalSource` instead. ``url`` is Prometheus' base URL; ``queries`` is a
    plan's ``[signals]`` table (signal -> PromQL template, see :func:`validate_queries`)
    overriding the defaults (:func:`default_queries`, from ``names``); ``timeout_s`` is the
    total deadline of one read, all its queries included; ``headers`` go with every request
    (``{"Authorization": "Bearer …"}``). Thread-safe and fork-safe.

    Readings follow the in-process source: ``n`` is the requests (or samples, events sent)
    behind the value, a quiet window has no value and no error, counts read 0. A read that
    cannot be made (Prometheus unreachable or slow, an HTTP error, an answer that is not a
    Prometheus answer, ``status: error``, a value query that gives nothing, NaN or an
    infinity while its count says there were samples) has ``value=None``, ``n=0`` and
    ``error`` saying why; nothing is raised but ``ValueError`` for bad arguments.
    ``plan``, when given, limits the tracked-event queries of ``counts_between`` to the
    flags that have guards (without it, every flag's tracked events are read).

    >>> source = PrometheusSignalSource("http://127.0.0.1:9090")
    >>> source.read("my-flag", "latency_p95_ms", 60, time.time())  # doctest: +SKIP
    SignalReading(signal='latency_p95_ms', value=142.5, n=2336, window_s=60, ...)
    """

    def __init__(
        self,
        url: str,
        *,
        queries: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_PROMETHEUS_TIMEOUT_S,
        names: PrometheusNames | None = None,
        headers: Mapping[str, str] | None = None,
        plan: RolloutPlan | None = None,
    ) -> None:
        self._api = PrometheusApi(url, timeout_s=timeout_s, headers=headers)
        self._names = names or PrometheusNames()
        # Flags whose tracked events are read (None: every flag's); a flag without guards
        # costs no tracking query.
        self._guarded: frozenset[str] | None = (
            None
            if plan is None
            else frozenset(k for k, f in plan.flags.items() if f.tracked_events())
        )
        self._book = QueryBook(self._names, validate_queries(queries or {}))
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        # (monotonic time, reason) of the latest unreachable or late answer: until the next
        # tick the other reads fail at once instead of each waiting out its own deadline.
        self._failed: tuple[float, str] | None = None
        # Whether the tracked events could not be read last time (warned once until they can).
        self._tracked_failing = False

    @property
    def url(self) -> str:
        """Prometheus' base URL as shown in readings (no credentials, no query string)."""
        return self._api.display_url

    @property
    def timeout_s(self) -> float:
        """The total deadline of one read, in seconds."""
        return self._api.timeout_s

    @property
    def queries(self) -> Mapping[str, str]:
        """The PromQL template in effect for every signal (overrides and defaults)."""
        return self._book.templates()

    def snapshot(self, now: float) -> None:
        """Start a policy tick. Prometheus keeps the history, so nothing is collected.

        A Prometheus that could not be reached, or did not answer within ``timeout_s``, fails
        every further read of the tick at once (with the same reason), so a hung server
        costs one deadline per tick, not one per read; a new tick tries again. Without
        ticks, the next read after ``timeout_s`` seconds tries again.
        """
        _check_time("now", now)
        with self._lock:
            self._failed = None

    def read(self, flag_key: str, signal: str, window_s: float, now: float) -> SignalReading:
        """``signal`` over ``(now - window_s, now]``: ``increase(…[window])`` at ``time=now``."""
        split_signal(signal)
        _check_window(window_s)
        _check_time("now", now)
        return self._read(flag_key, signal, now - window_s, now)

    def read_between(self, flag_key: str, signal: str, start: float, end: float) -> SignalReading:
        """``signal`` over ``[start, end]``: evaluated at ``end``, the window ``end - start``."""
        split_signal(signal)
        _check_span(start, end)
        return self._read(flag_key, signal, start, end)

    def count_beyond(
        self,
        flag_key: str,
        signal: str,
        threshold: float,
        inclusive: bool,
        window_s: float,
        now: float,
    ) -> SignalReading:
        """Samples of a histogram signal beyond ``threshold`` (ms) in the trailing window.

        Reads ``sum by (le) (increase(…_bucket[window]))`` and counts like the in-process
        source (:func:`count_above`, exact at a bucket bound). The count is ``increase``'s,
        extrapolated to the window's edges, so it can be fractional and slightly above the
        samples really seen; it is never rounded up to reach an ``occurrences`` threshold.
        """
        split_signal(signal)
        if signal.removeprefix("baseline_") not in _HISTOGRAM_SIGNALS:
            raise ValueError(
                f"count_beyond needs a histogram signal (latency or lag), not {signal!r}"
            )
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")
        _check_window(window_s)
        _check_time("now", now)
        start = now - window_s
        query = self._book.buckets(flag_key, signal, promql_duration(window_s))
        try:
            value, n = self._call(lambda s: _beyond(s, query, now, threshold, inclusive))
        except QueryFailed as exc:
            return SignalReading(signal, None, 0, window_s, start, now, self._error(exc))
        return SignalReading(signal, value, n, window_s, start, now)

    def counts_between(self, flag_key: str, start: float, end: float) -> CountsReading:
        """Both cohorts' request counts (buckets and 5xx) between ``start`` and ``end``.

        Exact counts, not ``increase``: per series, the value at the last scrape at or before
        ``end`` minus the one at or before ``start`` (a series that restarted or appeared in
        between counts its value since then). Consecutive spans therefore add up to the
        whole: nothing is extrapolated, nothing counted twice.

        The tracked events (``CohortCounts.tracked``) are read the same way; when they cannot
        be read, the request counts are still returned, without tracked events (a warning
        says so once, until they can be read again).
        """
        _check_span(start, end)
        if round((end - start) * 1000) < 1:
            return CountsReading(EMPTY_COHORT, EMPTY_COHORT, start, end)
        queries = self._book.counts(flag_key, promql_duration(end - start))
        label = self._names.variant_label
        try:
            canary, baseline = self._call(lambda s: _counts(s, queries, end, label))
        except QueryFailed as exc:
            return CountsReading(EMPTY_COHORT, EMPTY_COHORT, start, end, self._error(exc))
        if self._guarded is not None and flag_key not in self._guarded:
            return CountsReading(canary, baseline, start, end)
        tracked = self._read_tracked(flag_key, end - start, end)
        if tracked[CANARY]:
            canary = replace(canary, tracked=MappingProxyType(tracked[CANARY]))
        if tracked[BASELINE]:
            baseline = replace(baseline, tracked=MappingProxyType(tracked[BASELINE]))
        return CountsReading(canary, baseline, start, end)

    def _read_tracked(self, flag: str, span_s: float, end: float) -> dict[str, dict[str, Tracked]]:
        """The tracked events by variant; none (warned once) when they cannot be read."""
        queries = self._book.tracked(flag, promql_duration(span_s))
        labels = (self._names.variant_label, self._names.event_label)
        try:
            tracked = self._call(lambda s: _tracked(s, queries, end, labels))
        except QueryFailed as exc:
            with self._lock:
                warn, self._tracked_failing = not self._tracked_failing, True
            if warn:
                log.warning(
                    "openfeature-canary: tracked events not read (the request counts are): %s",
                    self._error(exc),
                )
            return {CANARY: {}, BASELINE: {}}
        with self._lock:
            self._tracked_failing = False
        return tracked

    # -- internals ---------------------------------------------------------------------

    def _read(self, flag: str, signal: str, start: float, end: float) -> SignalReading:
        window_s = end - start
        if round(window_s * 1000) < 1:
            return SignalReading(signal, None, 0, window_s, start, end)
        queries = self._book.signal(flag, signal, promql_duration(window_s))
        try:
            value, n = self._call(lambda s: _evaluate(s, queries, end))
        except QueryFailed as exc:
            return SignalReading(signal, None, 0, window_s, start, end, self._error(exc))
        return SignalReading(signal, value, n, window_s, start, end)

    def _call(self, job: Callable[[Session], Awaitable[T]]) -> T:
        """Run one read's queries; every failure becomes :class:`QueryFailed`."""
        with self._lock:
            failed = self._failed
        if failed is not None and time.monotonic() - failed[0] < self._api.timeout_s:
            raise QueryFailed(f"{failed[1]} (earlier in this tick; retried at the next one)")
        try:
            return self._api.run(job)
        except QueryFailed as exc:
            if exc.transient:
                with self._lock:
                    self._failed = (time.monotonic(), str(exc))
            raise
        except Exception as exc:  # an answer we did not foresee: no reading, never a crash
            raise QueryFailed(f"unexpected {type(exc).__name__}: {exc}") from exc

    def _error(self, exc: QueryFailed) -> str:
        return f"prometheus {self.url}: {exc}"


def _check_span(start: float, end: float) -> None:
    _check_time("start", start)
    _check_time("end", end)
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
