"""The controller's own metrics (spec §7), on the application's MeterProvider.

Gauges are observable (read at collection time from the controllers' states and the last
tick's readings), so they cost nothing between scrapes:

- ``canary.rollout.percent`` / ``canary.rollout.stage``: per ``feature_flag.key``;
- ``canary.rollout.status``: 1 for the current status, 0 for the others
  (attribute ``canary.rollout.status``), so a dashboard can graph each status;
- ``canary.trigger.value`` / ``canary.trigger.threshold``: per flag and ``canary.trigger.name``;
- ``canary.rollbacks``: a counter per flag and ``canary.trigger.name`` (the trigger, ``gate_no_go``,
  ``signal_source_error``, or ``operator`` for an operator's free-text reason).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter_provider

from openfeature_canary.state import RolloutState, Status

if TYPE_CHECKING:
    from openfeature_canary.policy._rollout import Rollout

__all__ = ["RolloutMetrics"]

_KEY = "feature_flag.key"
_TRIGGER = "canary.trigger.name"


class RolloutMetrics:
    """Registers the controller's instruments for ``rollout`` on ``meter_provider``; the
    rollout's pipeline calls :meth:`count_transition` (step 5) for its own transitions."""

    def __init__(self, rollout: Rollout, meter_provider: MeterProvider | None = None) -> None:
        self.rollout = rollout
        meter = (meter_provider or get_meter_provider()).get_meter("openfeature_canary.controller")
        meter.create_observable_gauge(
            "canary.rollout.percent", [self._percent], unit="%", description="Served percentage"
        )
        meter.create_observable_gauge(
            "canary.rollout.stage", [self._stage], description="Current stage (0 = pending)"
        )
        meter.create_observable_gauge(
            "canary.rollout.status", [self._status], description="1 for the current status"
        )
        meter.create_observable_gauge(
            "canary.trigger.value", [self._trigger_value], description="Last trigger reading"
        )
        meter.create_observable_gauge(
            "canary.trigger.threshold", [self._trigger_threshold], description="Trigger threshold"
        )
        self._rollbacks = meter.create_counter(
            "canary.rollbacks", description="Rollbacks to 0 %, by flag and trigger"
        )
        self._reasons = frozenset(
            {t.name for f in rollout.plan.flags.values() for t in f.triggers}
            | {"gate_no_go", "signal_source_error"}
        )

    def count_transition(self, old: RolloutState, new: RolloutState) -> None:
        """Count a rollback (once per transition, in the process that made it)."""
        if new.status is Status.ROLLED_BACK and old.status is not Status.ROLLED_BACK:
            # Operators write free text as a reason; a label must stay a small set.
            trigger = new.reason if new.reason in self._reasons else "operator"
            self._rollbacks.add(1, {_KEY: new.flag_key, _TRIGGER: trigger})

    def _states(self) -> Iterable[RolloutState]:
        return (c.state for c in self.rollout.controllers())

    def _percent(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.percent, {_KEY: s.flag_key}) for s in self._states()]

    def _stage(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.stage, {_KEY: s.flag_key}) for s in self._states()]

    def _status(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                int(s.status is status), {_KEY: s.flag_key, "canary.rollout.status": status.value}
            )
            for s in self._states()
            for status in Status
        ]

    def _trigger_value(self, _options: CallbackOptions) -> Iterable[Observation]:
        out: list[Observation] = []
        last_tick = getattr(self.rollout.policy, "last", None)  # the autopilot's readings
        if last_tick is None:
            return out
        for ctl in self.rollout.controllers():
            last = last_tick(ctl.key)
            if last is None:
                continue
            for name, reading in last.triggers.items():
                if reading.value is not None:
                    out.append(Observation(reading.value, {_KEY: ctl.key, _TRIGGER: name}))
        return out

    def _trigger_threshold(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(t.threshold, {_KEY: ctl.key, _TRIGGER: t.name})
            for ctl in self.rollout.controllers()
            for t in ctl.flag.triggers
        ]
