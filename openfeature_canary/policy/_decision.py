"""The policy's values: what a tick read (:class:`Readings`), what it remembers between ticks
(:class:`Memory`) and what it decided (:class:`Decision`, with its :class:`Action`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from openfeature_canary.evidence import StageEvidence
from openfeature_canary.signals._counts import CountsReading
from openfeature_canary.state import Number, WindowRecord

__all__ = ["Action", "Decision", "Memory", "Reading", "Readings"]


class Reading(Protocol):
    """What the policy needs of a signal reading (``signals.SignalReading`` fits)."""

    @property
    def value(self) -> float | None: ...

    @property
    def n(self) -> int: ...

    @property
    def error(self) -> str | None: ...


class Action(StrEnum):
    """The actions a decision can take (their values are persisted in the decision log and
    shown in logs and reports)."""

    HOLD = "hold"
    ADVANCE = "advance"
    COMPLETE = "complete"
    EXTEND = "extend"
    PAUSE = "pause"
    ROLLBACK = "rollback"
    START = "start"


@dataclass(frozen=True)
class Readings:
    """Everything the shell read for one tick.

    ``triggers``: per trigger, its reading; ``baselines``: the baseline twin of each trigger
    with ``if_baseline_breaches = "pause"``; ``counts``: both cohorts' counts since the stage's
    evidence was last brought up to date; ``windows``: the counts of each gate window due;
    ``tail``: once a stage's duration has passed, the counts of its trailing window (the one
    a go would leave behind).
    """

    triggers: Mapping[str, Reading] = field(default_factory=lambda: MappingProxyType({}))
    baselines: Mapping[str, Reading] = field(default_factory=lambda: MappingProxyType({}))
    counts: CountsReading | None = None
    windows: Mapping[int, CountsReading] = field(default_factory=lambda: MappingProxyType({}))
    tail: CountsReading | None = None


@dataclass(frozen=True)
class Memory:
    """What the policy remembers between ticks (not persisted: a restart re-arms ``for``).

    ``breach_since``: when each sustained trigger's current breach began; ``breach_ticks``:
    tick times at which an ``occurrences`` trigger breached; ``error_since``: when each
    trigger's signal source started failing; ``extended``: the stage already logged as extended.
    """

    breach_since: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    breach_ticks: Mapping[str, tuple[float, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    error_since: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    extended: int = -1


@dataclass(frozen=True)
class Decision:
    """What to do now, why, and the numbers behind it (Argo's verdict with a reason).

    ``action`` is one of :class:`Action`; ``reason`` names the trigger or gate
    (``p95_breach``, ``gate_no_go``, ``gate_passed`` …: the policy's own word, which
    :func:`~openfeature_canary.policy.transitions.from_decision` turns into the plan's, with
    the rule and who decided, on the decision-log entry); ``numbers`` carries value, threshold,
    window and n; ``windows`` are the gate windows recorded at this tick; ``evidence`` the
    stage's evidence with this tick's counts folded in (``None``: unchanged); ``memory`` is
    what the next tick must be given.
    """

    action: Action
    reason: str
    memory: Memory
    numbers: Mapping[str, Number] = field(default_factory=lambda: MappingProxyType({}))
    windows: tuple[WindowRecord, ...] = ()
    evidence: StageEvidence | None = None

    @property
    def changes_state(self) -> bool:
        """True when applying it changes the persisted state."""
        return self.action != Action.HOLD or bool(self.windows) or self.evidence is not None
