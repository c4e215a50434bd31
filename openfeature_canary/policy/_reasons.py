"""Reasons in the cutover plan's words (spec §2, §7), whichever rule acted.

A decision names what broke (``reason``: ``p95_breach``, ``error_rate_breach``,
``ledger_mismatch``, ``guard_breach`` …), which rule acted (``rule``: ``gate:<test>``,
``guard:<event>``, ``trigger:<name>``, ``command:<command>``), and the numbers it judged
(``value`` against ``threshold``, in ``unit``: ``ms`` for latencies, ``fraction`` for rates,
0.005 = 0.5 %, ``relative drop`` for a guard). :func:`explain` turns
what the policy decided into those fields once, in the core, so the event, the reports, the
log line, ``status`` and the metrics read the same ones. Pure: no I/O, no clock.

The gate tests are mapped by the signal they judge (:data:`GATE_SIGNALS`, then
:data:`SIGNAL_REASONS`): a test this table does not know is mapped by its line's signal
(``numbers["signal"]``) or, failing that, by the words of its name; ``gate_no_go`` never
reaches an operator.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from openfeature_canary.plan import FlagPlan
from openfeature_canary.plan._signals import MS_SIGNALS, RATE_SIGNALS
from openfeature_canary.state import Number

__all__ = [
    "GATE_SIGNALS",
    "GUARD_BREACH",
    "OPERATOR",
    "PLAN_REASONS",
    "SIGNAL_REASONS",
    "Explained",
    "explain",
    "operator_id",
    "reason_of_test",
    "unit_of",
]

#: The reason of every decision an operator's command made.
OPERATOR: Final = "operator"

#: The signal each gate test judges. A new gate test gets a row here (DECISIONS' tests are
#: mapped through this table only); an unknown one falls back on its numbers' ``signal``.
GATE_SIGNALS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "error_line": "error_rate",
        "error_ratio": "error_rate",
        "p95_line": "latency_p95_ms",
        "p99_line": "latency_p99_ms",
        "latency_tail": "latency_p95_ms",
        "latency_rank": "latency_p95_ms",  # the rank test of earlier states' logs
    }
)

#: The cutover plan's reason for a breach of each signal a gate judges.
SIGNAL_REASONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "error_rate": "error_rate_breach",
        "latency_p50_ms": "p95_breach",
        "latency_p95_ms": "p95_breach",
        "latency_p99_ms": "p99_breach",
        "event_loop_lag_ms": "event_loop_lag",
        "ledger_mismatches": "ledger_mismatch",
    }
)

#: The reason of a breached guard (a business metric from ``track()``).
GUARD_BREACH: Final = "guard_breach"

#: Every reason an automatic rollback can give besides a trigger's own name (a metrics label
#: must stay a small set).
PLAN_REASONS: Final = frozenset({*SIGNAL_REASONS.values(), "signal_source_error", GUARD_BREACH})

#: The gates' decisions on the information a stage gathered (go, extend, pause).
_INFORMATION: Final = frozenset({"gate_passed", "gate_inconclusive", "too little information"})

#: Decision reasons of the gates that end a stage (the breach reasons are mapped instead).
_NO_GO: Final = "gate_no_go"


@dataclass(frozen=True)
class Explained:
    """A decision in the plan's words: ``reason``, ``rule`` and the numbers with ``value``,
    ``threshold`` and ``unit`` filled in."""

    reason: str
    rule: str
    numbers: Mapping[str, Number]


def operator_id(name: str | None = None) -> str:
    """Who an operator's command is by: ``operator:<name>``, by default the login name.

    >>> operator_id("alice")
    'operator:alice'
    """
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):  # no login name (a container without a passwd entry)
            name = "unknown"
    return name if name.startswith("operator:") else f"operator:{name}"


def unit_of(signal: str | None) -> str:
    """The unit a signal's values are in: ``ms``, ``fraction`` or ``""`` (a count).

    >>> unit_of("latency_p95_ms"), unit_of("error_rate"), unit_of("ledger_mismatches")
    ('ms', 'fraction', '')
    """
    if signal is None:
        return ""
    if signal in MS_SIGNALS or signal.endswith("_ms"):
        return "ms"
    return "fraction" if signal in RATE_SIGNALS else ""


def reason_of_test(test: str, signal: str | None = None) -> str:
    """The plan's reason for a breached gate test, by the signal it judges.

    >>> reason_of_test("error_ratio"), reason_of_test("p99_line")
    ('error_rate_breach', 'p99_breach')
    >>> reason_of_test("slow_share_new", "latency_p95_ms"), reason_of_test("odd_5xx_test")
    ('p95_breach', 'error_rate_breach')
    """
    if test.startswith("guard:"):
        return GUARD_BREACH
    judged = GATE_SIGNALS.get(test) or signal
    if judged is not None and judged in SIGNAL_REASONS:
        return SIGNAL_REASONS[judged]
    words = f"{test} {judged or ''}".lower()
    if any(w in words for w in ("error", "5xx", "fail")):
        return "error_rate_breach"
    if "p99" in words:
        return "p99_breach"
    if any(w in words for w in ("p95", "p50", "latency", "slow", "rank")):
        return "p95_breach"
    return f"{test}_breach"


def explain(flag: FlagPlan, reason: str, numbers: Mapping[str, Number]) -> Explained:
    """What the policy decided (its ``reason`` and ``numbers``) in the plan's words."""
    nums = dict(numbers)
    test = nums.get("test")
    if reason.startswith(_NO_GO) and isinstance(test, str):
        if reason != _NO_GO:  # "gate_no_go: the baseline breaches the line too"
            nums["note"] = reason.partition(": ")[2]
        signal = nums.get("signal")
        return _gate(test, signal if isinstance(signal, str) else None, nums)
    trigger = nums.get("trigger")
    if isinstance(trigger, str):
        return _trigger(flag, reason, trigger, nums)
    if reason in _INFORMATION:
        return _information(flag, reason, nums)
    leaning = nums.get("leaning")
    if isinstance(leaning, str):  # a test half-way to its boundary holds the stage
        rule = leaning if leaning.startswith("guard:") else f"gate:{leaning}"
        return Explained(reason, rule, nums)
    if "baseline quiet" in reason:  # stage 0's gate: no trigger breaches on the baseline
        nums.update(value=0, threshold=0, unit="breaching triggers")
        return Explained(reason, "gate:baseline_quiet", nums)
    return Explained(reason, "", nums)


