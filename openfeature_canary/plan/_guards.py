"""The plan's guards: business metrics the application reports with OpenFeature's ``track()``.

One ``[[flags.<key>.guards]]`` table per guarded event::

    [[flags.dataservice-read-canary.guards]]
    event = "provider_detail_opened"   # the name given to client.track(...)
    per = "dashboard_viewed"           # "request" (default): events per request served in the
                                       #   cohort; or another tracked event: events per that event
    measure = "rate"                   # "rate" (default), or "mean": the mean of details.value
    higher_is_better = true            # the direction users want (default true)
    max_drop = 0.05                    # the largest relative change the wrong way that is healthy
    detect_drop = 0.5                  # a stage goes once it could have caught this change

A guard is judged like a gate (``docs/guards.md``): canary against the baseline of the same
moment, sequentially, sharing the flag's false-rollback budget, acting with the stage's
``on_no_go`` and the reason ``guard_breach``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from openfeature_canary.plan._reader import Reader, show

__all__ = [
    "DEFAULT_DETECT_DROP",
    "EVENT_NAME",
    "PER_REQUEST",
    "Guard",
    "Measure",
    "parse_guards",
]

Measure = Literal["rate", "mean"]

#: ``per`` for a rate per request served in the cohort (the requests the gates count).
PER_REQUEST: Final = "request"
#: What an event name may be: it becomes a metric attribute and a ``rule`` (``guard:<event>``).
EVENT_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")
#: The change a stage must have been able to catch before it goes: a halving, the gross case
#: (as ``detect_error_rate`` is for the 5xx line); a 20 % drop is reported, not required.
DEFAULT_DETECT_DROP: Final = 0.5

_KEYS: Final = frozenset({"event", "per", "measure", "higher_is_better", "max_drop", "detect_drop"})


@dataclass(frozen=True)
class Guard:
    """One guarded event of a flag (see the module docstring for each key).

    ``max_drop`` and ``detect_drop`` are relative: 0.05 is "5 % lower than the baseline"
    (or higher, with ``higher_is_better = false``).
    """

    event: str
    per: str = PER_REQUEST
    measure: Measure = "rate"
    higher_is_better: bool = True
    max_drop: float = 0.05
    detect_drop: float = DEFAULT_DETECT_DROP

    @property
    def rule(self) -> str:
        """The rule's name in decisions: ``guard:<event>``."""
        return f"guard:{self.event}"

    @property
    def events(self) -> tuple[str, ...]:
        """The tracked events this guard reads: its own, and ``per`` when that is an event."""
        if self.measure == "rate" and self.per != PER_REQUEST:
            return (self.event, self.per)
        return (self.event,)

    @property
    def judged(self) -> str:
        """What is judged, e.g. ``provider_detail_opened per dashboard_viewed``."""
        if self.measure == "mean":
            return f"mean value of {self.event}"
        return f"{self.event} per {self.per}"

    @property
    def describe(self) -> str:
        """Human-readable, e.g. ``provider_detail_opened per dashboard_viewed, drop <= 5%``."""
        way = "drop" if self.higher_is_better else "rise"
        return f"{self.judged}, {way} <= {self.max_drop:.0%}"


def parse_guards(r: Reader, data: Any, path: str) -> tuple[Guard, ...]:
    """The ``guards`` array of a flag at ``path``; :class:`PlanError` naming the key otherwise."""
    guards: list[Guard] = []
    for i, item in enumerate(r.array(data, path)):
        guard = _guard(r, f"{path}[{i}]", item)
        if any(g.event == guard.event for g in guards):
            r.fail(f"{path}[{i}].event", f"{show(guard.event)} is guarded twice")
        guards.append(guard)
    return tuple(guards)


def _guard(r: Reader, path: str, data: Any) -> Guard:
    t = r.table(data, path, set(_KEYS))
    event = _event(r, t.get("event"), f"{path}.event")
    measure: Measure = r.choice(t, path, "measure", ("rate", "mean"), "rate")
    per = PER_REQUEST
    if "per" in t:
        if measure == "mean":
            r.fail(f"{path}.per", 'applies to measure = "rate" only (a mean is per event)')
        per = _event(r, t.get("per"), f"{path}.per")
        if per == event:
            r.fail(f"{path}.per", f"must differ from event ({show(event)})")
    max_drop = _fraction(r, t, path, "max_drop", 0.05)
    detect = _fraction(r, t, path, "detect_drop", DEFAULT_DETECT_DROP)
    if detect <= max_drop:
        r.fail(
            f"{path}.detect_drop",
            f"must be greater than max_drop ({max_drop:g}): the change a stage must be able "
            f"to catch lies beyond what counts as healthy, got {detect:g}",
        )
    return Guard(
        event=event,
        per=per,
        measure=measure,
        higher_is_better=r.bool_(t, path, "higher_is_better", True),
        max_drop=max_drop,
        detect_drop=detect,
    )


def _event(r: Reader, value: Any, path: str) -> str:
    if value is None:
        r.fail(path, "is required")
    if not isinstance(value, str) or not EVENT_NAME.fullmatch(value):
        r.fail(
            path,
            "must be an event name (a letter, then up to 63 letters, digits, '_', '.', ':' "
            f"or '-'), got {show(value)}",
        )
    return value


def _fraction(r: Reader, t: Any, path: str, key: str, default: float) -> float:
    value = r.number(t, path, key)
    if value is None:
        return default
    if not 0.0 < value < 1.0:
        r.fail(f"{path}.{key}", f"must be a relative change in (0, 1), got {value:g}")
    return value
