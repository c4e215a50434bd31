"""A process's cumulative snapshot as a small JSON record, and back (validated).

What a process publishes for the fleet's decider (:mod:`._fleet`): requests per flag and cohort
with their 5xx count and bucket counts per layout, the event-loop lag histogram, the counters,
(when any 5xx was logged with its unit) each cohort's log of erroring units: its total and
its newest entries, hashed (``unit_digest``; never the raw unit), at most ``UNIT_LOG_CAP``,
and (when ``track()`` recorded any) the tracked events' totals per flag, cohort and event.
:func:`snapshot_from_record` raises only ``ValueError``, naming the path of the first bad
field, whatever the record holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from openfeature_canary._validate import _show
from openfeature_canary.evidence import Tracked
from openfeature_canary.instrumentation import UnitLog
from openfeature_canary.instrumentation._units import UNIT_LOG_CAP
from openfeature_canary.signals._snapshots import (
    LEDGER_MISMATCHES,
    TELEMETRY_ACCEPTED,
    TELEMETRY_SENT,
    Bounds,
    CohortKey,
    CohortTotals,
    Counts,
    Snapshot,
)
from openfeature_canary.signals._tracked import TrackedKey

__all__ = [
    "RECORD_FORMAT",
    "TRACKED_CAP",
    "TRIGGERS_CAP",
    "Layout",
    "TriggerReading",
    "snapshot_from_record",
    "snapshot_record",
    "trigger_readings",
    "triggers_record",
]

#: The record layout's version: a decider refuses records of another one (a mixed rollout).
RECORD_FORMAT: Final = 1
#: No count can be larger: JSON allows any integer, float conversion of a larger one overflows.
_MAX_COUNT: Final = 2**63 - 1
_COUNTERS: Final = frozenset((LEDGER_MISMATCHES, TELEMETRY_ACCEPTED, TELEMETRY_SENT))
#: At most this many trigger readings in one record (a plan has a few triggers per flag): a
#: record is read by every process at every round, so its size stays bounded.
TRIGGERS_CAP: Final = 512
#: At most this many tracked series (flag, cohort, event) in one record: ``track()`` records
#: only the events of a plan's guards, a few per flag.
TRACKED_CAP: Final = 4096
#: A flag key or trigger name longer than this is not one a plan accepts.
_NAME_CAP: Final = 256


@dataclass(frozen=True)
class TriggerReading:
    """The decider's last reading of one trigger: ``value`` in the signal's unit (``None``: no
    data), ``breached`` against the trigger's threshold, ``at`` the rollout clock's time read."""

    value: float | None
    breached: bool
    at: float


TriggerKey = tuple[str, str]

Layout = tuple[Bounds, Counts]


def snapshot_record(snapshot: Snapshot) -> dict[str, Any]:
    """A local snapshot as a JSON-safe record (requests per flag/variant with errors and
    (bounds, counts) per layout; lag; counters; no problems, no time).

    >>> from types import MappingProxyType as M
    >>> snap = Snapshot(5.0, M({}), M({(100.0,): (3, 1)}), M({}))
    >>> snapshot_record(snap)["lag"]
    [{'bounds': [100.0], 'counts': [3, 1]}]
    """
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "requests": [
            {
                "flag": flag,
                "variant": variant,
                "errors": totals.errors,
                "hist": [_layout_record(b, c) for b, c in totals.hist],
            }
            for (flag, variant), totals in snapshot.requests.items()
        ],
        "lag": [_layout_record(b, c) for b, c in snapshot.lag.items()],
        "counters": [
            {"name": name, "flag": flag, "value": value}
            for (name, flag), value in snapshot.counters.items()
        ],
    }
    if snapshot.units:  # optional: a record without it has no unit known
        record["units"] = [
            {"flag": flag, "variant": variant, "total": log.total, "recent": list(log.recent)}
            for (flag, variant), log in snapshot.units.items()
        ]
    if snapshot.tracked:  # optional: a record without it tracked nothing
        record["tracked"] = [
            {"flag": flag, "variant": variant, "event": event, **totals.to_dict()}
            for (flag, variant, event), totals in snapshot.tracked.items()
        ]
    return record


def _layout_record(bounds: Bounds, counts: Counts) -> dict[str, Any]:
    return {"bounds": list(bounds), "counts": list(counts)}


def snapshot_from_record(data: Any) -> Snapshot:
    """Inverse of :func:`snapshot_record` (``t = 0.0``).

    Raises ``ValueError`` naming the path of the first bad field (``record.requests[2].hist[0]
    .counts: …``), never another exception, whatever ``data`` is.
    """
    top = _object(
        data, "record", ("format", "requests", "lag", "counters"), ("units", "triggers", "tracked")
    )
    if top["format"] != RECORD_FORMAT or isinstance(top["format"], bool):
        raise ValueError(
            f"record.format: {_shown(top['format'])} is not the supported format {RECORD_FORMAT}"
        )
    requests: dict[CohortKey, CohortTotals] = {}
    for i, item in enumerate(_array(top["requests"], "record.requests")):
        path = f"record.requests[{i}]"
        cohort, totals = _cohort(item, path)
        if cohort in requests:
            raise ValueError(f"{path}: flag {cohort[0]!r} variant {cohort[1]!r} appears twice")
        requests[cohort] = totals
    lag = dict(_layouts(top["lag"], "record.lag"))
    counters: dict[tuple[str, str], float] = {}
    for i, item in enumerate(_array(top["counters"], "record.counters")):
        path = f"record.counters[{i}]"
        entry = _object(item, path, ("name", "flag", "value"))
        name = _string(entry["name"], f"{path}.name")
        if name not in _COUNTERS:
            raise ValueError(f"{path}.name: {name!r} is not one of {sorted(_COUNTERS)}")
        key = (name, _string(entry["flag"], f"{path}.flag"))
        if key in counters:
            raise ValueError(f"{path}: counter {name!r} flag {key[1]!r} appears twice")
        counters[key] = _number(entry["value"], f"{path}.value")
    units = _unit_logs(top.get("units", []), "record.units")
    tracked = _tracked(top.get("tracked", []), "record.tracked")
    _triggers(top.get("triggers", []))  # validated here too: a bad record is refused whole
    return Snapshot(
        0.0,
        MappingProxyType(requests),
        MappingProxyType(lag),
        MappingProxyType(counters),
        units=MappingProxyType(units),
        tracked=MappingProxyType(tracked),
    )


def triggers_record(readings: Mapping[TriggerKey, TriggerReading]) -> list[dict[str, Any]]:
    """The decider's trigger readings as the record's optional ``triggers`` list.

    >>> triggers_record({("f", "p95_breach"): TriggerReading(120.0, False, 30.0)})
    [{'flag': 'f', 'trigger': 'p95_breach', 'value': 120.0, 'breached': 0, 'at': 30.0}]
    """
    return [
        {"flag": flag, "trigger": name, "value": r.value, "breached": int(r.breached), "at": r.at}
        for (flag, name), r in readings.items()
    ]


def trigger_readings(data: Any) -> dict[TriggerKey, TriggerReading]:
    """The trigger readings a record carries (none: an empty dict), per (flag, trigger).

    Raises ``ValueError`` naming the first bad field (``record.triggers[0].value: …``).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"record: expected an object, got {type(data).__name__}")
    return _triggers(data.get("triggers", []))


