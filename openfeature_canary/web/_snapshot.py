"""What the status page shows, as plain data: one read of a rollout's public parts.

:func:`snapshot` reads each flag's state through :meth:`Rollout.controllers` (the states this
process knows: the decider's own, or what its runner last read from the store), the plan's
stages and lines, the autopilot's last trigger readings and the fleet's lease; it calls nothing
private and does no I/O beyond the lease read a fleet store answers. The page's JSON endpoint
returns it as is; the browser renders it.
"""

from __future__ import annotations

import os
from typing import Any

from openfeature_canary.evidence import StageEvidence, Tally
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy import Autopilot, Controller, Rollout
from openfeature_canary.signals import histogram_quantile
from openfeature_canary.state import RolloutState, Status
from openfeature_canary.stores import FleetStore

__all__ = ["snapshot"]

#: How many decision-log entries the page shows per flag (newest first).
LOG_SHOWN = 20


def snapshot(rollout: Rollout) -> dict[str, Any]:
    """The page's data at the rollout clock's ``now``: who serves it, the lease, every flag."""
    now = rollout.clock.now()
    return {
        "now": now,
        "store": rollout.store.url,
        "decider": _decider(rollout, now),
        "flags": [_flag(ctl, rollout, now) for ctl in rollout.controllers()],
    }


def _decider(rollout: Rollout, now: float) -> dict[str, Any]:
    """This process and the lease: which process the page describes, and who decides."""
    fleet = rollout.fleet
    store = rollout.store
    holder = None
    if fleet is not None and isinstance(store, FleetStore):
        try:
            holder = store.lease_holder(now)
        except Exception as exc:  # a store that cannot be read must not break the page
            return {"process": fleet.process_id, "deciding": fleet.leader, "error": str(exc)}
    return {
        "process": fleet.process_id if fleet is not None else f"pid {os.getpid()}",
        "deciding": fleet.leader if fleet is not None else rollout.policy is not None,
        "lease_holder": holder,
        "fleet": fleet is not None,
    }


def _flag(ctl: Controller, rollout: Rollout, now: float) -> dict[str, Any]:
    state, flag = ctl.state, ctl.flag
    last = state.last_decision
    return {
        "key": flag.key,
        "status": state.status.value,
        "stage": state.stage,
        "stages_total": len(flag.stages),
        "percent": state.percent,
        "since": state.since,
        "in_stage_s": max(0.0, now - state.since) if state.since else None,
        "version": state.version,
        "reason": state.reason,
        "timeline": _timeline(flag, state, now),
        "evidence": _evidence(flag, state),
        "windows": [w.to_dict() for w in state.windows],
        "triggers": _triggers(flag, rollout),
        "last_decision": last.to_dict() if last is not None else None,
        "log": [e.to_dict() for e in reversed(state.log[-LOG_SHOWN:])],
    }


def _timeline(flag: FlagPlan, state: RolloutState, now: float) -> list[dict[str, Any]]:
    """Every stage with its share, hold and lines; where the flag is among them (a rolled-back
    flag is at stage 0: the stage it rolled back from is marked, as the log recorded it)."""
    reached = _rolled_back_from(state) if state.status is Status.ROLLED_BACK else state.stage
    out: list[dict[str, Any]] = []
    for index, stage in enumerate(flag.stages, start=1):
        if state.status is Status.COMPLETED or index < reached:
            where = "done"
        elif index == reached:
            where = state.status.value  # running, paused, rolled back at this stage
        else:
            where = "next"
        entry: dict[str, Any] = {
            "index": index,
            "percent": stage.percent,
            "duration_s": stage.duration_s,
            "where": where,
            "lines": _lines(flag, index),
        }
        if index == state.stage and state.status is Status.RUNNING and state.since:
            entry["left_s"] = max(0.0, stage.duration_s - (now - state.since))
        out.append(entry)
    return out


def _rolled_back_from(state: RolloutState) -> int:
    """The stage of the last rollback's ``from_stage`` (0 when the log does not say)."""
    for entry in reversed(state.log):
        if entry.action == "rollback":
            stage = entry.numbers.get("from_stage")
            return stage if isinstance(stage, int) else 0
    return 0


def _lines(flag: FlagPlan, index: int) -> dict[str, float | None]:
    stage = flag.stages[index - 1]
    return {
        "p95_ms": stage.max_p95_ms,
        "p99_ms": stage.max_p99_ms,
        "error_rate": stage.max_error_rate,
    }


def _evidence(flag: FlagPlan, state: RolloutState) -> dict[str, Any] | None:
    """Canary vs baseline over the current stage, with the stage's lines (``None``: nothing
    gathered, or evidence of another stage than the one the flag is in)."""
    evidence: StageEvidence | None = state.evidence
    if evidence is None or not 1 <= evidence.stage <= len(flag.stages):
        return None
    if evidence.stage != state.stage:
        return None
    return {
        "stage": evidence.stage,
        "started": evidence.started,
        "through": evidence.through,
        "canary": _cohort(evidence.canary),
        "baseline": _cohort(evidence.baseline),
        "lines": _lines(flag, evidence.stage),
    }


def _cohort(tally: Tally) -> dict[str, Any]:
    has_latency = tally.latency_n > 0 and len(tally.counts) == len(tally.bounds) + 1
    return {
        "n": tally.n,
        "errors": tally.errors,
        "error_rate": tally.errors / tally.n if tally.n else None,
        "p95_ms": histogram_quantile(0.95, tally.bounds, tally.counts) if has_latency else None,
        "p99_ms": histogram_quantile(0.99, tally.bounds, tally.counts) if has_latency else None,
    }


def _triggers(flag: FlagPlan, rollout: Rollout) -> list[dict[str, Any]]:
    """Each trigger's rule and, in the process that runs the policy, its last reading."""
    policy = rollout.policy
    tick = policy.last(flag.key) if isinstance(policy, Autopilot) else None
    out: list[dict[str, Any]] = []
    for trigger in flag.triggers:
        reading = tick.triggers.get(trigger.name) if tick is not None else None
        value = reading.value if reading is not None else None
        out.append(
            {
                "name": trigger.name,
                "signal": trigger.signal,
                "op": str(trigger.op),
                "threshold": trigger.threshold,
                "window_s": trigger.window_s,
                "value": value,
                "n": reading.n if reading is not None else None,
                "error": reading.error if reading is not None else None,
                "at": tick.at if tick is not None else None,
            }
        )
    return out
