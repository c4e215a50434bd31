"""``track()``: a tracked event counted in the cohort its unit is in, for each guarded flag.

The cohort is found exactly as an evaluation finds it (the same answers snapshot, the same
bucketing unit and hasher), so a unit that got the new path counts for the canary. Only flags
whose guards read the event (``FlagPlan.tracked_events()``) and that serve a live split
(0 < percent < 100, holdback included) record it: an event no guard reads is not recorded at
all (the metric's cardinality stays bounded by the plan). Nothing here raises into the
application: what cannot be attributed is dropped and counted by reason
(``canary.tracking.dropped``), said once per process in the log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from openfeature.contrib.provider.canary._answers import Answers
from opentelemetry.metrics import MeterProvider

from openfeature_canary.instrumentation._tracking import TrackingRecorder, tracking_recorder
from openfeature_canary.plan import RolloutPlan

__all__ = ["Tracker", "tracker_for"]


def _value(details: Any) -> tuple[float | None, bool]:
    """The event's value if it is a finite number >= 0, and whether one was given at all."""
    raw = getattr(details, "value", None)
    if raw is None:
        return None, False
    if type(raw) is bool or not isinstance(raw, int | float):
        return None, True
    try:
        value = float(raw)
    except OverflowError:  # an int too large for a float
        return None, True
    if not math.isfinite(value) or value < 0:
        return None, True
    return value, True


class Tracker:
    """Attributes tracked events to cohorts; one per provider (built from its plan)."""

    __slots__ = ("_by_event", "_recorder", "live")

    def __init__(self, plan: RolloutPlan, recorder: TrackingRecorder) -> None:
        by_event: dict[str, list[str]] = {}
        for key, flag in plan.flags.items():
            for event in sorted(flag.tracked_events()):
                by_event.setdefault(event, []).append(key)
        self._by_event = {event: tuple(keys) for event, keys in by_event.items()}
        self._recorder = recorder
        #: True between ``initialize`` and ``shutdown``: events outside are dropped.
        self.live = False

    @property
    def events(self) -> frozenset[str]:
        """Every event name some flag's guards read."""
        return frozenset(self._by_event)

    def track(
        self, answers: Mapping[str, Answers], event: object, context: Any, details: Any
    ) -> None:
        """Record ``event`` for every guarded flag under a live split; never raises."""
        if type(event) is not str:
            return  # not an event name any guard can read
        flags = self._by_event.get(event)
        if flags is None:
            return  # no guard reads it: not recorded
        recorder = self._recorder
        try:
            if not self.live:
                recorder.drop("not_ready")
                return
            value, given = _value(details)
            dropped_value = given and value is None
            recorded = False
            for key in flags:
                outcome = self._attribute(answers.get(key), context)
                if outcome is None:
                    continue
                if outcome in ("no_unit", "invalid_unit"):
                    recorder.drop(outcome)
                    continue
                recorder.record(key, outcome, event, value)
                recorded = True
            if dropped_value and recorded:
                recorder.drop("invalid_value")
        except Exception:  # never into the caller: the event is lost, and said so
            recorder.drop("error")

    @staticmethod
    def _attribute(answers: Answers | None, context: Any) -> str | None:
        """The variant the context's unit gets (``on``/``off``), ``None`` when the flag serves
        no live split, or the drop reason (``no_unit``, ``invalid_unit``)."""
        if answers is None or answers.fixed is not None:
            return None  # 0 %, 100 % without holdback, rolled back, unavailable
        if context is None:
            return "no_unit"
        if answers.by_key:
            unit = getattr(context, "targeting_key", None)
        else:
            attributes = getattr(context, "attributes", None)
            unit = attributes.get(answers.view.bucket_by) if attributes is not None else None
        if unit is None or unit == "":
            return "no_unit"
        if type(unit) is not str and (type(unit) is bool or not isinstance(unit, int | float)):
            return "invalid_unit"
        try:
            slot = answers.bucket(unit)  # checks text before hashing: never a lone surrogate
        except ValueError:
            return "invalid_unit"
        return "on" if slot < answers.view.basis_points else "off"


def tracker_for(plan: RolloutPlan, meter_provider: MeterProvider) -> Tracker | None:
    """The tracker of a provider serving ``plan``, recording on ``meter_provider``; ``None``
    when no flag has guards (``track()`` then records nothing and costs nothing)."""
    if not any(flag.guards for flag in plan.flags.values()):
        return None
    return Tracker(plan, tracking_recorder(meter_provider))
