"""The stages a state's decision log no longer holds, taken back from ``canary_results.json``.

A state keeps its newest :data:`~openfeature_canary.state.LOG_LIMIT` entries, and a long
stage's judged windows push the older stages out. The live reports recorded each stage as it
ended (the JSON sidecar), so regenerating from the state alone would lose them. The rows
older than the log's first entry become the entries they were recorded from (a start where a
run began, an ending entry with the stage's evidence), placed before the log: the runs are
then read from one log, as if it had never been trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from openfeature_canary.events._records import DRY_RUN_SUFFIX, StageResult, split_runs
from openfeature_canary.state import LogEntry, Number, RolloutState

__all__ = ["with_history"]

#: The results row's fields that the stage-ending entry carried (same names in the log).
_EVIDENCE = (
    "samples",
    "baseline_samples",
    "observed_p95_ms",
    "baseline_p95_ms",
    "observed_error_rate",
    "baseline_error_rate",
    "planned_p95_ms",
    "planned_error_rate",
)


def with_history(state: RolloutState, rows: Sequence[StageResult]) -> tuple[LogEntry, ...]:
    """``state``'s log, preceded by the entries of its flag's results ``rows`` that ended
    before the log's first entry (all of them for an empty log)."""
    log = state.log
    first = log[0].at if log else float("inf")
    older = sorted(
        (r for r in rows if r.flag_key == state.flag_key and r.ended_at < first),
        key=lambda r: (r.started_at, r.ended_at),
    )
    if not older:
        return log
    entries: list[LogEntry] = []
    for run in split_runs(older):
        entries += _run_entries(run)
    return (*entries, *log)


def _run_entries(rows: list[StageResult]) -> list[LogEntry]:
    head = rows[0]
    out = [_entry(head.started_at, "start", "", {"to_stage": head.stage, "to_pct": head.percent})]
    for i, r in enumerate(rows):
        numbers: dict[str, Number] = {name: getattr(r, name) for name in _EVIDENCE}
        numbers["power"] = r.power or None
        numbers["from_stage"], numbers["from_pct"] = r.stage, r.percent
        if r.reason.endswith(DRY_RUN_SUFFIX):
            numbers["dry_run"] = 1
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        if r.decision == "advance":  # into the next row's stage, or the log's first one
            numbers["to_stage"] = r.stage + 1 if nxt is None else nxt.stage
            numbers["to_pct"] = None if nxt is None else nxt.percent
        out.append(_entry(r.ended_at, r.decision, r.reason, numbers))
    return out


def _entry(at: float, action: str, reason: str, numbers: dict[str, Number]) -> LogEntry:
    return LogEntry(at=at, action=action, reason=reason, numbers=MappingProxyType(numbers))
