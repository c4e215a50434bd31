"""The fleet's canary view on ``/metrics``: the same numbers whichever process a scrape reaches.

Behind ``uvicorn --workers N`` a scrape reaches one worker, and keep-alive keeps it there: what
that worker counted alone (its requests, the rollbacks it made) is not what the decider judged.
Every process already reads the shared store, so each one derives the fleet's view from it:

- ``canary.fleet.requests`` / ``canary.fleet.errors`` per flag and cohort: the sum of the
  records every process publishes (the decider's evidence). Cumulative: a process whose record
  left the store (it died and was forgotten) keeps what it contributed, as in the decider;
- ``canary.fleet.tracked`` per flag, cohort and event: the tracked events (``track()``, what
  the guards judge) summed over every process's record, likewise;
- ``canary.fleet.rollbacks`` per flag and reason: the rollbacks in the persisted decision log
  (every process reads the same log, so every process shows the same count);
- ``canary.gate.threshold`` per flag, stage and signal: the plan's gate lines (a dashboard
  draws them from here, never from numbers copied out of one plan);
- ``canary.fleet.trigger.value`` / ``canary.trigger.breached`` per flag and trigger: the
  decider's last readings (the value in the signal's unit; 0/1), as the current lease holder
  published them with its record (a process that does not decide publishes none).

:class:`FleetMetrics` refreshes an immutable :class:`FleetView` at the runner's rounds (at most
once per ``every_s``); the observable instruments' callbacks only read the view, so a
collection does no store I/O and cannot block on the store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from openfeature_canary.errors import StateStoreError
from openfeature_canary.signals import TriggerReading, snapshot_from_record, trigger_readings
from openfeature_canary.state import RolloutState

if TYPE_CHECKING:
    from openfeature_canary.plan import RolloutPlan
    from openfeature_canary.stores import FleetStore

__all__ = ["FleetMetrics", "FleetView", "cohort_of", "gate_thresholds", "view_from"]

log = logging.getLogger("openfeature_canary")

_KEY: Final = "feature_flag.key"
#: The variant each cohort serves: ``on`` is the canary (the new path), ``off`` the baseline.
_COHORTS: Final = MappingProxyType({"on": "canary", "off": "baseline"})
#: Per cohort (flag, cohort): (requests, 5xx).
Requests = Mapping[tuple[str, str], tuple[int, int]]


def cohort_of(variant: str) -> str:
    """The ``cohort`` label of a variant: ``canary`` for ``on``, ``baseline`` for ``off``, the
    variant itself otherwise."""
    return _COHORTS.get(variant, variant)


@dataclass(frozen=True)
class FleetView:
    """What the fleet gauges show, as of the last refresh (immutable: read by collections).

    ``requests``: per (flag, cohort), (requests, 5xx) summed over every process's record;
    ``rollbacks``: per (flag, reason), the rollbacks in the persisted log; ``thresholds``: per
    (flag, stage, signal), the gate's line; ``triggers``: per (flag, trigger), the decider's
    last reading; ``tracked``: per (flag, cohort, event), the tracked events summed over every
    process's record.
    """

    requests: Requests = field(default_factory=lambda: MappingProxyType({}))
    rollbacks: Mapping[tuple[str, str], int] = field(default_factory=lambda: MappingProxyType({}))
    thresholds: Mapping[tuple[str, int, str], float] = field(
        default_factory=lambda: MappingProxyType({})
    )
    triggers: Mapping[tuple[str, str], TriggerReading] = field(
        default_factory=lambda: MappingProxyType({})
    )
    tracked: Mapping[tuple[str, str, str], int] = field(
        default_factory=lambda: MappingProxyType({})
    )


def gate_thresholds(plan: RolloutPlan) -> dict[tuple[str, int, str], float]:
    """Every gate line of ``plan``: (flag, stage 1..N, signal) -> threshold, in the signal's
    unit (``p95_ms``/``p99_ms`` in ms, ``error_rate`` a ratio 0..1)."""
    out: dict[tuple[str, int, str], float] = {}
    for key, flag in plan.flags.items():
        for number, stage in enumerate(flag.stages, start=1):
            for signal, line in (
                ("p95_ms", stage.max_p95_ms),
                ("p99_ms", stage.max_p99_ms),
                ("error_rate", stage.max_error_rate),
            ):
                if line is not None and math.isfinite(line):
                    out[(key, number, signal)] = float(line)
    return out


def rollbacks_in(states: Iterable[RolloutState]) -> dict[tuple[str, str], int]:
    """Per (flag, reason): the rollbacks in the states' persisted decision logs."""
    out: dict[tuple[str, str], int] = {}
    for state in states:
        for entry in state.log:
            if entry.action == "rollback":
                key = (state.flag_key, entry.reason or "unknown")
                out[key] = out.get(key, 0) + 1
    return out


