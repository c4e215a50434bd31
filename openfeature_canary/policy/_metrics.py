"""The controller's own metrics (spec §7), on the application's MeterProvider.

- ``canary.rollout.percent`` / ``canary.rollout.stage``: per ``feature_flag.key``;
- ``canary.rollout.status``: 1 for the current status, 0 for the others
  (attribute ``canary.rollout.status``), so a dashboard can graph each status;
- ``canary.trigger.value`` / ``canary.trigger.threshold``: per flag and ``canary.trigger.name``;
- ``canary.rollbacks``: a counter per flag and ``canary.trigger.name`` (the trigger, ``gate_no_go``,
  ``signal_source_error``, or ``operator`` for an operator's free-text reason).

Why the gauges are not all observable: every collection, and the policy's own snapshot is one
at every tick, pays the OpenTelemetry SDK 15 to 35 µs per observed point (a measurement built,
its attributes cleaned and hashed, aggregated, then collected), and these gauges are 15 points
per flag: 150 of the 170 points a 10-flag collection holds. Yet percent, stage and status change
only on transitions, and thresholds never. So they are *synchronous* gauges, set when their
value changes (thresholds once): the SDK keeps a set gauge's last value for cumulative readers
and only collects it. Changes are looked for at collection time, in the callback of the one
observable gauge left, ``canary.trigger.value`` (a new reading every tick), so the gauges still
show this process's state when a reader collects, wherever the state came from (a transition
here, another process's through the store), and nothing is written between scrapes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    Observation,
    get_meter_provider,
)
from opentelemetry.util.types import Attributes

from openfeature_canary.policy._fleet_metrics import FleetMetrics
from openfeature_canary.policy._reasons import PLAN_REASONS
from openfeature_canary.signals import TriggerReading
from openfeature_canary.state import RolloutState, Status

if TYPE_CHECKING:
    from openfeature_canary.policy._autopilot import TickResult
    from openfeature_canary.policy._controller import Controller
    from openfeature_canary.policy._rollout import Rollout

__all__ = ["RolloutMetrics"]

log = logging.getLogger("openfeature_canary")

_KEY = "feature_flag.key"
_TRIGGER = "canary.trigger.name"
_STATUS = "canary.rollout.status"
_NOT_YET = object()  # no refresh has run: every value is set


class _Gauge(Protocol):
    def set(self, amount: float, attributes: Attributes = None) -> None: ...


class _NoGauge:
    """For a meter without synchronous gauges (OpenTelemetry API < 1.23 implementations)."""

    def set(self, amount: float, attributes: Attributes = None) -> None:
        """Nothing to set."""


def _gauge(meter: Meter, name: str, unit: str = "", description: str = "") -> _Gauge:
    gauge: _Gauge | None = meter.create_gauge(name, unit=unit, description=description)
    if gauge is None:  # the API's default for a meter that predates gauges
        log.warning("the meter provider has no synchronous gauges: %s is not exported", name)
        return _NoGauge()
    return gauge


class RolloutMetrics:
    """Registers the controller's instruments for ``rollout`` on ``meter_provider``; the
    rollout's pipeline calls :meth:`count_transition` (step 5) for its own transitions."""

    def __init__(self, rollout: Rollout, meter_provider: MeterProvider | None = None) -> None:
        self.rollout = rollout
        self._provider = meter_provider or get_meter_provider()
        meter = self._provider.get_meter("openfeature_canary.controller")
        self._percent = _gauge(meter, "canary.rollout.percent", "%", "Served percentage")
        self._stage = _gauge(
            meter, "canary.rollout.stage", description="Current stage (0 = pending)"
        )
        self._status = _gauge(
            meter, "canary.rollout.status", description="1 for the current status"
        )
        self._threshold = _gauge(meter, "canary.trigger.threshold", description="Trigger threshold")
        self._rollbacks = meter.create_counter(
            "canary.rollbacks", description="Rollbacks to 0 %, by flag and trigger"
        )
        self._reasons = frozenset(
            {t.name for f in rollout.plan.flags.values() for t in f.triggers} | PLAN_REASONS
        )
        #: Per flag: (percent, stage, status) as last set. Only :meth:`_refresh` writes it.
        self._shown: dict[str, tuple[float, int, Status]] = {}
        self._readers: object = _NOT_YET  # the SDK's reader storages at the last refresh
        self._refresh()
        self.fleet = _fleet_metrics(rollout, self._provider)
        if rollout.fleet is not None:
            rollout.fleet.readings = self._readings
        # Registered last: its callback may run (a collection) as soon as it exists.
        meter.create_observable_gauge(
            "canary.trigger.value", [self._trigger_value], description="Last trigger reading"
        )

    def count_transition(self, old: RolloutState, new: RolloutState) -> None:
        """Count a rollback (once per transition, in the process that made it)."""
        if new.status is Status.ROLLED_BACK and old.status is not Status.ROLLED_BACK:
            # Operators write free text as a reason; a label must stay a small set.
            trigger = new.reason if new.reason in self._reasons else "operator"
            self._rollbacks.add(1, {_KEY: new.flag_key, _TRIGGER: trigger})

    def refresh_fleet(self, now: float) -> None:
        """Renew the fleet view (a runner round's last step; nothing outside a fleet)."""
        if self.fleet is not None:
            self.fleet.refresh(now)

    def _readings(self) -> dict[tuple[str, str], TriggerReading]:
        """Per (flag, trigger): this process's last tick's reading (empty where the policy does
        not run). Published with the decider's record: the fleet view shows the decider's."""
        out: dict[tuple[str, str], TriggerReading] = {}
        for ctl, last in self._last_ticks():
            for trigger in ctl.flag.triggers:
                reading = last.triggers.get(trigger.name)
                if reading is None:
                    continue
                value = reading.value
                breached = value is not None and trigger.breached(value)
                out[(ctl.key, trigger.name)] = TriggerReading(value, breached, last.at)
        return out

    def _refresh(self) -> None:
        """Set the gauges whose value changed since the last refresh.

        Runs at construction, then in a collection's callback (the SDK runs one collection of
        a provider at a time). ``_shown`` is written after the gauges it describes, so a fork
        in between only makes the child set them again.
        """
        readers = _reader_storages(self._provider)
        if readers is not self._readers:  # a reader was added: it has none of the values
            self._readers = readers
            self._shown.clear()
            for ctl in self.rollout.controllers():
                for t in ctl.flag.triggers:
                    self._threshold.set(t.threshold, {_KEY: ctl.key, _TRIGGER: t.name})
        shown = self._shown
        for ctl in self.rollout.controllers():
            s = ctl.state
            now = (s.percent, s.stage, s.status)
            was = shown.get(s.flag_key)
            if was == now:
                continue
            flag = {_KEY: s.flag_key}
            if was is None or was[0] != s.percent:
                self._percent.set(s.percent, flag)
            if was is None or was[1] != s.stage:
                self._stage.set(s.stage, flag)
            for status in Status:  # all at first, then the one left and the one entered
                if was is None or status is was[2] or status is s.status:
                    self._status.set(int(status is s.status), {**flag, _STATUS: status.value})
            shown[s.flag_key] = now

    def _trigger_value(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._refresh()
        return [
            Observation(reading.value, {_KEY: ctl.key, _TRIGGER: name})
            for ctl, last in self._last_ticks()
            for name, reading in last.triggers.items()
            if reading.value is not None
        ]

    def _last_ticks(self) -> Iterator[tuple[Controller, TickResult]]:
        """Each flag's controller with the autopilot's last tick of it (none where this
        process does not run the policy, or before the flag's first tick)."""
        last_tick = getattr(self.rollout.policy, "last", None)
        if last_tick is None:
            return
        for ctl in self.rollout.controllers():
            last = last_tick(ctl.key)
            if last is not None:
                yield ctl, last


def _fleet_metrics(rollout: Rollout, provider: MeterProvider) -> FleetMetrics | None:
    """The fleet view's instruments, for a process in a fleet (``None`` otherwise)."""
    fleet = rollout.fleet
    if fleet is None:
        return None
    every_s = min((f.tick_s for f in rollout.plan.flags.values()), default=1.0)
    return FleetMetrics(
        rollout.plan,
        fleet.store,
        provider,
        lambda: [ctl.state for ctl in rollout.controllers()],
        every_s=every_s,
    )


def _reader_storages(provider: MeterProvider) -> Any:
    """The SDK's mapping of reader storages: replaced whole when a reader is added or removed
    (copy-on-write), so its identity tells that the readers changed. None outside the SDK,
    and for the API's proxy of the global provider until a real one is set (then, the real
    one's: the values set on the proxy's no-op instruments are set again)."""
    provider = getattr(provider, "_real_meter_provider", None) or provider
    consumer = getattr(provider, "_measurement_consumer", None)
    return getattr(consumer, "_reader_storages", None)
