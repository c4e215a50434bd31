"""The plan rendered as markdown (canary_plan.md): tables, values and wording a reader relies on."""

from __future__ import annotations

import pytest

from openfeature_canary import load_plan, parse_plan
from openfeature_canary._format import format_percent, format_rate, format_span
from openfeature_canary.events._render import phase_of, render_plan_markdown

READ = "dataservice-read-canary"
USER = "dataservice-user-read-canary"

# Spec §2, as rendered: same rows and values, durations in the plan's own notation.
EXPECTED_STAGE_TABLE = """\
| Stage | Traffic | Duration | Gate window | Go/No-Go |
|---|---|---|---|---|
| 0 | 0 % | \u2013 | baseline | all triggers quiet on the baseline |
| 1 | 5 % | 10m | 1m | P95 ≤ 150 ms, 5xx ≤ 0.1 % |
| 2 | 25 % | 30m | 5m | P95 ≤ 140 ms, 5xx ≤ 0.2 % |
| 3 | 50 % | 1h | 10m | P95 ≤ 130 ms, 5xx ≤ 0.3 % |
| 4 | 100 % | 24h soak | 15m | P95 ≤ 120 ms, 5xx ≤ 0.5 % |
"""

EXPECTED_TRIGGER_TABLE = """\
| Trigger | Rule |
|---|---|
| `p95_breach` | latency_p95_ms > 150 for 5m |
| `error_rate_breach` | error_rate ≥ 0.005 for 2m |
| `ledger_mismatch` | ledger_mismatches > 0 |
| `telemetry_acceptance` | telemetry_acceptance < 0.99 |
| `event_loop_lag` | event_loop_lag_ms ≥ 300, 2 times within 10m |
"""


def _section(markdown: str, flag_key: str) -> str:
    start = markdown.index(f"## `{flag_key}`")
    nxt = markdown.find("\n## ", start + 1)
    return markdown[start:] if nxt == -1 else markdown[start:nxt]


def _minimal(**flag_extra: object) -> dict[str, object]:
    flag: dict[str, object] = {
        "stages": [{"percent": 10, "duration": "5m", "window": "1m", "max_p95_ms": 200}],
    }
    flag.update(flag_extra)
    return {"flags": {"f": flag}}


def test_render_example_plan_has_spec_stage_table_for_each_flag(example_plan_path):
    markdown = render_plan_markdown(load_plan(example_plan_path))
    for key in (READ, USER):
        assert EXPECTED_STAGE_TABLE in _section(markdown, key)


def test_render_example_plan_has_trigger_table_for_each_flag(example_plan_path):
    markdown = render_plan_markdown(load_plan(example_plan_path))
    for key in (READ, USER):
        section = _section(markdown, key)
        assert "### Hard rollback triggers (any one → immediately 0 %)" in section
        assert EXPECTED_TRIGGER_TABLE in section


def test_render_example_plan_describes_flag_settings(example_plan_path):
    markdown = render_plan_markdown(load_plan(example_plan_path))
    read, user = _section(markdown, READ), _section(markdown, USER)
    assert markdown.startswith("# Canary rollout plan\n")
    assert "A6 Provider Dashboard (GET /api/v6/providers/{id}/dashboard)" in read
    assert "`DATASERVICE_READ_CANARY`" in read
    assert "`DATASERVICE_READ_CANARY=0` pins the flag off" in read
    assert "Phase 1: starts first" in read
    assert "by evaluation-context attribute `targetingKey`, scheme `flagd`" in read
    assert "A1 lightweight reads" in user
    assert "Phase 2: starts only after `dataservice-read-canary` has completed" in user
    assert "Operator override: none" in user
    assert "`POST {A8_URL}/telemetry/ingest`" in markdown
    assert "app `scholarship_api`" in markdown
    assert "`canary-reports`" in markdown


def test_render_same_plan_twice_is_identical(example_plan_path):
    plan = load_plan(example_plan_path)
    assert render_plan_markdown(plan) == render_plan_markdown(plan)


