"""The plan file: the reference plan of spec §2 loads exactly, and every broken rule is
rejected with the file, the exact path and the rule (spec §5)."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from openfeature_canary import PlanError, UnknownFlagError
from openfeature_canary.plan import (
    DecisionRules,
    RolloutPlan,
    Stage,
    TelemetryConfig,
    Trigger,
    load_plan,
    parse_plan,
)

F1 = "dataservice-read-canary"
F2 = "dataservice-user-read-canary"
Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture
def plan_data(example_plan_path: Path) -> dict[str, Any]:
    """The reference plan as plain data, a fresh copy per test."""
    with example_plan_path.open("rb") as fh:
        return copy.deepcopy(tomllib.load(fh))


def _set(*path: str | int, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
        target[path[-1]] = value

    return mutate


def _del(*path: str | int) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)

    return mutate


S0 = ("flags", F1, "stages", 0)
S1 = ("flags", F1, "stages", 1)
T0 = ("flags", F1, "triggers", 0)
T1 = ("flags", F1, "triggers", 1)

# (id, mutation of the reference plan, expected message substring with its exact path)
INVALID: list[tuple[str, Mutation, str]] = [
    # unknown keys, at every level
    ("top-unknown", _set("stor", value="memory://"), "stor: unknown key (allowed:"),
    ("flag-unknown", _set("flags", F1, "tiks", value="5s"), f"flags.{F1}.tiks: unknown key"),
    ("stage-unknown", _set(*S0, "percnt", value=5), f"flags.{F1}.stages[0].percnt: unknown key"),
    ("trigger-unknown", _set(*T0, "abov", value=1), f"flags.{F1}.triggers[0].abov: unknown key"),
    ("telemetry-unknown", _set("telemetry", "uri", value="x"), "telemetry.uri: unknown key"),
    ("reports-unknown", _set("reports", "folder", value="x"), "reports.folder: unknown key"),
    # flags table
    ("flags-missing", _del("flags"), "flags: is required"),
    ("flags-empty", _set("flags", value={}), "flags: must define at least one flag"),
    ("flags-not-table", _set("flags", value=[1]), "flags: must be a table, got list"),
    ("flag-not-table", _set("flags", F1, value=3), f"flags.{F1}: must be a table, got int"),
    ("flag-key-blank", _set("flags", " ", value={}), "flags. : flag key must not be empty"),
    # flag-level fields
    (
        "scheme",
        _set("flags", F1, "scheme", value="md5"),
        f"flags.{F1}.scheme: must be one of flagd, flagd-cbor, got 'md5'",
    ),
    ("bucket-by-type", _set("flags", F1, "bucket_by", value=7), "bucket_by: must be a string"),
    (
        "bucket-by-empty",
        _set("flags", F1, "bucket_by", value=" "),
        "bucket_by: must name the targeting key or a context attribute",
    ),
    (
        "env-override-blank",
        _set("flags", F1, "env_override", value=" "),
        f"flags.{F1}.env_override: must be a non-empty environment variable name",
    ),
    ("tick-malformed", _set("flags", F1, "tick", value="10"), f"flags.{F1}.tick: malformed"),
    ("tick-zero", _set("flags", F1, "tick", value="0s"), "tick: must be a positive duration"),
    ("tick-number", _set("flags", F1, "tick", value=10), f"flags.{F1}.tick: expected a duration"),
    (
        "source-error-for",
        _set("flags", F1, "source_error_for", value="soon"),
        f"flags.{F1}.source_error_for: malformed duration 'soon'",
    ),
    (
        "dry-run-type",
        _set("flags", F1, "dry_run", value="yes"),
        f"flags.{F1}.dry_run: must be true or false, got 'yes'",
    ),
    (
        "flag-min-samples",
        _set("flags", F1, "min_samples", value=0),
        f"flags.{F1}.min_samples: was replaced by evidence accumulated over the stage",
    ),
    (
        "flag-min-samples-type",
        _set("decisions", "power", value=1.0),
        "decisions.power: must be a probability in [0.5, 1), got 1",
    ),
    (
        "flag-on-no-go",
        _set("flags", F1, "on_no_go", value="abort"),
        f"flags.{F1}.on_no_go: must be one of rollback, pause, got 'abort'",
    ),
    # stages
    ("stages-missing", _del("flags", F1, "stages"), f"flags.{F1}.stages: is required"),
    (
        "stages-empty",
        _set("flags", F1, "stages", value=[]),
        f"flags.{F1}.stages: must list at least one stage",
    ),
    (
        "stages-not-array",
        _set("flags", F1, "stages", value="5,25"),
        f"flags.{F1}.stages: must be an array of tables, got str",
    ),
    ("stage-not-table", _set(*S0, value=5), f"flags.{F1}.stages[0]: must be a table, got int"),
    ("percent-missing", _del(*S0, "percent"), f"flags.{F1}.stages[0].percent: is required"),
    (
        "percent-type",
        _set(*S0, "percent", value="5%"),
        f"flags.{F1}.stages[0].percent: must be a number, got str",
    ),
    (
        "percent-bool",
        _set(*S0, "percent", value=True),
        f"flags.{F1}.stages[0].percent: must be a number, got bool",
    ),
    (
        "percent-nan",
        _set(*S0, "percent", value=float("nan")),
        f"flags.{F1}.stages[0].percent: must be a finite number",
    ),
    (
        "percent-zero",
        _set(*S0, "percent", value=0),
        "stages[0].percent: must be in (0, 100], got 0",
    ),
    (
        "percent-over",
        _set(*S0, "percent", value=101),
        f"flags.{F1}.stages[0].percent: must be in (0, 100], got 101",
    ),
    (
        "percent-not-increasing",
        _both(_set(*S0, "percent", value=50), _set(*S1, "percent", value=25)),
        f"flags.{F1}.stages[1].percent: must be greater than the previous stage (50)",
    ),
    (
        "percent-equal",
        _set("flags", F1, "stages", 2, "percent", value=25),
        f"flags.{F1}.stages[2].percent: must be greater than the previous stage (25)",
    ),
    ("duration-missing", _del(*S0, "duration"), f"flags.{F1}.stages[0].duration: is required"),
    (
        "duration-malformed",
        _set(*S0, "duration", value="10 minutes"),
        f"flags.{F1}.stages[0].duration: malformed duration '10 minutes'",
    ),
    (
        "duration-zero",
        _set(*S0, "duration", value="0m"),
        f"flags.{F1}.stages[0].duration: must be a positive duration, got '0m'",
    ),
    (
        "duration-negative",
        _set(*S0, "duration", value="-5m"),
        f"flags.{F1}.stages[0].duration: malformed duration '-5m'",
    ),
    (
        "window-longer",
        _set(*S0, "window", value="11m"),
        f"flags.{F1}.stages[0].window: must not be longer than the stage's duration",
    ),
    (
        "window-malformed",
        _set(*S0, "window", value="1 min"),
        f"flags.{F1}.stages[0].window: malformed duration",
    ),
    (
        "error-rate-over",
        _set(*S0, "max_error_rate", value=1.5),
        f"flags.{F1}.stages[0].max_error_rate: must be a rate in [0, 1], got 1.5",
    ),
    (
        "error-rate-negative",
        _set(*S0, "max_error_rate", value=-0.1),
        f"flags.{F1}.stages[0].max_error_rate: must be a rate in [0, 1], got -0.1",
    ),
    (
        "p95-zero",
        _set(*S0, "max_p95_ms", value=0),
        f"flags.{F1}.stages[0].max_p95_ms: must be positive, got 0",
    ),
    (
        "p99-negative",
        _set(*S0, "max_p99_ms", value=-1),
        f"flags.{F1}.stages[0].max_p99_ms: must be positive, got -1",
    ),
    (
        "stage-min-samples",
        _set(*S0, "min_samples", value=60),
        f"flags.{F1}.stages[0].min_samples: was replaced by evidence accumulated over the stage",
    ),
    (
        "stage-max-failed",
        _set("flags", F1, "decisions", "detect_error_rate", value=0.001),
        f"flags.{F1}.decisions.detect_error_rate: must be above stage 1's max_error_rate (0.001)",
    ),
    (
        "stage-on-no-go",
        _set(*S0, "on_no_go", value="ignore"),
        f"flags.{F1}.stages[0].on_no_go: must be one of rollback, pause, got 'ignore'",
    ),
    # triggers
    (
        "triggers-not-array",
        _set("flags", F1, "triggers", value={}),
        f"flags.{F1}.triggers: must be an array of tables, got dict",
    ),
    ("trigger-name-missing", _del(*T0, "name"), f"flags.{F1}.triggers[0].name: is required"),
    ("trigger-signal-missing", _del(*T0, "signal"), f"flags.{F1}.triggers[0].signal: is required"),
    (
        "trigger-signal-unknown",
        _set(*T0, "signal", value="latency"),
        f"flags.{F1}.triggers[0].signal: unknown signal 'latency' (known: ",
    ),
    (
        "trigger-no-operator",
        _del(*T0, "above"),
        f"flags.{F1}.triggers[0]: needs exactly one of above, at_least, below, at_most (found 0)",
    ),
    (
        "trigger-two-operators",
        _set(*T0, "below", value=10),
        f"flags.{F1}.triggers[0]: needs exactly one of above, at_least, below, at_most (found 2)",
    ),
    (
        "trigger-threshold-type",
        _set(*T0, "above", value="150ms"),
        f"flags.{F1}.triggers[0].above: must be a number, got str",
    ),
    (
        "trigger-rate-over",
        _set(*T1, "at_least", value=5),
        f"flags.{F1}.triggers[1].at_least: error_rate is a rate: must be in [0, 1], got 5",
    ),
    (
        "trigger-acceptance-negative",
        _set("flags", F1, "triggers", 3, "below", value=-0.5),
        f"flags.{F1}.triggers[3].below: telemetry_acceptance is a rate: must be in [0, 1]",
    ),
    (
        "trigger-for-malformed",
        _set(*T0, "for", value="five minutes"),
        f"flags.{F1}.triggers[0].for: malformed duration 'five minutes'",
    ),
    (
        "trigger-for-zero",
        _set(*T0, "for", value="0s"),
        f"flags.{F1}.triggers[0].for: must be a positive duration",
    ),
    (
        "trigger-window-zero",
        _set("flags", F1, "triggers", 4, "window", value="0m"),
        f"flags.{F1}.triggers[4].window: must be a positive duration",
    ),
    (
        "trigger-occurrences",
        _set("flags", F1, "triggers", 4, "occurrences", value=0),
        f"flags.{F1}.triggers[4].occurrences: must be >= 1, got 0",
    ),
    (
        "trigger-for-and-occurrences",
        _set(*T0, "occurrences", value=2),
        f"flags.{F1}.triggers[0]: use either 'for' (sustained) or 'occurrences' (Nth breach)",
    ),
    (
        "trigger-on-error",
        _set(*T0, "on_error", value="pause"),
        f"flags.{F1}.triggers[0].on_error: must be one of rollback, ignore, got 'pause'",
    ),
    (
        "trigger-duplicate",
        _set(*T1, "name", value="p95_breach"),
        f"flags.{F1}.triggers[1].name: duplicate trigger name 'p95_breach'",
    ),
    # after
    (
        "after-unknown",
        _set("flags", F2, "after", value="nope"),
        f"flags.{F2}.after: names an unknown flag 'nope'",
    ),
    (
        "after-self",
        _set("flags", F1, "after", value=F1),
        f"flags.{F1}.after: forms a cycle ({F1} -> {F1})",
    ),
    (
        "after-cycle",
        _set("flags", F1, "after", value=F2),
        f"flags.{F1}.after: forms a cycle ({F1} -> {F2} -> {F1})",
    ),
    (
        "after-chain-to-unknown",
        _both(_set("flags", F1, "after", value=F2), _set("flags", F2, "after", value="nope")),
        f"flags.{F2}.after: names an unknown flag 'nope'",
    ),
    # telemetry, reports, store, signals
    (
        "telemetry-both",
        _set("telemetry", "url", value="http://127.0.0.1:1"),
        "telemetry: give either url or url_env, not both",
    ),
    (
        "telemetry-url-scheme",
        _both(_del("telemetry", "url_env"), _set("telemetry", "url", value="ftp://x")),
        "telemetry.url: must start with http:// or https://, got 'ftp://x'",
    ),
    ("telemetry-app-type", _set("telemetry", "app", value=1), "telemetry.app: must be a string"),
    (
        "telemetry-timeout",
        _set("telemetry", "timeout", value="never"),
        "telemetry.timeout: malformed duration 'never'",
    ),
    ("telemetry-not-table", _set("telemetry", value="A8"), "telemetry: must be a table, got str"),
    ("reports-dir-type", _set("reports", "dir", value=3), "reports.dir: must be a string, got int"),
    ("store-type", _set("store", value=1), "store: must be a string, got int"),
    ("signals-unknown", _set("signals", value={"p95": "x"}), "signals.p95: unknown signal"),
    (
        "signals-empty-query",
        _set("signals", value={"error_rate": " "}),
        "signals.error_rate: must be a non-empty PromQL string",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, msg) for _, m, msg in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_parse_plan_broken_rule_raises_plan_error_naming_path_and_rule(
    plan_data: dict[str, Any], mutate: Mutation, message: str
) -> None:
    mutate(plan_data)
    with pytest.raises(PlanError) as info:
        parse_plan(plan_data, source="plan.toml")
    text = str(info.value)
    assert message in text
    assert text.startswith("plan.toml: ")
    assert info.value.source == "plan.toml"


def test_parse_plan_error_carries_path_attribute(plan_data: dict[str, Any]) -> None:
    plan_data["flags"][F1]["stages"][3]["percent"] = 50
    with pytest.raises(PlanError) as info:
        parse_plan(plan_data)
    assert info.value.path == f"flags.{F1}.stages[3].percent"
    assert str(info.value) == (
        f"<plan>: flags.{F1}.stages[3].percent: must be greater than the previous stage (50)"
    )


def test_parse_plan_top_level_not_a_table_raises_plan_error() -> None:
    with pytest.raises(PlanError, match=r"<top>: must be a table, got list"):
        parse_plan([1, 2])  # type: ignore[arg-type]


def test_parse_plan_reference_data_is_valid(plan_data: dict[str, Any]) -> None:
    # Guards the table above: each case fails because of its mutation, not the base.
    assert set(parse_plan(plan_data).flags) == {F1, F2}


# ------------------------------------------------------------------ the reference plan (spec §2)

STAGES_SPEC = [
    # percent, duration, window, max P95 ms, max 5xx rate
    (5, 600, 60, 150, 0.001),
    (25, 1800, 300, 140, 0.002),
    (50, 3600, 600, 130, 0.003),
    (100, 86400, 900, 120, 0.005),
]


@pytest.mark.parametrize("flag_key", [F1, F2])
def test_load_plan_example_encodes_spec_stages(example_plan_path: Path, flag_key: str) -> None:
    flag = load_plan(example_plan_path).flag(flag_key)
    got = [
        (s.percent, s.duration_s, s.window_s, s.max_p95_ms, s.max_error_rate) for s in flag.stages
    ]
    assert got == STAGES_SPEC
    assert all(s.on_no_go == "rollback" for s in flag.stages)
    assert flag.decisions == DecisionRules()  # the documented defaults (docs/decisions.md)
    assert flag.bucket_by == "targetingKey"
    assert flag.scheme == "flagd"
    assert flag.tick_s == 10.0


@pytest.mark.parametrize("flag_key", [F1, F2])
def test_load_plan_example_encodes_spec_triggers(example_plan_path: Path, flag_key: str) -> None:
    flag = load_plan(example_plan_path).flag(flag_key)
    assert flag.triggers == (
        Trigger("p95_breach", "latency_p95_ms", "above", 150.0, for_s=300.0),
        Trigger("error_rate_breach", "error_rate", "at_least", 0.005, for_s=120.0),
        Trigger("ledger_mismatch", "ledger_mismatches", "above", 0.0),
        Trigger("telemetry_acceptance", "telemetry_acceptance", "below", 0.99),
        Trigger("event_loop_lag", "event_loop_lag_ms", "at_least", 300.0, 600.0, occurrences=2),
    )
    assert [t.rule for t in flag.triggers] == [
        "latency_p95_ms > 150 for 5m",
        "error_rate ≥ 0.005 for 2m",
        "ledger_mismatches > 0",
        "telemetry_acceptance < 0.99",
        "event_loop_lag_ms ≥ 300, 2 times within 10m",
    ]


def test_load_plan_example_encodes_phases_and_telemetry(example_plan_path: Path) -> None:
    plan = load_plan(example_plan_path)
    assert list(plan.flags) == [F1, F2]
    assert plan.flag(F1).after is None
    assert plan.flag(F2).after == F1
    assert plan.flag(F1).env_override == "DATASERVICE_READ_CANARY"
    assert plan.telemetry == TelemetryConfig(app="scholarship_api", url_env="A8_URL")
    assert plan.telemetry.resolve_url({"A8_URL": "http://127.0.0.1:9"}) == "http://127.0.0.1:9"
    assert plan.telemetry.resolve_url({}) is None
    assert plan.reports.dir == "canary-reports"
    assert plan.source == str(example_plan_path)
    assert plan.thresholds_ms() == (120.0, 130.0, 140.0, 150.0, 300.0)


# ------------------------------------------------------------------ files


def test_load_plan_json_equals_toml(example_plan_path: Path, tmp_path: Path) -> None:
    with example_plan_path.open("rb") as fh:
        data = tomllib.load(fh)
    json_path = tmp_path / "plan.json"
    json_path.write_text(json.dumps(data), "utf-8")
    from_json = load_plan(json_path)
    from_toml = load_plan(example_plan_path)
    assert from_json.source == str(json_path)
    assert dataclasses.replace(from_json, source="x") == dataclasses.replace(from_toml, source="x")


def test_load_plan_missing_file_raises_plan_error_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(PlanError, match=rf"^{path}: plan file not found$"):
        load_plan(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.toml", "[flags\nx = 1", "malformed TOML"),
        ("bad.json", '{"flags": ', "malformed JSON"),
        ("latin1.toml", b"# caf\xe9\n", "not UTF-8 text"),
        ("list.json", "[1, 2]", "<top>: must be a table, got list"),
    ],
)
def test_load_plan_malformed_file_raises_plan_error_naming_file(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, "utf-8")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_load_plan_directory_raises_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=rf"^{tmp_path}: cannot read plan file"):
        load_plan(tmp_path)


def test_load_plan_invalid_file_names_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[flags.f]\n[[flags.f.stages]]\npercent = 50\nduration = "1m"\n'
        '[[flags.f.stages]]\npercent = 25\nduration = "1m"\n',
        "utf-8",
    )
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value) == (
        f"{path}: flags.f.stages[1].percent: must be greater than the previous stage (50)"
    )


# ------------------------------------------------------------------ defaults and helpers


def test_parse_plan_minimal_flag_gets_documented_defaults() -> None:
    plan = parse_plan({"flags": {"f": {"stages": [{"percent": 12.5, "duration": "1h30m"}]}}})
    flag = plan.flag("f")
    assert flag.stages == (Stage(percent=12.5, duration_s=5400.0, window_s=5400.0),)
    assert flag.decisions.false_rollback_budget == 0.05 and flag.decisions.holdback == 0
    assert (flag.tick_s, flag.source_error_for_s, flag.env_override) == (10.0, 60.0, None)
    assert plan.telemetry == TelemetryConfig()
    assert plan.store is None
    assert isinstance(plan, RolloutPlan)


def test_parse_plan_flag_defaults_apply_to_stages_unless_overridden() -> None:
    plan = parse_plan(
        {
            "decisions": {"power": 0.9, "holdback": 5},
            "flags": {
                "f": {
                    "on_no_go": "pause",
                    "decisions": {"power": 0.95},
                    "stages": [
                        {"percent": 5, "duration": "10m"},
                        {"percent": 100, "duration": "10m", "on_no_go": "rollback"},
                    ],
                },
                "g": {"stages": [{"percent": 5, "duration": "10m"}]},
            },
        }
    )
    first, second = plan.flag("f").stages
    assert (first.on_no_go, second.on_no_go) == ("pause", "rollback")
    # A flag's [decisions] overrides the plan's key by key.
    assert (plan.flag("f").decisions.power, plan.flag("f").decisions.holdback) == (0.95, 5.0)
    assert plan.flag("g").decisions.power == 0.9
    # The holdback keeps a live baseline in the final stage only.
    assert (plan.flag("f").serving_percent(1), plan.flag("f").serving_percent(2)) == (5, 95)


@pytest.mark.parametrize(
    ("op", "value", "breached"),
    [
        ("above", 150.0, False),
        ("above", 150.1, True),
        ("at_least", 150.0, True),
        ("at_least", 149.9, False),
        ("below", 150.0, False),
        ("below", 149.9, True),
        ("at_most", 150.0, True),
        ("at_most", 150.1, False),
    ],
)
def test_trigger_breached_follows_operator_at_the_boundary(
    op: Any, value: float, breached: bool
) -> None:
    assert Trigger("t", "latency_p95_ms", op, 150.0).breached(value) is breached


def test_rollout_plan_unknown_flag_raises_unknown_flag_error_listing_known(
    example_plan_path: Path,
) -> None:
    plan = load_plan(example_plan_path)
    with pytest.raises(UnknownFlagError, match=rf"unknown flag 'x' \(plan has: {F1}, {F2}\)"):
        plan.flag("x")


def test_flag_plan_stage_is_one_based(example_plan_path: Path) -> None:
    flag = load_plan(example_plan_path).flag(F1)
    assert flag.stage(1).percent == 5
    assert flag.stage(4).percent == 100
    for bad in (0, 5):
        with pytest.raises(IndexError, match=r"stage .* is not in 1\.\.4"):
            flag.stage(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("24h", 86400), ("500ms", 0.5), ("1.5h", 5400)],
)
def test_parse_plan_duration_forms_are_accepted(text: str, seconds: float) -> None:
    plan = parse_plan(
        {"flags": {"f": {"tick": text, "stages": [{"percent": 5, "duration": "1d"}]}}}
    )
    assert plan.flag("f").tick_s == seconds