def _triggers(value: Any) -> dict[TriggerKey, TriggerReading]:
    items = _array(value, "record.triggers")
    if len(items) > TRIGGERS_CAP:
        raise ValueError(f"record.triggers: {len(items)} readings (at most {TRIGGERS_CAP})")
    out: dict[TriggerKey, TriggerReading] = {}
    for i, item in enumerate(items):
        where = f"record.triggers[{i}]"
        entry = _object(item, where, ("flag", "trigger", "value", "breached", "at"))
        key = (_name(entry["flag"], f"{where}.flag"), _name(entry["trigger"], f"{where}.trigger"))
        if key in out:
            raise ValueError(f"{where}: flag {key[0]!r} trigger {key[1]!r} appears twice")
        reading = entry["value"]
        if reading is not None:
            reading = _finite(reading, f"{where}.value")
        breached = entry["breached"]
        if breached not in (0, 1) or isinstance(breached, bool):
            raise ValueError(f"{where}.breached: {_shown(breached)} is not 0 or 1")
        if breached and reading is None:
            raise ValueError(f"{where}.breached: 1 without a value")
        out[key] = TriggerReading(reading, bool(breached), _finite(entry["at"], f"{where}.at"))
    return out


def _name(value: Any, path: str) -> str:
    name = _string(value, path)
    if not 0 < len(name) <= _NAME_CAP:
        raise ValueError(f"{path}: expected 1 to {_NAME_CAP} characters, got {len(name)}")
    return name