def test_render_p99_gate_and_no_gate_stage_both_shown():
    plan = parse_plan(
        {
            "flags": {
                "f": {
                    "stages": [
                        {"percent": 10, "duration": "5m", "max_p99_ms": 300, "max_p95_ms": 200},
                        {"percent": 100, "duration": "36h", "window": "1h"},
                    ]
                }
            }
        }
    )
    markdown = render_plan_markdown(plan)
    assert "| 1 | 10 % | 5m | 5m | P95 ≤ 200 ms, P99 ≤ 300 ms |" in markdown
    assert "| 2 | 100 % | 36h soak | 1h | canary against baseline only |" in markdown


def test_render_flag_without_triggers_says_none():
    markdown = render_plan_markdown(parse_plan(_minimal()))
    assert "None: only the stage gates and operators move this flag." in markdown
    assert "| Trigger | Rule |" not in markdown


def test_render_gate_notes_state_the_budget_power_and_each_no_go_action():
    plan = parse_plan(
        {
            "decisions": {"false_rollback_budget": 0.02, "holdback": 5},
            "flags": {
                "f": {
                    "stages": [
                        {"percent": 10, "duration": "5m", "on_no_go": "pause"},
                        {"percent": 100, "duration": "5m", "max_error_rate": 0.01},
                    ]
                }
            },
        }
    )
    markdown = render_plan_markdown(plan)
    assert "a false-rollback budget of 2 % per rollout" in markdown
    assert "a breach acts at once (pause or rollback)" in markdown
    assert "with 99 % power, a canary with a 5xx share of 5 % (or 3x a higher line)" in markdown
    assert "The final stage keeps 5 % of units on the old path" in markdown
    assert "| 1 | 10 % | 5m | 5m | canary against baseline only |" in markdown


def test_render_trigger_name_with_pipe_escaped_and_ignore_noted():
    plan = parse_plan(
        _minimal(
            triggers=[
                {"name": "a|b", "signal": "error_rate", "above": 0.1, "on_error": "ignore"},
            ]
        )
    )
    markdown = render_plan_markdown(plan)
    assert "| `a\\|b` | error_rate > 0.1 (source errors ignored) |" in markdown


def test_render_direct_telemetry_url_store_and_dry_run_shown():
    data = _minimal(dry_run=True)
    data["telemetry"] = {"url": "http://127.0.0.1:9/", "app": "svc"}
    data["store"] = "file:///var/lib/canary/state.json"
    markdown = render_plan_markdown(parse_plan(data))
    assert "`POST http://127.0.0.1:9/telemetry/ingest`, app `svc`" in markdown
    assert "- State store: `file:///var/lib/canary/state.json`" in markdown
    assert "- Dry run: decisions are logged, never applied" in markdown


def test_phase_of_chain_counts_predecessors():
    stage = [{"percent": 10, "duration": "5m"}]
    plan = parse_plan(
        {
            "flags": {
                "a": {"stages": stage},
                "b": {"stages": stage, "after": "a"},
                "c": {"stages": stage, "after": "b"},
            }
        }
    )
    assert [phase_of(plan, k) for k in ("a", "b", "c")] == [1, 2, 3]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (60, "1m"),
        (600, "10m"),
        (5400, "1h30m"),
        (86400, "24h"),
        (90000, "25h"),
        (86400 + 90, "24h1m30s"),
        (172800, "2d"),
        (0.5, "500ms"),
    ],
)
def test_format_span_day_long_spans_in_hours(seconds, text):
    assert format_span(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(5, "5 %"), (12.5, "12.5 %"), (100.0, "100 %")],
)
def test_format_percent_integers_without_decimals(value, text):
    assert format_percent(value) == text


@pytest.mark.parametrize(
    ("rate", "text"),
    [(0.001, "0.1 %"), (0.003, "0.3 %"), (0.005, "0.5 %"), (0.0125, "1.25 %"), (1, "100 %")],
)
def test_format_rate_ratio_as_percentage(rate, text):
    assert format_rate(rate) == text