class _RequestSums:
    """Per process, the totals its record last showed, kept after the record left the store.

    A process that died keeps what it contributed (fleet totals never go down, as in the
    decider); a record that is missing from one read only (torn, being rewritten) and comes
    back replaces its own totals, so nothing is counted twice.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[Mapping[str, Any], dict[tuple[str, str], tuple[int, int]]]] = {}
        #: Per process, its record's tracked events per (flag, cohort, event).
        self._events: dict[str, dict[tuple[str, str, str], int]] = {}

    def update(self, records: Mapping[str, tuple[float, Mapping[str, Any]]]) -> Requests:
        """Fold the store's records in; the fleet's totals per (flag, cohort)."""
        for process_id, (_beat, record) in records.items():
            seen = self._last.get(process_id)
            if seen is not None and seen[0] == record:
                continue
            try:
                snap = snapshot_from_record(record)
            except ValueError:  # FleetSignalSource says so, once per process
                continue
            totals: dict[tuple[str, str], tuple[int, int]] = {}
            for (flag, variant), cohort in snap.requests.items():
                n = sum(sum(counts) for _bounds, counts in cohort.hist)
                _add(totals, {(flag, cohort_of(variant)): (n, cohort.errors)})
            self._last[process_id] = (record, totals)
            self._events[process_id] = {
                (flag, cohort_of(variant), event): t.count
                for (flag, variant, event), t in snap.tracked.items()
            }
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for _record, totals in self._last.values():
            _add(out, totals)
        return MappingProxyType(out)

    def tracked(self) -> Mapping[tuple[str, str, str], int]:
        """The fleet's tracked events per (flag, cohort, event), as of the last update."""
        out: dict[tuple[str, str, str], int] = {}
        for events in self._events.values():
            for key, count in events.items():
                out[key] = out.get(key, 0) + count
        return MappingProxyType(out)


def _add(into: dict[tuple[str, str], tuple[int, int]], more: Requests) -> None:
    for key, (n, errors) in more.items():
        had = into.get(key, (0, 0))
        into[key] = (had[0] + n, had[1] + errors)


def view_from(
    requests: Requests,
    rollbacks: Mapping[tuple[str, str], int],
    thresholds: Mapping[tuple[str, int, str], float],
    triggers: Mapping[tuple[str, str], TriggerReading],
    tracked: Mapping[tuple[str, str, str], int] | None = None,
) -> FleetView:
    """The view from its parts."""
    return FleetView(
        requests=MappingProxyType(dict(requests)),
        rollbacks=MappingProxyType(dict(rollbacks)),
        thresholds=MappingProxyType(dict(thresholds)),
        triggers=MappingProxyType(dict(triggers)),
        tracked=MappingProxyType(dict(tracked or {})),
    )


