"""The rollout state of one flag: an immutable, versioned record with its decision log."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any, Final

__all__ = ["LOG_LIMIT", "LogEntry", "RolloutState", "Status", "Verdict", "WindowRecord"]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


#: How many decision-log entries a state keeps (the reports keep everything).
LOG_LIMIT: Final = 50

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
    """One decision: when, what was done, why, and the numbers behind it.

    ``numbers`` carries e.g. ``{"value": 162.0, "threshold": 150, "window_s": 60, "n": 1204}``.
    """

    at: float
    action: str
    reason: str
    numbers: Mapping[str, Number] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "at": self.at,
            "action": self.action,
            "reason": self.reason,
            **{"numbers": dict(self.numbers)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogEntry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            at=float(data["at"]),
            action=str(data["action"]),
            reason=str(data.get("reason", "")),
            numbers=MappingProxyType(dict(data.get("numbers", {}))),
        )


class Verdict(StrEnum):
    """A gate window's verdict: pass and fail need ``min_samples``; otherwise inconclusive."""

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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowRecord:
        """Inverse of :meth:`to_dict`."""
        p95, rate = data.get("p95_ms"), data.get("error_rate")
        return cls(
            index=int(data["index"]),
            start=float(data["start"]),
            end=float(data["end"]),
            verdict=Verdict(data["verdict"]),
            n=int(data["n"]),
            p95_ms=None if p95 is None else float(p95),
            error_rate=None if rate is None else float(rate),
            reason=str(data.get("reason", "")),
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

    @property
    def last_decision(self) -> LogEntry | None:
        """The newest log entry, if any."""
        return self.log[-1] if self.log else None

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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        """Inverse of :meth:`to_dict`; raises ``ValueError``/``KeyError`` on malformed data."""
        return cls(
            flag_key=str(data["flag_key"]),
            status=Status(data["status"]),
            stage=int(data["stage"]),
            percent=float(data["percent"]),
            since=float(data["since"]),
            reason=str(data.get("reason", "")),
            version=int(data["version"]),
            log=tuple(LogEntry.from_dict(e) for e in data.get("log", ())),
            windows=tuple(WindowRecord.from_dict(w) for w in data.get("windows", ())),
            requested=str(data.get("requested", "")),
        )
