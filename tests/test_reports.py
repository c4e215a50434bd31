"""The markdown reports: canary_results.md (from its JSON sidecar) and canary_abort.md."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from openfeature_canary.events._markdown import fmt_count, fmt_ms, fmt_percent, fmt_rate, fmt_time
from openfeature_canary.events._reports import AbortRecord, ReportError, ReportWriter, StageResult
from openfeature_canary.state import LogEntry

FLAG = "dataservice-read-canary"
PHASE2 = "dataservice-user-read-canary"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DASH = "\u2013"  # en dash: how the reports show "no value"

HEADER = (
    "| Stage | Traffic | Started | Ended | n canary / baseline | P95 canary / baseline (line) "
    "| 5xx canary / baseline (line) | Could detect | Decision |"
)


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"


def stage(n: int, **changes: object) -> StageResult:
    base = StageResult(
        flag_key=FLAG,
        stage=n,
        percent=(5.0, 25.0, 50.0, 100.0)[n - 1],
        started_at=T0 + 600 * (n - 1),
        ended_at=T0 + 600 * n,
        planned_p95_ms=150.0,
        observed_p95_ms=131.25,
        planned_error_rate=0.001,
        observed_error_rate=0.0002,
        samples=12034,
        windows_passed=10,
        windows_failed=0,
        windows_inconclusive=0,
        decision="advance",
        reason="all gate windows passed",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def abort(**changes: object) -> AbortRecord:
    log = (
        LogEntry(T0, "start", "operator", MappingProxyType({"to_stage": 1, "to_pct": 5.0})),
        LogEntry(T0 + 600, "advance", "gates passed", MappingProxyType({"to_pct": 25.0})),
        LogEntry(
            T0 + 900,
            "rollback",
            "p95_breach",
            MappingProxyType({"value": 162.0, "threshold": 150, "window_s": 300, "n": 1204}),
        ),
    )
    base = AbortRecord(
        flag_key=FLAG,
        at=T0 + 900,
        from_pct=25.0,
        from_stage=2,
        trigger="p95_breach",
        value=162.04,
        threshold=150.0,
        window_s=300.0,
        n=1204,
        last_decisions=log,
        signal="latency_p95_ms",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- results


def test_results_several_stages_rendered_as_table_per_flag(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path / "reports")

    writer.record_stage(stage(1, power="5xx 5 %: 100 %; 5xx 3x line: 1 %"))
    writer.record_stage(stage(2, percent=25.0, planned_p95_ms=140.0, observed_error_rate=None))
    writer.record_stage(
        stage(
            1,
            flag_key=PHASE2,
            observed_p95_ms=171.0,
            windows_passed=7,
            windows_failed=3,
            decision="rollback",
            reason="3 gate windows failed (max 0)",
        )
    )

    lines = writer.results_path.read_text("utf-8").splitlines()
    assert lines[0] == "# Canary results"
    assert lines.count(HEADER) == 2
    assert not any("inconclusive" in line for line in lines)  # no windows cells any more
    flag_at, phase2_at = lines.index(f"## `{FLAG}`"), lines.index(f"## `{PHASE2}`")
    assert flag_at < phase2_at
    assert lines[flag_at + 2] == "### Run 1 — started 2023-11-14T22:13:20Z"
    assert lines[flag_at + 6 : flag_at + 8] == [
        f"| 1 | 5 % | 2023-11-14T22:13:20Z | 2023-11-14T22:23:20Z | 12,034 / {DASH} "
        f"| 131.2 ms / {DASH} (line 150.0 ms) | 0.02 % / {DASH} (line 0.10 %) "
        "| 5xx 5 %: 100 %; 5xx 3x line: 1 % | **advance** — all gate windows passed |",
        f"| 2 | 25 % | 2023-11-14T22:23:20Z | 2023-11-14T22:33:20Z | 12,034 / {DASH} "
        f"| 131.2 ms / {DASH} (line 140.0 ms) | {DASH} / {DASH} (line 0.10 %) | {DASH} "
        "| **advance** — all gate windows passed |",
    ]
    assert lines[phase2_at + 2] == (
        "### Run 1 — started 2023-11-14T22:13:20Z, rolled back at 2023-11-14T22:23:20Z"
    )
    assert lines[phase2_at + 6] == (
        f"| 1 | 5 % | 2023-11-14T22:13:20Z | 2023-11-14T22:23:20Z | 12,034 / {DASH} "
        f"| 171.0 ms / {DASH} (line 150.0 ms) | 0.02 % / {DASH} (line 0.10 %) | {DASH} "
        "| **rollback** — 3 gate windows failed (max 0) |"
    )


def test_results_baseline_numbers_shown_beside_the_canary(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)

    writer.record_stage(
        stage(1, baseline_samples=240_500, baseline_p95_ms=120.0, baseline_error_rate=0.0001)
    )

    text = writer.results_path.read_text("utf-8")
    assert "| 12,034 / 240,500 | 131.2 ms / 120.0 ms (line 150.0 ms) |" in text
    assert "| 0.02 % / 0.01 % (line 0.10 %) |" in text
    assert writer.results()[0].baseline_samples == 240_500  # kept in the JSON sidecar


def test_results_each_run_its_own_section(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)
    writer.record_stage(stage(1))
    writer.record_stage(stage(2, decision="pause", reason="gate_no_go"))
    writer.record_stage(stage(2, started_at=T0 + 1300, ended_at=T0 + 1500))  # resumed
    writer.record_stage(stage(3, decision="rollback", reason="p95_breach"))
    writer.record_stage(stage(1, started_at=T0 + 7200, ended_at=T0 + 7800))  # after a reset
    writer.record_stage(stage(1, started_at=T0 + 9000, ended_at=T0 + 9600))  # reset at stage 2

    lines = writer.results_path.read_text("utf-8").splitlines()

    runs = [line for line in lines if line.startswith("### Run ")]
    assert runs == [
        "### Run 1 — started 2023-11-14T22:13:20Z, rolled back at 2023-11-14T22:43:20Z",
        "### Run 2 — started 2023-11-15T00:13:20Z",
        "### Run 3 — started 2023-11-15T00:43:20Z",
    ]
    first = lines[lines.index(runs[0]) : lines.index(runs[1])]
    assert sum(line.startswith("| ") and "Stage" not in line for line in first) == 4


def test_results_reopened_writer_keeps_earlier_stages(tmp_path: Path) -> None:
    ReportWriter(tmp_path).record_stage(stage(1))
    ReportWriter(tmp_path).record_stage(stage(2))

    reopened = ReportWriter(tmp_path)
    reopened.record_stage(stage(3, decision="pause", reason="too few conclusive windows"))

    assert [r.stage for r in reopened.results()] == [1, 2, 3]
    assert reopened.results()[0] == stage(1)
    text = reopened.results_path.read_text("utf-8")
    assert "| 1 | 5 % |" in text and "| 2 | 25 % |" in text
    assert "**pause** — too few conclusive windows" in text
    data = json.loads(reopened.results_data_path.read_text("utf-8"))
    assert [s["stage"] for s in data["stages"]] == [1, 2, 3]


def test_results_same_stage_recorded_twice_replaces_row(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)
    writer.record_stage(stage(1, decision="pause", reason="first try"))

    writer.record_stage(stage(1))

    assert writer.results() == (stage(1),)
    assert "first try" not in writer.results_path.read_text("utf-8")


def test_results_rerun_of_stage_after_reset_gets_own_row(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)
    writer.record_stage(stage(1, decision="rollback", reason="p95_breach"))

    writer.record_stage(stage(1, started_at=T0 + 7200, ended_at=T0 + 7800))

    assert [r.decision for r in writer.results()] == ["rollback", "advance"]


def test_results_pipe_and_newline_in_reason_stay_in_cell(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)

    writer.record_stage(stage(1, decision="pause", reason="operator: a|b\nsecond line"))

    row = next(
        line for line in writer.results_path.read_text("utf-8").splitlines() if "pause" in line
    )
    assert row.endswith("| **pause** — operator: a\\|b second line |")
    assert row.count(" | ") == 8  # nine cells, one table row


def test_results_corrupt_sidecar_moved_aside_and_writing_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = ReportWriter(tmp_path)
    writer.results_data_path.write_text('{"format": 1, "stages": [{"flag_ke', "utf-8")

    with caplog.at_level(logging.WARNING, logger="openfeature_canary"):
        writer.record_stage(stage(1))

    assert writer.results() == (stage(1),)
    aside = tmp_path / "canary_results.json.corrupt"
    assert aside.read_text("utf-8").startswith('{"format": 1')
    assert "unreadable" in caplog.text


def test_results_writes_leave_no_temp_files(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)

    for n in (1, 2, 3):
        writer.record_stage(stage(n))
    writer.append_abort(abort())
    writer.write_plan("# Plan\n")

    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == [
        "canary_abort.md",
        "canary_plan.md",
        "canary_results.json",
        "canary_results.md",
    ]
    assert writer.plan_path.read_text("utf-8") == "# Plan\n"
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.glob("canary_*")} == {"0o644"}


def test_report_writer_unwritable_dir_raises_report_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")

    with pytest.raises(ReportError, match="not-a-dir"):
        ReportWriter(blocker / "reports").record_stage(stage(1))


# ---------------------------------------------------------------------- aborts


def test_abort_two_rollbacks_appended_as_sections(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)

    writer.append_abort(abort())
    writer.append_abort(
        abort(
            at=T0 + 3600,
            from_pct=5.0,
            from_stage=1,
            trigger="error_rate_breach",
            signal="error_rate",
            value=0.0062,
            threshold=0.005,
            window_s=120.0,
            n=15000,
            last_decisions=(),
        )
    )

    text = writer.abort_path.read_text("utf-8")
    assert text.startswith("# Canary aborts\n\n## 2023-11-14T22:28:20Z")
    assert text.count("# Canary aborts") == 1
    first, second = text.split("\n## ")[1:]
    assert first.splitlines()[0] == (
        f"2023-11-14T22:28:20Z — `{FLAG}` rolled back from 25 % (stage 2): p95_breach, "
        "162.0 ms vs 150.0 ms"
    )
    for line in (
        "| Time | 2023-11-14T22:28:20Z |",
        f"| Flag | `{FLAG}` |",
        "| From | 25 % (stage 2) |",
        "| Reason | `p95_breach` |",
        "| Value vs threshold | 162.0 ms vs 150.0 ms |",
        "| Window | 5m |",
        "| Samples (n) | 1,204 |",
        "| 2023-11-14T22:13:20Z | start | operator | to_stage=1, to_pct=5 |",
        "| 2023-11-14T22:23:20Z | advance | gates passed | to_pct=25 |",
        "| 2023-11-14T22:28:20Z | rollback | p95_breach | "
        "value=162, threshold=150, window_s=300, n=1204 |",
    ):
        assert line in first.splitlines(), line
    assert "| Value vs threshold | 0.62 % vs 0.50 % |" in second.splitlines()
    assert "| Window | 2m |" in second.splitlines()
    assert "| From | 5 % (stage 1) |" in second.splitlines()
    assert "Last decisions" not in second


def test_abort_survives_reopened_writer(tmp_path: Path) -> None:
    ReportWriter(tmp_path).append_abort(abort())

    ReportWriter(tmp_path).append_abort(abort(at=T0 + 7200))

    text = (tmp_path / "canary_abort.md").read_text("utf-8")
    assert text.count(f"`{FLAG}` rolled back from 25 %") == 2
    assert text.index("2023-11-14T22:28:20Z —") < text.index("2023-11-15T00:13:20Z —")


@pytest.mark.parametrize(
    ("trigger", "value", "threshold", "shown"),
    [
        ("p95_breach", 151.0, 150.0, "151.0 ms vs 150.0 ms"),
        ("event_loop_lag", 312.5, 300.0, "312.5 ms vs 300.0 ms"),
        ("telemetry_acceptance", 0.97, 0.99, "97.00 % vs 99.00 %"),
        ("ledger_mismatch", 3.0, 0.0, "3 vs 0"),
        ("operator", None, None, f"{DASH} vs {DASH}"),
    ],
)
def test_abort_without_signal_unit_guessed_from_trigger(
    tmp_path: Path, trigger: str, value: float | None, threshold: float | None, shown: str
) -> None:
    writer = ReportWriter(tmp_path)

    writer.append_abort(abort(trigger=trigger, signal=None, value=value, threshold=threshold))

    assert f"| Value vs threshold | {shown} |" in writer.abort_path.read_text("utf-8")


def test_abort_operator_rollback_without_numbers_shows_dashes(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)

    writer.append_abort(
        abort(trigger="operator", signal=None, value=None, threshold=None, window_s=None, n=None)
    )

    lines = writer.abort_path.read_text("utf-8").splitlines()
    assert f"| Window | {DASH} |" in lines
    assert f"| Samples (n) | {DASH} |" in lines


# ---------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("formatted", "expected"),
    [
        (fmt_ms(131.25), "131.2 ms"),
        (fmt_ms(150), "150.0 ms"),
        (fmt_ms(None), DASH),
        (fmt_rate(0.001), "0.10 %"),
        (fmt_rate(0.005), "0.50 %"),
        (fmt_rate(None), DASH),
        (fmt_percent(2.5), "2.5 %"),
        (fmt_percent(100.0), "100 %"),
        (fmt_count(1234567), "1,234,567"),
        (fmt_count(None), DASH),
        (fmt_time(0.0), "1970-01-01T00:00:00Z"),
        (fmt_time(None), DASH),
    ],
)
def test_formatters_numbers_for_humans(formatted: str, expected: str) -> None:
    assert formatted == expected


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o022, 0o644)])
def test_reports_and_rendered_plan_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Reports are files a person reads: they follow the process's umask like any tool's
    output (the state file and the outbox are owner-only whatever the umask)."""
    from openfeature_canary.cli import run

    old = os.umask(umask)
    try:
        writer = ReportWriter(tmp_path / "reports")
        writer.record_stage(stage(1))
        writer.write_plan("# plan\n")
        out = tmp_path / "rendered" / "canary_plan.md"
        assert run(["plan", "render", "--plan", str(EXAMPLE), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    for path in (writer.results_path, writer.results_data_path, writer.plan_path, out):
        assert path.stat().st_mode & 0o777 == mode, path


def test_abort_says_rule_who_what_users_got_and_the_next_step(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)
    rollback = LogEntry(
        T0 + 900,
        "rollback",
        "gate_no_go",
        MappingProxyType(
            {"test": "error_ratio", "value": 3.2, "threshold": 1.25, "n": 5000, "samples": 5000}
            | {"observed_error_rate": 0.012, "by": "pid 4242"}
        ),
    )

    writer.append_abort(abort(trigger="gate_no_go", signal=None, last_decisions=(rollback,)))

    lines = writer.abort_path.read_text("utf-8").splitlines()
    assert "| Rule | `gate:error_ratio` |" in lines
    assert "| Decided by | pid 4242 |" in lines
    assert (
        "| What users got | 5,000 canary requests (25 % of traffic), about 60 of them 5xx "
        "(1.20 %) |"
    ) in lines
    step = next(line for line in lines if line.startswith("| Next step | "))
    assert f"`openfeature-canary reset {FLAG}`" in step
    assert f"`openfeature-canary start {FLAG}`" in step
    # The summary line says what broke: the reason and its value against the threshold.
    assert lines[2] == (
        f"## 2023-11-14T22:28:20Z — `{FLAG}` rolled back from 25 % (stage 2): "
        "gate_no_go, 162 vs 150"
    )


def test_abort_operator_rollback_has_no_rule_nor_users_numbers(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)

    writer.append_abort(abort(trigger="operator", last_decisions=()))

    lines = writer.abort_path.read_text("utf-8").splitlines()
    assert f"| Rule | {DASH} |" in lines and f"| What users got | {DASH} |" in lines


def test_results_a_dry_run_rollback_continues_its_run(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path)
    writer.record_stage(stage(1, decision="rollback", reason="p95_breach (dry run)"))
    writer.record_stage(stage(1, started_at=T0 + 700, ended_at=T0 + 1300))
    writer.record_stage(stage(2, started_at=T0 + 1300, ended_at=T0 + 1900))

    text = writer.results_path.read_text("utf-8")

    assert text.count("### Run ") == 1