class FleetMetrics:
    """Registers the fleet instruments on ``meter_provider``; :meth:`refresh` renews the view.

    ``states`` gives the flags' states as this process last read them from the store. The
    triggers' readings come from the record of the lease's holder (the decider).
    """

    def __init__(
        self,
        plan: RolloutPlan,
        store: FleetStore,
        meter_provider: MeterProvider,
        states: Callable[[], Iterable[RolloutState]],
        *,
        every_s: float = 1.0,
    ) -> None:
        self._store = store
        self._states = states
        self._every_s = every_s
        self._thresholds = gate_thresholds(plan)
        self._sums = _RequestSums()
        #: The most rollbacks seen per (flag, reason): the log keeps its last entries only,
        #: and a counter must not go down when an old rollback leaves it.
        self._rollbacks: dict[tuple[str, str], int] = {}
        self._refreshed_at = -math.inf
        #: The holder's readings as last parsed: (its record, the readings), parsed once each.
        self._readings: tuple[Mapping[str, Any] | None, Mapping[tuple[str, str], TriggerReading]]
        self._readings = (None, MappingProxyType({}))
        self.view = view_from({}, {}, self._thresholds, {})
        meter = meter_provider.get_meter("openfeature_canary.fleet")
        meter.create_observable_counter(
            "canary.fleet.requests",
            [self._requests],
            unit="{request}",
            description="Requests per cohort, summed over every process of the fleet",
        )
        meter.create_observable_counter(
            "canary.fleet.errors",
            [self._errors],
            unit="{request}",
            description="5xx responses per cohort, summed over every process of the fleet",
        )
        meter.create_observable_counter(
            "canary.fleet.tracked",
            [self._tracked],
            unit="{event}",
            description="Tracked events per cohort and event, summed over every process",
        )
        meter.create_observable_counter(
            "canary.fleet.rollbacks",
            [self._rollbacks_seen],
            description="Rollbacks in the persisted decision log, by flag and reason",
        )
        meter.create_observable_gauge(
            "canary.gate.threshold",
            [self._gate_lines],
            description="A stage gate's line, in its signal's unit",
        )
        meter.create_observable_gauge(
            "canary.fleet.trigger.value",
            [self._trigger_values],
            description="The decider's last reading of a trigger, in its signal's unit",
        )
        meter.create_observable_gauge(
            "canary.trigger.breached",
            [self._breaches],
            description="1 when the trigger's last reading was beyond its threshold",
        )

    def refresh(self, now: float) -> None:
        """Read the records and states into a new view, unless one was made within
        ``every_s`` of ``now``. A store that cannot be read keeps the last view."""
        if 0 <= now - self._refreshed_at < self._every_s:
            return
        try:
            records = self._store.records()
            lease = self._store.lease()
        except StateStoreError as exc:
            log.debug("openfeature-canary: fleet metrics keep their last view: %s", exc)
            return
        self._refreshed_at = now
        requests = self._sums.update(records)
        for key, n in rollbacks_in(self._states()).items():
            self._rollbacks[key] = max(n, self._rollbacks.get(key, 0))
        holder = records.get(lease.holder) if lease is not None else None
        triggers = self._holder_readings(holder[1] if holder is not None else None)
        self.view = view_from(
            requests, self._rollbacks, self._thresholds, triggers, self._sums.tracked()
        )

    def _holder_readings(
        self, record: Mapping[str, Any] | None
    ) -> Mapping[tuple[str, str], TriggerReading]:
        """The readings in the lease holder's record (none without one); a record whose
        readings are bad shows none, said once per record at WARNING."""
        if record is None:
            return MappingProxyType({})
        seen, readings = self._readings
        if seen == record:
            return readings
        try:
            readings = MappingProxyType(trigger_readings(record))
        except ValueError as exc:
            log.warning("openfeature-canary: the decider's trigger readings are refused: %s", exc)
            readings = MappingProxyType({})
        self._readings = (record, readings)
        return readings

    def _requests(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {_KEY: flag, "cohort": cohort})
            for (flag, cohort), (n, _errors) in self.view.requests.items()
        ]

    def _errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(errors, {_KEY: flag, "cohort": cohort})
            for (flag, cohort), (_n, errors) in self.view.requests.items()
        ]

    def _tracked(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {_KEY: flag, "cohort": cohort, "event": event})
            for (flag, cohort, event), n in self.view.tracked.items()
        ]

    def _rollbacks_seen(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {_KEY: flag, "reason": reason})
            for (flag, reason), n in self.view.rollbacks.items()
        ]

    def _gate_lines(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(line, {_KEY: flag, "stage": str(stage), "signal": signal})
            for (flag, stage, signal), line in self.view.thresholds.items()
        ]

    def _trigger_values(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(r.value, {_KEY: flag, "trigger": trigger})
            for (flag, trigger), r in self.view.triggers.items()
            if r.value is not None
        ]

    def _breaches(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(r.breached), {_KEY: flag, "trigger": trigger})
            for (flag, trigger), r in self.view.triggers.items()
        ]
