"""The rollout plan: stages, gates and triggers per flag, loaded from TOML or JSON.

>>> plan = load_plan("examples/canary_plan.toml")          # doctest: +SKIP
>>> plan.flag("dataservice-read-canary").stages[0].percent  # doctest: +SKIP
5.0

Every value is a frozen dataclass. Validation is strict: an unknown key, a wrong type or a
broken rule raises :class:`PlanError` naming the file, the exact path and the rule, e.g.
``flags.dataservice-read-canary.stages[2].percent: must be greater than the previous stage (50)``.
"""

from openfeature_canary.errors import PlanError
from openfeature_canary.plan._decisions import DecisionRules
from openfeature_canary.plan._guards import Guard
from openfeature_canary.plan._loader import load_plan, parse_plan
from openfeature_canary.plan._model import (
    MIN_PERCENT,
    OPERATORS,
    FlagPlan,
    OnBaselineBreach,
    OnError,
    OnNoGo,
    Operator,
    ReportsConfig,
    RolloutPlan,
    Stage,
    TelemetryConfig,
    Trigger,
)

__all__ = [
    "MIN_PERCENT",
    "OPERATORS",
    "DecisionRules",
    "FlagPlan",
    "Guard",
    "OnBaselineBreach",
    "OnError",
    "OnNoGo",
    "Operator",
    "PlanError",
    "ReportsConfig",
    "RolloutPlan",
    "Stage",
    "TelemetryConfig",
    "Trigger",
    "load_plan",
    "parse_plan",
]
