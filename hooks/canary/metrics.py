"""``MetricsHook``: every flag evaluation's outcome and latency, as OpenTelemetry metrics.

Design (why it is cheap, and scales with threads): an OpenTelemetry ``Counter.add`` or
``Histogram.record`` with attributes costs about as much as a whole flag evaluation and takes
the SDK's locks (an aggregation's and an exemplar reservoir's per reader), on which evaluating
threads queue; so no instrument is touched per evaluation. Each thread counts outcomes, and
buckets their durations, in plain Python ints and floats of its own, a *shard* (``_shards.py``:
no lock, no contention, exact). The counters are *observable* instruments whose callbacks add
the shards up when a reader collects; the first of them also adds the durations that are new
since the last collection into the histogram's SDK aggregations (``_sdk_histogram.py``), as
``record`` would have left them. Where that cannot be done (not an SDK meter provider, a view
with other buckets), each evaluation records its duration itself, as before.

Threads come and go (a thread-per-request server starts one per request), so a shard lives only
as long as its thread (``openfeature_canary._perthread``, shared with ``track()``'s
recorder): an ended thread's counts are folded into one shared total, and a collection costs
as much after thousands of short-lived threads as with one. The thread's
``threading.local`` storage holds a token besides its shard, and CPython frees that storage
when the thread ends, after its last evaluation; a weak-reference callback on the token then
moves the shard's (final) counts into the total. Folding and collection take one lock, which
the evaluation path never takes: a new thread announces its shard with an atomic
``deque.append``, and an ending thread that finds the lock busy queues its shard the same way
for the holder (or the next collection) to fold. A collection reads the total and the live
shards under that lock, so a thread ending meanwhile is counted once, live or folded.

In a child process forked from a threaded one, only the forking thread exists: the other
threads' shards are folded at the fork (their evaluations in flight then never finish there).
The fork waits for this hook's lock (a callback's sum or a fold under way), so no fold is left
half done, and the meter provider is made fork-safe (``_forksafe``: no data point half
updated, every SDK lock free again in the child), so the child records and collects at once.
The evaluation path takes none of these locks.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterable
from time import perf_counter
from typing import Final

from openfeature.contrib.hook.canary._constants import (
    ACTIVE_COUNT,
    DURATION,
    DURATION_BOUNDS_S,
    ERROR_TOTAL,
    FLAG_KEY,
    METER_NAME,
    PROVIDER_NAME,
    REQUESTS_TOTAL,
    SUCCESS_TOTAL,
)
from openfeature.contrib.hook.canary._sdk_histogram import SdkHistogramSink
from openfeature.contrib.hook.canary._shards import (
    UNKNOWN,
    Attributes,
    DurationTotal,
    Outcome,
    OutcomeKey,
    Shard,
)
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagValueType
from openfeature.hook import Hook, HookContext, HookHints
from opentelemetry.metrics import (
    CallbackOptions,
    MeterProvider,
    Observation,
    get_meter_provider,
)
from opentelemetry.util.types import AttributeValue

from openfeature_canary._forksafe import (
    HOOKS,
    hold_opentelemetry_across_fork,
    on_fork,
)
from openfeature_canary._perthread import PerThread
from openfeature_canary.instrumentation import bucketing_unit, remember_variant

__all__ = ["MetricsHook"]

log = logging.getLogger("openfeature_canary")

_START: Final = "openfeature.contrib.hook.canary.metrics.start"
_BOUNDS: Final = DURATION_BOUNDS_S


class MetricsHook(Hook):
    """Record every evaluation's outcome and latency through OpenTelemetry (spec §9).

    Register it once, for every client (it works in front of any provider)::

        from openfeature import api
        from openfeature.contrib.hook.canary import MetricsHook

        api.add_hooks([MetricsHook(meter_provider)])   # None: the global meter provider

    Instruments (the names other OpenFeature SDKs' hooks use) and their attributes:

    * ``feature_flag.evaluation_requests_total`` (counter): ``feature_flag.key``,
      ``feature_flag.provider.name``; every evaluation, also those refused before the
      provider ran (provider not ready), so requests = success + error.
    * ``feature_flag.evaluation_success_total`` (counter): the above plus
      ``feature_flag.result.variant`` (when the provider gave one) and
      ``feature_flag.result.reason`` (lower case, e.g. ``split``).
    * ``feature_flag.evaluation_error_total`` (counter): key, provider name and
      ``error.type``, the lower-case error code (``flag_not_found``,
      ``targeting_key_missing``...).
    * ``feature_flag.evaluation_active_count`` (up-down counter): evaluations in flight, by
      ``feature_flag.key`` (as in the other SDKs).
    * ``feature_flag.evaluation.duration`` (histogram, seconds, bounds from 5 µs to 1 s):
      ``feature_flag.key``, plus ``error.type`` for errors. Timed from this hook's ``before``
      to its ``finally_after``, so the few evaluations the SDK refuses before any ``before``
      runs (provider not ready) are counted but not timed. The provider name is left out on
      purpose: each attribute costs about 0.5 µs per evaluation in the SDK, and the counters
      already tell which provider answered.

    It also remembers the variant each flag gave the current request
    (``openfeature_canary.instrumentation.current_variant``) for the request middleware.

    Counts and durations are exact (no sampling; no exemplars either) and are added up when
    a reader collects; the counts of threads that have ended are kept as one total, so
    short-lived threads cost nothing once gone. Use one ``MetricsHook`` per meter provider:
    OpenTelemetry keeps only the first callbacks of an instrument name, so a second hook on
    the same provider would count in vain.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        mp = meter_provider if meter_provider is not None else get_meter_provider()
        meter = mp.get_meter(METER_NAME)
        # Each thread's shard; the lock is taken by collection and folding only, never by the
        # evaluation path, which reads ``_local.shard`` (the same storage) directly.
        self._threads = PerThread(Shard, self._fold, "MetricsHook")
        self._local = self._threads.local
        self._folded: dict[OutcomeKey, Outcome] = {}  # ended threads' counts (under the lock)
        self._ended_flags: set[str] = set()  # flags started by ended threads: 0 in flight
        self._duration = meter.create_histogram(
            DURATION,
            unit="s",
            description="Duration of feature flag evaluations.",
            explicit_bucket_boundaries_advisory=DURATION_BOUNDS_S,
        )
        # Durations are bucketed per thread and added into the SDK's aggregations when a
        # reader collects; None (not an SDK provider, or a view with other buckets): each
        # evaluation records its duration itself.
        self._sink = SdkHistogramSink.attach(mp, self._duration, DURATION_BOUNDS_S)
        meter.create_observable_counter(
            REQUESTS_TOTAL,
            callbacks=[self._observe_requests],
            unit="{evaluation}",
            description="Feature flag evaluations.",
        )
        meter.create_observable_counter(
            SUCCESS_TOTAL,
            callbacks=[self._observe_successes],
            unit="{evaluation}",
            description="Feature flag evaluations that succeeded, by variant and reason.",
        )
        meter.create_observable_counter(
            ERROR_TOTAL,
            callbacks=[self._observe_errors],
            unit="{evaluation}",
            description="Feature flag evaluations that failed, by error type.",
        )
        meter.create_observable_up_down_counter(
            ACTIVE_COUNT,
            callbacks=[self._observe_active],
            unit="{evaluation}",
            description="Feature flag evaluations in flight.",
        )
        # A child records and collects without waiting for a thread that is not there: the
        # fork waits for the SDK's data points, then for this hook's lock.
        hold_opentelemetry_across_fork(mp)
        on_fork(
            self,
            level=HOOKS,
            before=MetricsHook._before_fork,
            after_in_parent=MetricsHook._after_fork_in_parent,
            after_in_child=MetricsHook._after_fork_in_child,
        )

    # ------------------------------------------------------------------ evaluation path
    # Hot path: about 1 µs of our own work per evaluation, no lock, no OpenTelemetry call.

    def before(self, hook_context: HookContext, hints: HookHints) -> None:
        """Count the evaluation in flight and start its clock."""
        try:
            started = self._local.shard.started
        except AttributeError:
            started = self._threads.join().started
        flag_key = hook_context.flag_key
        started[flag_key] = started.get(flag_key, 0) + 1
        hook_context.hook_data[_START] = perf_counter()

    def finally_after(
        self,
        hook_context: HookContext,
        details: FlagEvaluationDetails[FlagValueType],
        hints: HookHints,
    ) -> None:
        """Count the outcome, record the duration, remember the variant."""
        start = hook_context.hook_data.get(_START)
        end = perf_counter()
        try:
            outcomes = self._local.shard.outcomes
        except AttributeError:
            outcomes = self._threads.join().outcomes
        pm = hook_context.provider_metadata
        flag_key = hook_context.flag_key
        variant = details.variant
        error_code = details.error_code
        key = (flag_key, pm.name if pm else UNKNOWN, variant, details.reason, error_code)
        outcome = outcomes.get(key)
        if outcome is None:
            outcome = outcomes[key] = Outcome(key)
        outcome.count += 1
        if start is not None:
            outcome.timed += 1
            if self._sink is None:  # not an SDK meter provider we can add into
                self._duration.record(end - start, outcome.duration_attrs)
            else:
                # Sum, min and max before the bucket: a collection reads them after it.
                duration = end - start
                outcome.sum += duration
                if duration < outcome.min:
                    outcome.min = duration
                if duration > outcome.max:
                    outcome.max = duration
                outcome.buckets[bisect_left(_BOUNDS, duration)] += 1
        remember_variant(
            flag_key,
            None if error_code else variant,
            unit=bucketing_unit(hook_context.evaluation_context, details.flag_metadata),
        )

    # ------------------------------------------------------------------ ended threads

    def _fold(self, shard: Shard) -> None:
        """Add an ended thread's counts (final: nothing writes them any more) to the total
        (``PerThread.fold`` calls it once per shard, with the lock held)."""
        folded = self._folded
        for key, o in shard.outcomes.items():
            total = folded.get(key)
            if total is None:
                total = folded[key] = Outcome(key)
            total.fold(o)
        # An ended thread has no evaluation in flight (``timed`` only serves to count a live
        # thread's): its flags stay reported, at 0 in flight.
        self._ended_flags.update(shard.started)

    # ------------------------------------------------------------------ fork

    def _before_fork(self, deadline: float) -> None:
        # No fold half done in the child: wait for the callback or fold under way, if any.
        self._threads.before_fork(deadline)

    def _after_fork_in_parent(self) -> None:
        self._threads.after_fork_in_parent()  # and fold the threads that ended meanwhile

    def _after_fork_in_child(self) -> None:
        # Only this thread exists here: fold every other thread's shard. The fork may have
        # freed their storage (their callbacks, finding the lock held, queued their shards)
        # or not all of it (what their stacks referred to leaks): either way, fold here.
        threads = self._threads
        mine = threads.after_fork_in_child()
        with threads.lock:
            for shard in tuple(threads.settle()):
                if shard is not mine:
                    threads.fold(shard)

    # ------------------------------------------------------------------ collection
    # Each callback reads the total and the live shards under the lock, so a thread that
    # ends meanwhile is counted once, live or folded; cumulative counts never go back.

    def _outcomes(self) -> list[Outcome]:
        """Every outcome's counts: the ended threads' totals and each live thread's. Lock held."""
        # ``tuple(dict.values())`` runs in C under the GIL: safe while the owner inserts.
        live = [o for shard in self._threads.settle() for o in tuple(shard.outcomes.values())]
        return [*self._folded.values(), *live]

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        # The first of this hook's callbacks in every collection: it also hands the durations
        # to the SDK's histogram, before the reader's storage is collected.
        totals: dict[tuple[str, str], int] = {}
        durations: dict[tuple[tuple[str, AttributeValue], ...], DurationTotal] = {}
        sink = self._sink
        with self._threads.lock:
            for o in self._outcomes():
                flag = (o.flag_key, o.provider)
                totals[flag] = totals.get(flag, 0) + o.count
                if sink is not None:  # ended threads' totals keep durations, not ``timed``
                    ident = tuple(o.duration_attrs.items())
                    total = durations.get(ident)
                    if total is None:
                        total = durations[ident] = DurationTotal(o.duration_attrs)
                    total.add(o)
        self._threads.fold_ended()
        if sink is not None:  # outside the hook's lock: it takes the SDK's
            try:
                sink.add(durations.values())
            except Exception:  # the counts must still be reported; totals are cumulative, so
                # a later collection adds what this one could not
                log.exception("MetricsHook: durations not handed to the SDK this collection")
        return [
            Observation(n, {FLAG_KEY: flag_key, PROVIDER_NAME: provider})
            for (flag_key, provider), n in totals.items()
        ]

    def _observe_outcomes(self, success: bool) -> list[Observation]:
        # Outcomes with equal keys (threads', ended threads') have equal attributes: add up.
        totals: dict[tuple[tuple[str, AttributeValue], ...], tuple[int, Attributes]] = {}
        with self._threads.lock:
            for o in self._outcomes():
                if o.success is success:
                    ident = tuple(o.outcome_attrs.items())
                    n, attrs = totals.get(ident, (0, o.outcome_attrs))
                    totals[ident] = (n + o.count, attrs)
        self._threads.fold_ended()
        return [Observation(n, attrs) for n, attrs in totals.values()]

    def _observe_successes(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_outcomes(True)

    def _observe_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_outcomes(False)

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._threads.lock:
            active = dict.fromkeys(self._ended_flags, 0)
            for shard in self._threads.settle():
                # Read what finished before what started: an evaluation ending in between
                # is then seen as still in flight, never as a negative count.
                for o in tuple(shard.outcomes.values()):
                    if o.timed:
                        active[o.flag_key] = active.get(o.flag_key, 0) - o.timed
                for flag_key, n in tuple(shard.started.items()):
                    active[flag_key] = active.get(flag_key, 0) + n
        self._threads.fold_ended()
        return [Observation(n, {FLAG_KEY: flag_key}) for flag_key, n in active.items()]
