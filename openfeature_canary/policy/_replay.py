"""The report rows a flag's decision log implies, rebuilt from the persisted state alone (for
``openfeature-canary report``): the same :func:`stage_result`/:func:`abort_record` the
pipeline calls when a transition is persisted, fed with the states the log walks through.

The store keeps only the newest decisions (``LOG_LIMIT``), so rows of stages whose entries
have left the log are not rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from openfeature_canary.events import ReportSink
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy._announce import abort_record, rolled_back, stage_result
from openfeature_canary.state import LogEntry, RolloutState, Status

__all__ = ["replay_reports", "walk_transitions"]

_STATUS_AFTER = {
    "start": Status.RUNNING,
    "advance": Status.RUNNING,
    "resume": Status.RUNNING,
    "pause": Status.PAUSED,
    "complete": Status.COMPLETED,
    "rollback": Status.ROLLED_BACK,
    "reset": Status.PENDING,
}


def walk_transitions(
    flag: FlagPlan, state: RolloutState
) -> Iterator[tuple[RolloutState, RolloutState, LogEntry]]:
    """``(before, after, entry)`` for every transition in ``state``'s log, oldest first; the
    states carry what the reports read (status, stage, percent, since, the log so far)."""
    cur = RolloutState(flag_key=flag.key)
    for i, entry in enumerate(state.log):
        status = _STATUS_AFTER.get(entry.action)
        if status is None:
            continue
        n = entry.numbers
        from_stage = n.get("from_stage", n.get("stage"))
        if isinstance(from_stage, int) and 1 <= from_stage <= len(flag.stages) and cur.stage < 1:
            # The log was cut: the stage this entry ends began before its oldest entry.
            cur = replace(
                cur,
                status=Status.RUNNING,
                stage=from_stage,
                percent=flag.serving_percent(from_stage),
                since=state.log[0].at,
            )
        new = _after(flag, cur, entry, status, state.log[: i + 1])
        yield cur, new, entry
        cur = new


def _after(
    flag: FlagPlan,
    cur: RolloutState,
    entry: LogEntry,
    status: Status,
    log: tuple[LogEntry, ...],
) -> RolloutState:
    stage, percent = cur.stage, cur.percent
    to_stage = entry.numbers.get("to_stage")
    if entry.action in ("start", "advance") and isinstance(to_stage, int):
        stage, percent = to_stage, flag.serving_percent(to_stage)
    if entry.action == "rollback" and entry.numbers.get("dry_run"):
        status = cur.status  # a dry run only logs its rollback
    elif status in (Status.ROLLED_BACK, Status.PENDING):
        stage, percent = 0, 0.0
    elif status is Status.COMPLETED:
        percent = flag.stages[-1].percent
    return replace(
        cur,
        status=status,
        stage=stage,
        percent=percent,
        since=entry.at,
        reason=entry.reason,
        version=cur.version + 1,
        log=log,
    )


def replay_reports(flag: FlagPlan, state: RolloutState, reports: ReportSink) -> tuple[int, int]:
    """Record in ``reports`` every results row and abort section ``state``'s log implies;
    return how many of each."""
    rows = aborts = 0
    for old, new, entry in walk_transitions(flag, state):
        result = stage_result(old, new, entry)
        if result is not None:
            reports.record_stage(result)
            rows += 1
        if rolled_back(old, new):
            reports.append_abort(abort_record(old, new, entry))
            aborts += 1
    return rows, aborts
