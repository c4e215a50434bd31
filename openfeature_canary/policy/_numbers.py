"""A stage's and a gate test's numbers for the decision log (a results row, an event and the
reports are built from them): pure functions of the plan, the stage's evidence and a test."""

from __future__ import annotations

import math
from typing import Final

from openfeature_canary.evidence import StageEvidence
from openfeature_canary.plan import FlagPlan, Guard
from openfeature_canary.policy._gates import GateTest, Information, quantile
from openfeature_canary.policy._guards import guard_estimate, guard_of
from openfeature_canary.state import Number, Verdict, WindowRecord

__all__ = ["information_numbers", "stage_summary", "test_numbers"]

#: The signal whose unit a line test's value and threshold are in (reports format by it).
_SIGNAL_OF: Final = {
    "error_line": "error_rate",
    "p95_line": "latency_p95_ms",
    "p99_line": "latency_p99_ms",
}


def stage_summary(
    flag: FlagPlan,
    index: int,
    evidence: StageEvidence,
    windows: tuple[WindowRecord, ...] = (),
) -> dict[str, Number]:
    """What a stage gathered, as decision-log numbers (a results row is built from them):
    the canary's and the baseline's totals, and how its reporting windows went."""
    stage = flag.stage(index)
    c, b = evidence.canary, evidence.baseline
    verdicts = [w.verdict for w in windows]
    return {
        "windows_passed": verdicts.count(Verdict.PASS),
        "windows_failed": verdicts.count(Verdict.FAIL),
        "windows_inconclusive": verdicts.count(Verdict.INCONCLUSIVE),
        "planned_p95_ms": stage.max_p95_ms,
        "observed_p95_ms": quantile(0.95, c),
        "planned_error_rate": stage.max_error_rate,
        "observed_error_rate": c.errors / c.n if c.n else None,
        "samples": c.n,
        "baseline_samples": b.n,
        "baseline_p95_ms": quantile(0.95, b),
        "baseline_error_rate": b.errors / b.n if b.n else None,
    }


def test_numbers(
    flag: FlagPlan, index: int, evidence: StageEvidence, test: GateTest
) -> dict[str, Number]:
    """A breached test's numbers for the decision log and the rollback event: ``value``
    against ``threshold`` in the line's own unit (a latency line: the stage's P95 or P99 in
    ms against the line in ms), the share or ratio the test judged, the e-value against its
    boundary, and n."""
    guard = guard_of(flag, test.name)
    if guard is not None:
        return _guard_numbers(guard, evidence, test)
    stage = flag.stage(index)
    value: float | None = test.estimate
    threshold: float | None = test.line
    if test.name in ("p95_line", "p99_line"):
        q, line = (0.95, stage.max_p95_ms) if test.name == "p95_line" else (0.99, stage.max_p99_ms)
        value, threshold = quantile(q, evidence.canary), line
    return {
        "test": test.name,
        "signal": _SIGNAL_OF.get(test.name),
        "value": value,
        "threshold": threshold,
        "estimate": test.estimate,
        "null": test.line,
        "e_value": round(test.e_value, 3),
        "e_boundary": round(math.exp(test.boundary), 3),
        "n": test.n,
    }


def _guard_numbers(guard: Guard, evidence: StageEvidence, test: GateTest) -> dict[str, Number]:
    """A guard test's numbers: ``value`` is the canary's relative change the wrong way
    against the baseline (0.21: 21 % fewer clicks), ``threshold`` the guard's ``max_drop``."""
    tally = evidence.guard(guard.event)
    canary, baseline = guard_estimate(guard, tally)
    drop = None
    if test.estimate is not None:
        drop = 1.0 - test.estimate if guard.higher_is_better else test.estimate - 1.0
    return {
        "test": test.name,
        "event": guard.event,
        "measure": guard.measure,
        "per": guard.per if guard.measure == "rate" else "event",
        "value": None if drop is None else round(drop, 6),
        "threshold": guard.max_drop,
        "canary_value": canary,
        "baseline_value": baseline,
        "canary_events": tally.canary.count,
        "baseline_events": tally.baseline.count,
        "estimate": test.estimate,
        "null": test.line,
        "e_value": round(test.e_value, 3),
        "e_boundary": round(math.exp(test.boundary), 3),
        "n": test.n,
    }


def information_numbers(infos: tuple[Information, ...]) -> dict[str, Number]:
    """Each line's power against its required regression (``power_<line>``), and against three
    times the line with the canary requests that would reach the plan's power
    (``power_<line>_3x``, ``needed_<line>_3x``), for the decision log and reports."""
    out: dict[str, Number] = {}
    for info in infos:
        out[f"power_{info.name}"] = round(info.power, 4)
        out[f"detect_{info.name}"] = info.detect
        if info.power_3x is not None:
            out[f"power_{info.name}_3x"] = round(info.power_3x, 4)
        if info.needed_3x is not None:
            out[f"needed_{info.name}_3x"] = info.needed_3x
    return out