def _finite(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: expected a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > _MAX_COUNT:
        raise ValueError(f"{path}: {_shown(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{path}: {value} is not a finite number")
    return number


def _unit_logs(value: Any, path: str) -> dict[CohortKey, UnitLog]:
    logs: dict[CohortKey, UnitLog] = {}
    for i, item in enumerate(_array(value, path)):
        where = f"{path}[{i}]"
        entry = _object(item, where, ("flag", "variant", "total", "recent"))
        cohort = (
            _string(entry["flag"], f"{where}.flag"),
            _string(entry["variant"], f"{where}.variant"),
        )
        if cohort in logs:
            raise ValueError(f"{where}: flag {cohort[0]!r} variant {cohort[1]!r} appears twice")
        total = _count(entry["total"], f"{where}.total")
        recent = _array(entry["recent"], f"{where}.recent")
        if len(recent) > min(total, UNIT_LOG_CAP):
            raise ValueError(
                f"{where}.recent: {len(recent)} entries for a total of {total} "
                f"(at most {UNIT_LOG_CAP})"
            )
        for j, unit in enumerate(recent):
            if unit is not None and not (isinstance(unit, str) and 0 < len(unit) <= 64):
                raise ValueError(f"{where}.recent[{j}]: expected a unit digest or null")
        logs[cohort] = UnitLog(total, tuple(recent))
    return logs


def _tracked(value: Any, path: str) -> dict[TrackedKey, Tracked]:
    items = _array(value, path)
    if len(items) > TRACKED_CAP:
        raise ValueError(f"{path}: {len(items)} tracked series (at most {TRACKED_CAP})")
    out: dict[TrackedKey, Tracked] = {}
    keys = ("flag", "variant", "event", "count", "valued", "total", "squares")
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        entry = _object(item, where, keys)
        key = (
            _name(entry["flag"], f"{where}.flag"),
            _name(entry["variant"], f"{where}.variant"),
            _name(entry["event"], f"{where}.event"),
        )
        if key in out:
            raise ValueError(f"{where}: flag {key[0]!r} variant {key[1]!r} event {key[2]!r} twice")
        count, valued = (
            _count(entry["count"], f"{where}.count"),
            _count(entry["valued"], f"{where}.valued"),
        )
        if valued > count:
            raise ValueError(f"{where}.valued: {valued} valued events but only {count} events")
        total = _number(entry["total"], f"{where}.total")
        out[key] = Tracked(count, valued, total, _number(entry["squares"], f"{where}.squares"))
    return out


def _cohort(item: Any, path: str) -> tuple[CohortKey, CohortTotals]:
    entry = _object(item, path, ("flag", "variant", "errors", "hist"))
    cohort = (_string(entry["flag"], f"{path}.flag"), _string(entry["variant"], f"{path}.variant"))
    hist = tuple(_layouts(entry["hist"], f"{path}.hist"))
    errors = _count(entry["errors"], f"{path}.errors")
    total = sum(sum(counts) for _, counts in hist)
    if errors > total:
        raise ValueError(f"{path}.errors: {errors} errors but only {total} requests")
    return cohort, CohortTotals(errors, hist)


def _layouts(value: Any, path: str) -> list[Layout]:
    layouts: list[Layout] = []
    for i, item in enumerate(_array(value, path)):
        where = f"{path}[{i}]"
        entry = _object(item, where, ("bounds", "counts"))
        bounds = _bounds(entry["bounds"], f"{where}.bounds")
        if any(bounds == seen for seen, _ in layouts):
            raise ValueError(f"{where}.bounds: the same bucket layout appears twice")
        raw = _array(entry["counts"], f"{where}.counts")
        if len(raw) != len(bounds) + 1:
            raise ValueError(
                f"{where}.counts: {len(raw)} counts for {len(bounds)} bounds "
                f"(expected {len(bounds) + 1})"
            )
        layouts.append(
            (bounds, tuple(_count(c, f"{where}.counts[{j}]") for j, c in enumerate(raw)))
        )
    return layouts


def _object(
    value: Any, path: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    extra = [_shown(k) for k in value if k not in keys and k not in optional]
    if extra:
        raise ValueError(f"{path}: unexpected {', '.join(sorted(extra))}")
    return value


def _array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected a list, got {type(value).__name__}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{path}: expected a string, got {type(value).__name__}")
    return value


def _count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: expected a whole number, got {type(value).__name__}")
    if not 0 <= value <= _MAX_COUNT:
        raise ValueError(f"{path}: {_shown(value)} is not a count in [0, 2**63 - 1]")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: expected a number, got {type(value).__name__}")
    if isinstance(value, int) and value > _MAX_COUNT:
        raise ValueError(f"{path}: {_shown(value)}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{path}: {value} is not a finite, non-negative number")
    return number


def _bounds(value: Any, path: str) -> Bounds:
    bounds: list[float] = []
    for i, item in enumerate(_array(value, path)):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"{path}[{i}]: expected a number, got {type(item).__name__}")
        if isinstance(item, int) and abs(item) > _MAX_COUNT:
            raise ValueError(f"{path}[{i}]: {_shown(item)} for a bound")
        bound = float(item)
        if not math.isfinite(bound) or (bounds and bound <= bounds[-1]):
            raise ValueError(f"{path}[{i}]: {item} is not finite and above the previous bound")
        bounds.append(bound)
    return tuple(bounds)


def _shown(value: Any) -> str:
    return _show(value, literal=repr)
