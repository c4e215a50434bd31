"""The rollout state of one flag: an immutable, versioned record with its decision log.

A state read back from a store is validated like the plan: :meth:`RolloutState.from_dict`
raises :class:`~openfeature_canary.errors.StateStoreError` naming the field and the rule
(``flags.x.percent: must be a number in [0, 100], got 500``), and
:func:`check_state_against_plan` checks what only the plan knows (the stage exists).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from openfeature_canary._validate import (
    _SCALARS,
    StrEnum,
    _array,
    _bad,
    _choice,
    _evidence,
    _finite,
    _integer,
    _join,
    _object,
    _percent,
    _show,
    _show_key,
    _text,
)
from openfeature_canary.errors import StateStoreError
from openfeature_canary.evidence import StageEvidence

if TYPE_CHECKING:
    from openfeature_canary.plan import FlagPlan

__all__ = [
    "LOG_LIMIT",
    "WINDOW_LIMIT",
    "LogEntry",
    "RolloutState",
    "Status",
    "Verdict",
    "WindowRecord",
    "check_state_against_plan",
]

#: How many decision-log entries a state keeps (the reports keep everything).
LOG_LIMIT: Final = 50

#: How many judged gate windows a state keeps (a 24 h stage of 15 min windows has 96).
WINDOW_LIMIT: Final = 100

Number = int | float | str | None


class Status(StrEnum):
    """Where a flag's rollout is. ``PENDING`` and ``ROLLED_BACK`` serve 0 %."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class LogEntry:
    """One decision: when, what was done, why, who decided, and the numbers behind it.

    ``reason`` speaks the cutover plan's words (``p95_breach``, ``error_rate_breach``,
    ``operator`` …); ``rule`` names the rule that acted (``gate:error_ratio``,
    ``trigger:p95_breach``, ``command:rollback``); ``by`` who decided (a process id such as
    ``host:pid:ab12cd34``, or ``operator:alice``). ``numbers`` carries e.g.
    ``{"value": 162.0, "threshold": 150, "unit": "ms", "window_s": 60, "n": 1204}``. An entry
    persisted before ``rule`` and ``by`` existed loads with both empty.
    """

    at: float
    action: str
    reason: str
    numbers: Mapping[str, Number] = field(default_factory=lambda: MappingProxyType({}))
    rule: str = ""
    by: str = ""

    @property
    def value(self) -> Number:
        """The number the rule judged (``numbers["value"]``; ``None`` when not logged)."""
        return self.numbers.get("value")

    @property
    def threshold(self) -> Number:
        """What ``value`` was judged against (``numbers["threshold"]``), in the same unit."""
        return self.numbers.get("threshold")

    @property
    def unit(self) -> str:
        """The unit of ``value`` and ``threshold`` (``ms``, ``fraction``, ``s`` …; ``""``)."""
        unit = self.numbers.get("unit")
        return unit if isinstance(unit, str) else ""

    def summary(self) -> str:
        """One line for people: action, reason, rule, value vs threshold, n, by.

        >>> LogEntry(1.0, "rollback", "p95_breach", {"value": 162.0, "threshold": 150,
        ...     "unit": "ms", "n": 1204}, rule="trigger:p95_breach", by="h:1").summary()
        'rollback: p95_breach (trigger:p95_breach) 162 ms vs 150 ms, n=1204, by h:1'
        """
        out = f"{self.action}: {self.reason or '-'}"
        if self.rule:
            out += f" ({self.rule})"
        value, threshold = self.value, self.threshold
        if value is not None or threshold is not None:
            unit = f" {self.unit}" if self.unit else ""
            out += f" {_short(value)}{unit} vs {_short(threshold)}{unit}"
        n = self.numbers.get("n")
        if n is not None:
            out += f", n={_short(n)}"
        note = self.numbers.get("note")
        if note:
            out += f", {note}"
        if self.by:
            out += f", by {self.by}"
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``rule`` and ``by`` only when set)."""
        return {
            "at": self.at,
            "action": self.action,
            "reason": self.reason,
            **({"rule": self.rule} if self.rule else {}),
            **({"by": self.by} if self.by else {}),
            "numbers": dict(self.numbers),
        }

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> LogEntry:
        """Inverse of :meth:`to_dict`; :class:`StateStoreError` naming ``path`` and the field
        when ``data`` is not a log entry (``numbers`` are evidence: any number, a string or
        null)."""
        t = _object(data, path)
        numbers = _object(t.get("numbers", {}), _join(path, "numbers"))
        for key, value in numbers.items():
            if type(value) not in _SCALARS and not isinstance(value, (int, float, str)):
                _bad(
                    f"{_join(path, 'numbers')}.{_show_key(key)}",
                    f"must be a number, a string or null, got {_show(value)}",
                )
        at, action, reason = t.get("at"), t.get("action"), t.get("reason", "")
        if not (type(at) is float and math.isfinite(at)):  # the common case first: it is
            at = _finite(t, path, "at")  # the store's hot path (50 entries a flag)
        if type(action) is not str:
            action = _text(t, path, "action")
        if type(reason) is not str:
            reason = _text(t, path, "reason", "")
        rule, by = t.get("rule", ""), t.get("by", "")
        if type(rule) is not str:
            rule = _text(t, path, "rule", "")
        if type(by) is not str:
            by = _text(t, path, "by", "")
        return cls(
            at=at,
            action=action,
            reason=reason,
            numbers=MappingProxyType(dict(numbers)),
            rule=rule,
            by=by,
        )


def _short(value: Number) -> str:
    """A number as people read it in a log line (``162``, ``0.0081``, ``-``)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Verdict(StrEnum):
    """A gate window's verdict, for the reports: ``pass`` when the window's interval lies within
    every line, ``fail`` when one lies beyond a line, ``inconclusive`` otherwise. Decisions rest
    on the stage's accumulated evidence, not on single windows."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class WindowRecord:
    """One judged gate window of the current stage, with the numbers behind its verdict."""

    index: int
    start: float
    end: float
    verdict: Verdict
    n: int
    p95_ms: float | None = None
    error_rate: float | None = None
    reason: str = ""
    error_low: float | None = None
    error_high: float | None = None
    baseline_n: int = 0
    baseline_p95_ms: float | None = None
    baseline_error_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "verdict": self.verdict.value,
            "n": self.n,
            "p95_ms": self.p95_ms,
            "error_rate": self.error_rate,
            "reason": self.reason,
            "error_low": self.error_low,
            "error_high": self.error_high,
            "baseline_n": self.baseline_n,
            "baseline_p95_ms": self.baseline_p95_ms,
            "baseline_error_rate": self.baseline_error_rate,
        }

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> WindowRecord:
        """Inverse of :meth:`to_dict`; :class:`StateStoreError` naming ``path`` and the field
        when ``data`` is not a window record."""
        t = _object(data, path)
        return cls(
            index=_integer(t, path, "index"),
            start=_finite(t, path, "start"),
            end=_finite(t, path, "end"),
            verdict=Verdict(_choice(t, path, "verdict", Verdict)),
            n=_integer(t, path, "n"),
            p95_ms=_evidence(t, path, "p95_ms"),
            error_rate=_evidence(t, path, "error_rate"),
            reason=_text(t, path, "reason", ""),
            error_low=_evidence(t, path, "error_low"),
            error_high=_evidence(t, path, "error_high"),
            baseline_n=_integer(t, path, "baseline_n") if "baseline_n" in t else 0,
            baseline_p95_ms=_evidence(t, path, "baseline_p95_ms"),
            baseline_error_rate=_evidence(t, path, "baseline_error_rate"),
        )


@dataclass(frozen=True)
class RolloutState:
    """Immutable state of one flag's rollout.

    ``stage`` is 0 while pending (0 %) and 1..N for the plan's stages; ``since`` is when the
    current stage (or status) began; ``version`` increases by one with every persisted change
    and is what a store's compare-and-set checks. ``log`` holds the last decisions, newest last;
    ``windows`` the judged gate windows of the current stage.
    """

    flag_key: str
    status: Status = Status.PENDING
    stage: int = 0
    percent: float = 0.0
    since: float = 0.0
    reason: str = ""
    version: int = 0
    log: tuple[LogEntry, ...] = ()
    windows: tuple[WindowRecord, ...] = ()
    #: An operator's command waiting for the process that runs the policy (``"start"``: a
    #: start asked for from a process without signals, carried out once the baseline is quiet).
    requested: str = ""
    #: What the current stage has gathered (running or paused; ``None`` otherwise).
    evidence: StageEvidence | None = None

    @property
    def last_decision(self) -> LogEntry | None:
        """The newest log entry, if any."""
        return self.log[-1] if self.log else None

    def entries_after(self, older: RolloutState) -> tuple[LogEntry, ...]:
        """The log entries this state added since ``older`` (a change may add none: a tick
        that only brought the stage's evidence up to date)."""
        if self.version <= older.version:
            return ()
        last = older.log[-1] if older.log else None
        for i in range(len(self.log) - 1, -1, -1):
            if self.log[i] is last or (last is not None and self.log[i] == last):
                return self.log[i + 1 :]
        return self.log

    def evolve(self, *entries: LogEntry, **changes: Any) -> RolloutState:
        """A new state with ``changes`` applied, the version bumped and ``entries`` logged."""
        log = (*self.log, *entries)[-LOG_LIMIT:]
        return replace(self, **changes, version=self.version + 1, log=log)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON stores."""
        return {
            "flag_key": self.flag_key,
            "status": self.status.value,
            "stage": self.stage,
            "percent": self.percent,
            "since": self.since,
            "reason": self.reason,
            "version": self.version,
            "log": [e.to_dict() for e in self.log],
            "windows": [w.to_dict() for w in self.windows],
            **({"requested": self.requested} if self.requested else {}),
            **({"evidence": self.evidence.to_dict()} if self.evidence is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> RolloutState:
        """Inverse of :meth:`to_dict`, validated: :class:`StateStoreError` naming ``path``
        (e.g. ``flags.x``), the field and the rule when ``data`` is not a state this engine
        could have written.

        The rules: ``status`` one of :class:`Status`; ``percent`` a number in [0, 100];
        ``stage`` and ``version`` integers ≥ 0; ``since`` and every time finite; ``stage`` and
        ``percent`` 0 while pending or rolled back, ``stage`` ≥ 1 otherwise; ``log`` and
        ``windows`` arrays of well-formed entries; ``requested`` empty or ``"start"``. Keys
        it does not know are ignored. What only the plan knows (that the stage exists) is
        :func:`check_state_against_plan`. Example message, for ``path="flags.f"``:
        ``flags.f.percent: must be a number in [0, 100], got 500``.
        """
        t = _object(data, path)
        status = Status(_choice(t, path, "status", Status))
        stage = _integer(t, path, "stage")
        percent = _percent(t, path)
        if status in (Status.PENDING, Status.ROLLED_BACK):
            if stage != 0:
                _bad(_join(path, "stage"), f"must be 0 while {status.value}, got {stage}")
            if percent != 0:
                _bad(
                    _join(path, "percent"), f"must be 0 while {status.value}, got {_show(percent)}"
                )
        elif stage < 1:
            _bad(_join(path, "stage"), f"must be at least 1 while {status.value}, got {stage}")
        requested = _text(t, path, "requested", "")
        if requested not in _REQUESTS:
            _bad(_join(path, "requested"), f"must be empty or 'start', got {_show(requested)}")
        return cls(
            flag_key=_text(t, path, "flag_key"),
            status=status,
            stage=stage,
            percent=percent,
            since=_finite(t, path, "since"),
            reason=_text(t, path, "reason", ""),
            version=_integer(t, path, "version"),
            log=tuple(
                LogEntry.from_dict(e, path=f"{_join(path, 'log')}[{i}]")
                for i, e in enumerate(_array(t, path, "log"))
            ),
            windows=tuple(
                WindowRecord.from_dict(w, path=f"{_join(path, 'windows')}[{i}]")
                for i, w in enumerate(_array(t, path, "windows"))
            ),
            requested=requested,
            evidence=None
            if t.get("evidence") is None
            else StageEvidence.from_dict(t["evidence"], path=_join(path, "evidence")),
        )


def check_state_against_plan(flag: FlagPlan, state: RolloutState, *, source: str = "") -> None:
    """Raise :class:`StateStoreError` when a stored ``state`` does not fit ``flag``'s plan.

    Call it where a state read from a store meets the plan (a store does not know the
    plan): the state must be this flag's, and its stage one of the plan's (0..N). A stage
    beyond the plan (the plan lost stages while the flag was running) would otherwise serve a
    percentage the plan no longer has. ``source`` (the store URL) starts the message, e.g.
    ``file:///var/lib/canary/state.json: state does not fit the plan: flags.f.stage: must be
    in 0..4 (the plan's stages), got 99``.

    >>> from openfeature_canary.plan import FlagPlan, Stage
    >>> flag = FlagPlan("f", (Stage(5, 60, 60), Stage(100, 60, 60)))
    >>> check_state_against_plan(flag, RolloutState("f", Status.RUNNING, 2, 100.0, 0.0))
    """
    where = f"flags.{_show_key(flag.key)}"
    prefix = f"{source}: " if source else ""
    if state.flag_key != flag.key:
        raise StateStoreError(
            f"{prefix}state does not fit the plan: {where}.flag_key: must be "
            f"{_show(flag.key)}, got {_show(state.flag_key)}"
        )
    if not 0 <= state.stage <= len(flag.stages):
        raise StateStoreError(
            f"{prefix}state does not fit the plan: {where}.stage: must be in "
            f"0..{len(flag.stages)} (the plan's stages), got {state.stage}"
        )


_REQUESTS: Final = ("", "start")
