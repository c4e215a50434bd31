"""Runs read from a decision log: where a run starts and ends, its stages, windows and onset;
the stages a trimmed log lost, taken back from canary_results.json."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import pytest

from openfeature_canary import RolloutPlan, Status, load_plan
from openfeature_canary.events import ReportWriter, StageResult, write_reports
from openfeature_canary.events._runs import entry_field, runs_of
from openfeature_canary.state import LogEntry, Number, RolloutState

FLAG = "dataservice-read-canary"
T = 1_800_000_000.0
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"


def e(at: float, action: str, reason: str = "", **numbers: Number) -> LogEntry:
    return LogEntry(T + at, action, reason, MappingProxyType(numbers))


def window(at: float, verdict: str = "pass", **numbers: Number) -> LogEntry:
    base: dict[str, Number] = {
        "n": 300,
        "p95_ms": 120.0,
        "error_rate": 0.001,
        "baseline_n": 6000,
        "baseline_p95_ms": 118.0,
        "baseline_error_rate": 0.001,
        "window_s": 60.0,
    }
    return e(at, f"window_{verdict}", "", **{**base, **numbers})


def state(*log: LogEntry, status: Status = Status.RUNNING) -> RolloutState:
    return RolloutState(flag_key=FLAG, status=status, stage=1, percent=5.0, log=log)


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


def test_a_reset_ends_a_run_and_the_next_start_begins_another() -> None:
    runs = runs_of(
        state(
            e(0, "start", "operator", to_stage=1, to_pct=5),
            window(60),
            e(600, "advance", "gate_passed", to_stage=2, to_pct=25, samples=3000),
            window(660),
            e(700, "reset", "operator"),
            e(800, "request_start", "operator"),
            e(900, "start", "operator", to_stage=1, to_pct=5),
            window(960),
        )
    )

    assert [(r.index, r.outcome) for r in runs] == [(1, "reset"), (2, "running")]
    first, second = runs
    assert [(s.stage, s.percent, s.decision) for s in first.stages] == [
        (1, 5.0, "advance"),
        (2, 25.0, "reset"),
    ]
    assert [len(s.windows) for s in first.stages] == [1, 1]
    assert first.started_at == T and first.ended_at == T + 700
    assert second.started_at == T + 900 and second.stages[0].decision == "running"


def test_a_dry_run_rollback_does_not_end_the_run_a_real_one_does() -> None:
    runs = runs_of(
        state(
            e(0, "start", "operator", to_stage=1, to_pct=5),
            e(100, "rollback", "p95_breach", dry_run=1),
            e(600, "advance", "gate_passed", to_stage=2, to_pct=25),
            e(700, "rollback", "p95_breach", value=171.0, threshold=150.0),
            e(800, "reset", "operator"),  # after a rollback: nothing more to end
        )
    )

    assert len(runs) == 1
    assert runs[0].outcome == "rolled_back" and runs[0].ended_at == T + 700
    assert [s.decision for s in runs[0].stages] == ["advance", "rollback"]


def test_onset_is_the_first_window_beyond_the_line_the_rollback_names() -> None:
    run = runs_of(
        state(
            e(0, "start", "operator", to_stage=1, to_pct=5),
            window(60, error_rate=0.001),
            window(120, error_rate=0.02),  # over the 0.5 % threshold: the onset, at its start
            window(180, error_rate=0.03),
            e(200, "rollback", "error_rate_breach", signal="error_rate", threshold=0.005),
        )
    )[0]

    assert run.onset() == T + 60
    assert run.onset_or_bound() == (T + 60, True)


def test_onset_of_a_ratio_test_compares_the_canary_with_the_baseline() -> None:
    run = runs_of(
        state(
            e(0, "start", "operator", to_stage=1, to_pct=5),
            window(60, error_rate=0.0011, baseline_error_rate=0.001),  # within 1.25x
            window(120, error_rate=0.004, baseline_error_rate=0.001),
            e(130, "rollback", "gate_no_go", test="error_ratio", threshold=1.25, value=3.1),
        )
    )[0]

    assert run.onset() == T + 60


def test_without_a_bad_window_onset_is_bounded_by_the_stage_start_or_unknown() -> None:
    gate = runs_of(
        state(
            e(0, "start", "operator", to_stage=1, to_pct=5),
            e(600, "advance", "gate_passed", to_stage=2, to_pct=25),
            e(610, "rollback", "gate_no_go", test="latency_rank", value=0.9, threshold=0.6),
        )
    )[0]
    operator = runs_of(
        state(
            e(0, "start", "operator", to_stage=1, to_pct=5),
            window(60),
            e(100, "rollback", "dashboards look wrong", samples=300),
        )
    )[0]

    assert gate.onset_or_bound() == (T + 600, False)
    assert operator.onset_or_bound() == (None, True)


def test_a_trimmed_log_still_yields_its_run_without_a_start() -> None:
    (run,) = runs_of(state(window(60), window(120), e(130, "advance", "gate_passed", to_stage=3)))

    assert run.started_at is None and run.first_at == T
    assert run.stages[0].stage == 0 and len(run.stages[0].windows) == 2


def test_fields_are_read_from_attributes_first_then_numbers() -> None:
    @dataclass(frozen=True)
    class NewerEntry(LogEntry):
        rule: str = "gate:error_ratio"

    entry = NewerEntry(T, "rollback", "error_rate_breach", MappingProxyType({"by": "pid 42"}))

    assert entry_field(entry, "rule") == "gate:error_ratio"
    assert entry_field(entry, "by") == "pid 42"
    assert entry_field(entry, "threshold") is None


def test_reasons_fields_render_in_the_results_and_the_abort(
    tmp_path: Path, plan: RolloutPlan
) -> None:
    rolled = state(
        e(0, "start", "operator", to_stage=1, to_pct=5, by="alice"),
        window(60, error_rate=0.04),
        e(
            90,
            "rollback",
            "error_rate_breach",
            rule="gate:error_line",
            signal="error_rate",
            value=0.04,
            threshold=0.001,
            by="pid 4242",
            samples=900,
            observed_error_rate=0.04,
        ),
        status=Status.ROLLED_BACK,
    )

    write_reports(plan, [rolled], tmp_path)

    results = (tmp_path / "canary_results.md").read_text("utf-8")
    assert "- Started by: alice" in results
    assert (
        "- Ended: **rollback** — error_rate_breach (gate:error_line, 4.00 % vs 0.10 %) by pid 4242"
        in results
    )
    abort = (tmp_path / "canary_abort.md").read_text("utf-8").splitlines()
    assert "| Rule | gate:error_line |" in abort
    assert "| Decided by | pid 4242 |" in abort
    assert "| Value vs threshold | 4.00 % vs 0.10 % |" in abort
    assert (
        "| What users got | 900 canary requests (5 % of traffic), about 36 of them 5xx (4.00 %) |"
        in abort
    )


def test_stages_the_log_lost_come_back_from_the_results_sidecar(
    tmp_path: Path, plan: RolloutPlan
) -> None:
    def row(stage: int, pct: float, start: float, end: float) -> StageResult:
        return StageResult(
            flag_key=FLAG,
            stage=stage,
            percent=pct,
            started_at=T + start,
            ended_at=T + end,
            planned_p95_ms=150.0,
            observed_p95_ms=121.0,
            planned_error_rate=0.001,
            observed_error_rate=0.0,
            samples=3000,
            windows_passed=0,
            windows_failed=0,
            windows_inconclusive=0,
            decision="advance",
            reason="gate_passed",
            power="5xx 5.00 %: 99 % power",
            baseline_samples=57000,
        )

    live = ReportWriter(tmp_path)
    live.record_stage(row(1, 5.0, 0, 600))
    live.record_stage(row(2, 25.0, 600, 1800))
    # The state's log kept only the third stage's windows: its start and the advances are gone.
    trimmed = state(window(1860), window(1920))

    write_reports(plan, [trimmed], tmp_path)

    text = (tmp_path / "canary_results.md").read_text("utf-8")
    assert text.count("### Run ") == 1
    rows = [line for line in text.splitlines() if line.startswith("| ") and "Stage" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2", "| 3"]
    assert "| 3,000 / 57,000 |" in rows[0] and "5xx 5.00 %: 99 % power" in rows[0]
    assert rows[2].split(" | ")[1] == "50 %"  # the plan's percent of stage 3


def test_a_dry_run_rollback_taken_back_from_the_sidecar_does_not_end_its_run(
    tmp_path: Path, plan: RolloutPlan
) -> None:
    base = StageResult(
        flag_key=FLAG,
        stage=1,
        percent=5.0,
        started_at=T,
        ended_at=T + 300,
        planned_p95_ms=150.0,
        observed_p95_ms=171.0,
        planned_error_rate=0.001,
        observed_error_rate=0.0,
        samples=1500,
        windows_passed=0,
        windows_failed=0,
        windows_inconclusive=0,
        decision="rollback",
        reason="p95_breach (dry run)",
    )
    live = ReportWriter(tmp_path)
    live.record_stage(base)
    live.record_stage(replace(base, started_at=T + 300, ended_at=T + 900, decision="advance"))

    write_reports(plan, [state(window(960))], tmp_path)

    text = (tmp_path / "canary_results.md").read_text("utf-8")
    assert text.count("### Run ") == 1
    assert re.search(r"### Run 1 — started \S+, still running\n", text)
    assert "- Ended" not in text
