"""The plan's ``[decisions]`` table: how much evidence the gates ask for (docs/decisions.md).

Given at the top of a plan for every flag, and per flag as ``[flags.<key>.decisions]``, which
overrides it key by key::

    [decisions]
    false_rollback_budget = 0.05   # chance that a gate rolls a healthy rollout back
    power = 0.99                   # a stage goes once it could have caught, with this power:
    detect_error_rate = 0.05       #   a 5xx share this high (default 5 %, or 3x a higher line)
    detect_slow_share = 0.25       #   this share of requests over a latency line
    error_ratio_margin = 1.25      # the canary may have up to 1.25x the baseline's 5xx share
    latency_ratio_margin = 2.0     # ... and up to 2x its share of requests over the P95 line
    latency_margin = 0.05          # 0.5 turns the latency comparison off (other values: no effect)
    holdback = 0                   # percent of units kept on the old path during the final stage
                                   #     (a live baseline: the comparisons judge the soak too)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from openfeature_canary.plan._reader import Reader

__all__ = ["DecisionRules", "parse_decisions"]

_KEYS: Final = frozenset(
    {
        "false_rollback_budget",
        "power",
        "detect_error_rate",
        "detect_slow_share",
        "error_ratio_margin",
        "latency_ratio_margin",
        "latency_margin",
        "holdback",
    }
)


@dataclass(frozen=True)
class DecisionRules:
    """How the gates of one flag weigh evidence (see the module docstring for each key).

    ``detect_error_rate`` ``None`` means the default per stage: 5 %, or three times the
    stage's 5xx line when that is higher.
    """

    false_rollback_budget: float = 0.05
    power: float = 0.99
    detect_error_rate: float | None = None
    detect_slow_share: float = 0.25
    error_ratio_margin: float = 1.25
    latency_ratio_margin: float = 2.0
    latency_margin: float = 0.05
    holdback: float = 0.0

    def detect_error_rate_for(self, line: float) -> float:
        """The 5xx share a stage with 5xx line ``line`` must have been able to catch."""
        if self.detect_error_rate is not None:
            return self.detect_error_rate
        return min(0.99, max(0.05, 3 * line))


#: (lowest, highest, lowest included, highest included) per key, and what it means.
_RANGES: Final[Mapping[str, tuple[float, float, bool, bool, str]]] = {
    "false_rollback_budget": (0.0, 0.5, False, True, "a probability in (0, 0.5]"),
    "power": (0.5, 1.0, True, False, "a probability in [0.5, 1)"),
    "detect_error_rate": (0.0, 1.0, False, False, "a rate in (0, 1)"),
    "detect_slow_share": (0.0, 1.0, False, False, "a share in (0, 1)"),
    "error_ratio_margin": (1.0, 1000.0, True, True, "a ratio in [1, 1000]"),
    "latency_ratio_margin": (1.0, 1000.0, True, True, "a ratio in [1, 1000]"),
    "latency_margin": (0.0, 0.5, True, True, "a probability margin in [0, 0.5] (0.5: off)"),
    "holdback": (0.0, 50.0, True, False, "a percent in [0, 50)"),
}


def parse_decisions(
    r: Reader, data: Any, path: str, parent: DecisionRules | None = None
) -> DecisionRules:
    """Read a ``decisions`` table at ``path`` over ``parent`` (the plan-wide rules)."""
    base = parent or DecisionRules()
    if data is None:
        return base
    t = r.table(data, path, set(_KEYS))
    values: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(DecisionRules)}
    for key in _KEYS & t.keys():
        value = r.number(t, path, key)
        assert value is not None
        low, high, low_in, high_in, meaning = _RANGES[key]
        inside = (value > low or (low_in and value == low)) and (
            value < high or (high_in and value == high)
        )
        if not inside:
            r.fail(f"{path}.{key}", f"must be {meaning}, got {value:g}")
        values[key] = float(value)
    return DecisionRules(**values)