def _gate(test: str, signal: str | None, nums: dict[str, Number]) -> Explained:
    """A breached gate test: value and threshold in the signal's unit, never null."""
    if test.startswith("guard:"):
        # A guard: the canary's relative change the wrong way against the guard's max_drop.
        value = _number(nums.get("value"))
        nums.update(value=0.0 if value is None else value, unit="relative drop")
        return Explained(GUARD_BREACH, test, nums)
    judged = GATE_SIGNALS.get(test) or signal
    reason = reason_of_test(test, signal)
    unit = unit_of(judged) or ("ms" if reason in ("p95_breach", "p99_breach") else "fraction")
    value, threshold = _number(nums.get("value")), _number(nums.get("threshold"))
    if value is None or threshold is None or signal is None:
        # A test of the canary against the baseline (a ratio, a rank): what it judged, in the
        # signal's unit, is the canary's value against the baseline's (or the stage's line).
        nums.update(ratio=nums.get("estimate"), ratio_threshold=nums.get("null"))
        if unit == "ms":
            value = _number(nums.get("observed_p95_ms"))
            base = _number(nums.get("baseline_p95_ms"))
            line = _number(nums.get("planned_p95_ms"))
        else:
            value = _number(nums.get("observed_error_rate"))
            base = _number(nums.get("baseline_error_rate"))
            line = _number(nums.get("planned_error_rate"))
            margin = _number(nums.get("null"))
            if base is not None and margin is not None and test == "error_ratio":
                base *= margin  # the ratio test's line: margin x the baseline's rate
        threshold = base if base is not None else line
        nums["threshold_of"] = "baseline" if base is not None else "line"
    nums.update(
        value=0.0 if value is None else value,
        threshold=0.0 if threshold is None else threshold,
        unit=unit,
    )
    return Explained(reason, f"gate:{test}", nums)


def _trigger(flag: FlagPlan, reason: str, trigger: str, nums: dict[str, Number]) -> Explained:
    """A trigger's decision: its own name (the plan's), its reading against its threshold."""
    signal = nums.get("signal")
    if reason == "signal_source_error":
        # The rule that acted is the source's: failing for this long against on_error's limit.
        nums.update(
            value=nums.get("failing_for_s", 0.0), threshold=flag.source_error_for_s, unit="s"
        )
    elif "occurrences" in nums:
        # The reading is how many samples lay beyond the trigger's line (kept as ``line``).
        nums.update(
            line=nums.get("threshold"),
            threshold=nums["occurrences"],
            unit="samples beyond the line",
        )
    else:
        nums["unit"] = unit_of(signal if isinstance(signal, str) else None)
    if nums.get("value") is None:
        nums["value"] = 0.0
    return Explained(reason, f"trigger:{trigger}", nums)


def _information(flag: FlagPlan, reason: str, nums: dict[str, Number]) -> Explained:
    """A gate's go (or too little information): the smallest power against the plan's."""
    powers = [
        _number(v) for k, v in nums.items() if k.startswith("power_") and not k.endswith("_3x")
    ]
    value = min((p for p in powers if p is not None), default=1.0)
    nums.update(value=round(value, 4), threshold=flag.decisions.power, unit="fraction")
    return Explained(reason, "gate:information", nums)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
