"""The plan's values: stages, gates, triggers and decisions per flag (frozen dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from openfeature_canary.errors import UnknownFlagError
from openfeature_canary.plan._decisions import DecisionRules
from openfeature_canary.plan._guards import Guard
from openfeature_canary.plan._signals import MS_SIGNALS, RATE_SIGNALS

__all__ = [
    "DEFAULT_MIN_EVENTS",
    "MIN_PERCENT",
    "OPERATORS",
    "FlagPlan",
    "OnBaselineBreach",
    "OnError",
    "OnNoGo",
    "Operator",
    "ReportsConfig",
    "RolloutPlan",
    "Stage",
    "TelemetryConfig",
    "Trigger",
]

Operator = Literal["above", "at_least", "below", "at_most"]
OnNoGo = Literal["rollback", "pause"]
OnError = Literal["rollback", "ignore"]
OnBaselineBreach = Literal["rollback", "pause"]

OPERATORS: Final[tuple[Operator, ...]] = ("above", "at_least", "below", "at_most")
#: The smallest stage percentage: traffic is split in basis points (0.01 %), so a smaller
#: share would serve 0 %.
MIN_PERCENT: Final = 0.01
#: A rate trigger needs at least this many events (5xx, rejections) in its window to breach:
#: one 5xx in 150 requests reads 0.67 %, which says nothing about a 0.5 % line.
DEFAULT_MIN_EVENTS: Final = 3


@dataclass(frozen=True)
class Stage:
    """One stage: traffic share, how long it is held, and its go/no-go gate.

    ``max_*`` are the stage's lines (``None`` means "not judged"), judged on the evidence the
    whole stage accumulates (docs/decisions.md); ``duration`` is the least time it is held;
    ``window`` is the unit of reporting (each window's numbers go to the decision log and the
    reports); ``on_no_go`` is what a line or comparison judged breached does.
    """

    percent: float
    duration_s: float
    window_s: float
    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    max_error_rate: float | None = None
    on_no_go: OnNoGo = "rollback"


@dataclass(frozen=True)
class Trigger:
    """A hard rollback trigger, checked at every tick at every stage.

    It breaches when ``signal <op> threshold`` (``op`` one of above, at_least, below, at_most).
    ``for_s`` makes it fire only when the breach is sustained that long (like a Prometheus
    alert's ``for``); ``occurrences`` makes it fire on the Nth breach within ``window_s``;
    neither means it fires at once. ``on_error`` says what a failing signal source does;
    ``if_baseline_breaches = "pause"`` pauses instead of rolling back when the baseline cohort
    breaches the same rule at that moment (the trouble is not the canary's).
    """

    name: str
    signal: str
    op: Operator
    threshold: float
    window_s: float = 60.0
    for_s: float | None = None
    occurrences: int = 1
    min_samples: int = 1
    on_error: OnError = "rollback"
    if_baseline_breaches: OnBaselineBreach = "rollback"
    min_events: int = DEFAULT_MIN_EVENTS

    def events(self, value: float, n: int) -> float | None:
        """The events behind a rate reading (``None``: not a rate signal, nothing to count).

        ``above``/``at_least`` count what the rate measures (``value * n``: 5xx for
        ``error_rate``); ``below``/``at_most`` count the rest (``(1 - value) * n``: the events
        ``telemetry_acceptance`` did not accept).
        """
        if self.signal not in RATE_SIGNALS:
            return None
        share = value if self.op in ("above", "at_least") else 1.0 - value
        return share * n

    def breached(self, value: float) -> bool:
        """True when ``value`` is on the wrong side of the threshold."""
        if self.op == "above":
            return value > self.threshold
        if self.op == "at_least":
            return value >= self.threshold
        if self.op == "below":
            return value < self.threshold
        return value <= self.threshold

    @property
    def rule(self) -> str:
        """Human-readable rule, e.g. ``latency_p95_ms > 150 for 5m``."""
        from openfeature_canary._format import format_duration

        symbol = {"above": ">", "at_least": "≥", "below": "<", "at_most": "≤"}[self.op]
        text = f"{self.signal} {symbol} {_num(self.threshold)}"
        if self.for_s:
            text += f" for {format_duration(self.for_s)}"
        if self.occurrences > 1:
            text += f", {self.occurrences} times within {format_duration(self.window_s)}"
        return text


@dataclass(frozen=True)
class FlagPlan:
    """Everything the plan says about one flag."""

    key: str
    stages: tuple[Stage, ...]
    triggers: tuple[Trigger, ...] = ()
    description: str = ""
    env_override: str | None = None
    bucket_by: str = "targetingKey"
    scheme: str = "flagd"
    tick_s: float = 10.0
    after: str | None = None
    dry_run: bool = False
    source_error_for_s: float = 60.0
    decisions: DecisionRules = field(default_factory=DecisionRules)
    guards: tuple[Guard, ...] = ()

    def tracked_events(self) -> frozenset[str]:
        """Every event name the flag's guards read (what ``track()`` records for it)."""
        return frozenset(name for guard in self.guards for name in guard.events)

    def stage(self, index: int) -> Stage:
        """Stage by its 1-based index (stage 0 is "pending", 0 %, and has no ``Stage``)."""
        if not 1 <= index <= len(self.stages):
            raise IndexError(f"{self.key}: stage {index} is not in 1..{len(self.stages)}")
        return self.stages[index - 1]

    def serving_percent(self, index: int) -> float:
        """What stage ``index`` serves: its percent, less the ``holdback`` in the final stage
        (a live baseline to compare with at 100 %; the flag serves 100 % once it completes)."""
        percent = self.stage(index).percent
        if index == len(self.stages) and self.decisions.holdback:
            return max(0.01, percent - self.decisions.holdback)
        return percent


@dataclass(frozen=True)
class TelemetryConfig:
    """Where rollout events go: ``POST {url}/telemetry/ingest``.

    ``url`` may be given directly or read from the environment variable ``url_env`` when the
    controller starts (so a secret URL never sits in the plan file).
    """

    app: str = "openfeature_canary"
    url: str | None = None
    url_env: str | None = None
    timeout_s: float = 5.0

    def resolve_url(self, environ: Mapping[str, str]) -> str | None:
        """The base URL, from ``url`` or from ``environ[url_env]``; ``None`` when unset."""
        if self.url:
            return self.url
        if self.url_env:
            return environ.get(self.url_env) or None
        return None


@dataclass(frozen=True)
class ReportsConfig:
    """Where ``canary_plan.md``, ``canary_results.md`` and ``canary_abort.md`` are written."""

    dir: str = "canary-reports"


@dataclass(frozen=True)
class RolloutPlan:
    """A whole plan: flags in file order, telemetry, reports, store and PromQL overrides."""

    flags: Mapping[str, FlagPlan]
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    store: str | None = None
    signals: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "<plan>"

    def flag(self, key: str) -> FlagPlan:
        """The flag's plan; :class:`UnknownFlagError` naming the known flags otherwise."""
        try:
            return self.flags[key]
        except KeyError:
            known = ", ".join(self.flags) or "none"
            raise UnknownFlagError(f"unknown flag {key!r} (plan has: {known})") from None

    def thresholds_ms(self) -> tuple[float, ...]:
        """Every millisecond threshold in the plan, sorted: they become histogram bounds."""
        values: set[float] = set()
        for flag in self.flags.values():
            for stage in flag.stages:
                values.update(v for v in (stage.max_p95_ms, stage.max_p99_ms) if v is not None)
            values.update(t.threshold for t in flag.triggers if t.signal in MS_SIGNALS)
        return tuple(sorted(values))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
