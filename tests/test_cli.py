"""The ``openfeature-canary`` command line: outputs, exit codes, persistence across runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from openfeature_canary import ManualClock, bucket, in_rollout, load_plan
from openfeature_canary._format import format_span
from openfeature_canary.cli import main, run
from openfeature_canary.cli._format import format_pct

READ = "dataservice-read-canary"
USER = "dataservice-user-read-canary"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
CONSOLE_SCRIPT = Path(sys.executable).parent / "openfeature-canary"


class Cli:
    """Runs the CLI in-process at a controllable time and returns (code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], plan: Path) -> None:
        self.capsys = capsys
        self.plan = plan
        self.clock = ManualClock(start=T0)

    def __call__(self, *argv: str, plan: bool = True) -> tuple[int, str, str]:
        args = [*argv, "--plan", str(self.plan)] if plan else list(argv)
        code = run(args, clock=self.clock)
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err


@pytest.fixture
def cli(capsys, example_plan_path):
    return Cli(capsys, example_plan_path)


@pytest.fixture
def store(tmp_path):
    # A file store's folder must exist (the store does not create it), as on a real host.
    (tmp_path / "state").mkdir()
    return f"file://{tmp_path / 'state' / 'state.json'}"


def _status_json(cli: Cli, store: str, *flag: str) -> dict[str, dict[str, object]]:
    code, out, err = cli("status", *flag, "--json", "--store", store)
    assert (code, err) == (0, "")
    return {f["flag"]: f for f in json.loads(out)["flags"]}


def _assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("openfeature-canary: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------- plan


def test_plan_check_example_summarises_each_flag_and_ok(cli):
    code, out, err = cli("plan", "check")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{READ}: 4 stages (5% for 10m, 25% for 30m, 50% for 1h, 100% for 24h), 5 triggers, "
        "env override DATASERVICE_READ_CANARY",
        f"{USER}: 4 stages (5% for 10m, 25% for 30m, 50% for 1h, 100% for 24h), 5 triggers, "
        f"after {READ}",
        f"plan OK: 2 flags in {cli.plan}",
    ]


def test_plan_check_default_plan_in_current_folder_used(
    capsys, example_plan_path, tmp_path, monkeypatch
):
    (tmp_path / "canary_plan.toml").write_bytes(example_plan_path.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "check"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "plan OK: 2 flags in canary_plan.toml"


def test_plan_check_no_plan_in_current_folder_exits_2_with_hint(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "check"]) == 2
    _assert_one_error_line(
        capsys.readouterr().err, "canary_plan.toml: plan file not found", "give --plan PATH"
    )


def test_plan_render_default_writes_reports_dir_with_every_stage_and_trigger(
    capsys, example_plan_path, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "render", "--plan", str(example_plan_path)]) == 0
    target = Path("canary-reports") / "canary_plan.md"
    assert capsys.readouterr().out == f"{target}\n"
    text = (tmp_path / target).read_text("utf-8")
    plan = load_plan(example_plan_path)
    for flag in plan.flags.values():
        assert f"## `{flag.key}`" in text
        for i, stage in enumerate(flag.stages, start=1):
            row = f"| {i} | {stage.percent:g} % | {format_span(stage.duration_s)}"
            assert row in text, f"stage {i} of {flag.key}"
        for trigger in flag.triggers:
            assert f"| `{trigger.name}` | {trigger.rule} |" in text


def test_plan_render_out_path_written_and_printed(cli, tmp_path):
    out_path = tmp_path / "deep" / "plan.md"
    code, out, err = cli("plan", "render", "--out", str(out_path))
    assert (code, out, err) == (0, f"{out_path}\n", "")
    assert out_path.read_text("utf-8").startswith("# Canary rollout plan\n")
    assert [p.name for p in out_path.parent.iterdir()] == ["plan.md"]  # no temp file left


def test_plan_render_unwritable_out_exits_2(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = cli("plan", "render", "--out", str(blocker / "plan.md"))
    assert (code, out) == (2, "")
    _assert_one_error_line(err, f"cannot write {blocker / 'plan.md'}")


def test_plan_without_action_exits_2(cli):
    code, _, err = cli("plan")
    assert code == 2
    _assert_one_error_line(err, "plan: the following arguments are required: ACTION")


# --------------------------------------------------------------------------- status


def test_status_fresh_store_lists_every_flag_pending(cli, store):
    code, out, err = cli("status", "--store", store)
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == [
        "FLAG",
        "STATUS",
        "STAGE",
        "PERCENT",
        "SINCE",
        "LEFT",
        "REASON",
        "LAST",
        "DECISION",
    ]
    assert [r.split()[:7] for r in rows] == [
        [READ, "pending", "0/4", "0%", "-", "-", "-"],
        [USER, "pending", "0/4", "0%", "-", "-", "-"],
    ]
    # aligned: every column starts at the same offset in every row
    assert len({line.index("pending") for line in rows}) == 1
    assert header.index("STATUS") == rows[0].index("pending")


def test_status_json_parses_with_fields(cli, store):
    assert cli("start", READ, "--force", "--by", "alice", "--store", store)[0] == 0
    code, out, err = cli("status", "--json", "--store", store)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["store"] == store
    assert data["plan"] == str(cli.plan)
    read, user = data["flags"]
    assert read == {
        "flag": READ,
        "status": "running",
        "stage": 1,
        "stages": 4,
        "percent": 5.0,
        "since": "2026-01-01T00:00:00Z",
        "since_epoch": T0,
        "reason": "started",
        "requested": None,
        "version": 1,
        "left_s": 600.0,  # the whole 10m stage: no time has passed
        "next_tick_epoch": None,  # no tick has folded data in yet
        "next": "next tick within 10s; gate may advance in 10m (10m stage)",
        "last_decision": {
            "at": "2026-01-01T00:00:00Z",
            "at_epoch": T0,
            "action": "start",
            "reason": "operator",
            "rule": "command:start",
            "by": "operator:alice",
            "numbers": {"to_stage": 1, "to_pct": 5.0},
        },
    }
    assert user["status"] == "pending"
    assert user["since"] is None
    assert user["last_decision"] is None


def test_status_one_flag_shows_only_that_flag(cli, store):
    code, out, _ = cli("status", USER, "--store", store)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["FLAG", USER]


def test_status_unknown_flag_exits_2_naming_known_flags(cli):
    code, out, err = cli("status", "nope")
    assert (code, out) == (2, "")
    _assert_one_error_line(err, "unknown flag 'nope'", READ, USER)


# --------------------------------------------------------------------------- commands


def test_commands_full_sequence_over_file_store_persist_between_runs(cli, store):
    steps = [
        (
            ("start", READ, "--force"),
            f"{READ}: running, stage 1/4, 5%",
            ("running", 1, 5.0, "started"),
        ),
        (
            ("promote", READ, "--by", "alice"),
            f"{READ}: running, stage 2/4, 25%",
            ("running", 2, 25.0, "operator"),
        ),
        (
            ("pause", READ, "--by", "bob"),
            f"{READ}: paused, stage 2/4, 25% (reason: operator)",
            ("paused", 2, 25.0, "operator"),
        ),
        (("resume", READ), f"{READ}: running, stage 2/4, 25%", ("running", 2, 25.0, "resumed")),
        (
            ("rollback", READ, "--reason", "p95_breach"),
            f"{READ}: rolled_back, stage 0/4, 0% (reason: p95_breach)",
            ("rolled_back", 0, 0.0, "p95_breach"),
        ),
        (("reset", READ), f"{READ}: pending, stage 0/4, 0%", ("pending", 0, 0.0, "reset")),
    ]
    for version, (argv, line, (status, stage, percent, reason)) in enumerate(steps, start=1):
        cli.clock.advance(60)
        code, out, err = cli(*argv, "--store", store)
        assert (code, out, err) == (0, f"{line}\n", ""), argv
        shown = _status_json(cli, store, READ)[READ]
        assert (shown["status"], shown["stage"], shown["percent"], shown["reason"]) == (
            status,
            stage,
            percent,
            reason,
        )
        assert shown["version"] == version
        assert shown["since_epoch"] == T0 + 60 * version
        assert shown["last_decision"]["action"] == ("advance" if argv[0] == "promote" else argv[0])
    # the text status shows the last decision short: action and reason (no stage left)
    code, out, _ = cli("status", READ, "--store", store)
    assert code == 0
    row = out.splitlines()[1]
    assert row.split()[:7] == [READ, "pending", "0/4", "0%", "2026-01-01T00:06:00Z", "-", "reset"]
    assert row.endswith("reset operator")


def test_promote_after_rollback_refused_exit_1_state_kept(cli, store):
    for argv in (("start", READ, "--force"), ("rollback", READ, "--reason", "ledger_mismatch")):
        assert cli(*argv, "--store", store)[0] == 0
    code, out, err = cli("promote", READ, "--store", store)
    assert (code, out) == (1, "")
    _assert_one_error_line(err, f"cannot promote {READ}: it is rolled_back", "reset it first")
    shown = _status_json(cli, store, READ)[READ]
    assert (shown["status"], shown["version"]) == ("rolled_back", 2)


@pytest.mark.parametrize("force", [(), ("--force",)], ids=["request", "force"])
def test_start_after_flag_not_completed_refused_exit_1(cli, store, force):
    code, _, err = cli("start", USER, *force, "--store", store)
    assert code == 1
    _assert_one_error_line(err, f"runs after {READ}, which is pending")
    assert _status_json(cli, store, USER)[USER]["version"] == 0


def test_promote_past_last_stage_completes_with_skip_soak(cli, store):
    cli("start", READ, "--force", "--store", store)
    lines = [cli("promote", READ, "--store", store)[1].strip() for _ in range(3)]
    lines.append(cli("promote", READ, "--skip-soak", "--store", store)[1].strip())
    assert lines == [
        f"{READ}: running, stage 2/4, 25%",
        f"{READ}: running, stage 3/4, 50%",
        f"{READ}: running, stage 4/4, 100%",
        f"{READ}: completed, stage 4/4, 100%",
    ]
    # phase 2 may start now
    assert cli("start", USER, "--force", "--store", store)[:2] == (
        0,
        f"{USER}: running, stage 1/4, 5%\n",
    )


def test_start_records_request_flag_stays_pending(cli, store):
    code, out, err = cli("start", READ, "--store", store)
    assert (code, err) == (0, "")
    line, hint = out.splitlines()
    assert line == f"{READ}: pending, stage 0/4, 0% (start requested)"
    assert "the process that runs the policy starts it" in hint
    assert "start --force" in hint
    shown = _status_json(cli, store, READ)[READ]
    assert {k: shown[k] for k in ("status", "stage", "percent", "requested", "reason")} == {
        "status": "pending",
        "stage": 0,
        "percent": 0.0,
        "requested": "start",
        "reason": "start requested",
    }
    # the status itself was not written: no "since" for a flag that never left pending
    assert (shown["since"], shown["since_epoch"], shown["version"]) == (None, None, 1)
    assert shown["last_decision"]["action"] == "request_start"
    code, out, _ = cli("status", READ, "--store", store)
    assert code == 0
    assert out.splitlines()[1].split()[:6] == [
        READ,
        "pending",
        "(start",
        "requested)",
        "0/4",
        "0%",
    ]
    assert out.splitlines()[1].split()[6] == "-"  # since


def test_start_already_requested_refused_exit_1(cli, store):
    assert cli("start", READ, "--store", store)[0] == 0
    code, out, err = cli("start", READ, "--store", store)
    assert (code, out) == (1, "")
    _assert_one_error_line(err, f"cannot start {READ}: a start is requested already")
    assert _status_json(cli, store, READ)[READ]["version"] == 1


def test_start_force_starts_at_stage_one(cli, store):
    code, out, err = cli("start", READ, "--force", "--store", store)
    assert (code, out, err) == (0, f"{READ}: running, stage 1/4, 5%\n", "")
    shown = _status_json(cli, store, READ)[READ]
    assert (shown["status"], shown["stage"], shown["percent"], shown["requested"]) == (
        "running",
        1,
        5.0,
        None,
    )


def test_start_force_after_request_starts_and_clears_request(cli, store):
    assert cli("start", READ, "--store", store)[0] == 0
    code, out, _ = cli("start", READ, "--force", "--store", store)
    assert (code, out) == (0, f"{READ}: running, stage 1/4, 5%\n")
    shown = _status_json(cli, store, READ)[READ]
    assert (shown["status"], shown["requested"], shown["version"]) == ("running", None, 2)


ROLLOUT_COMMANDS = [
    ("status",),
    ("start", READ),
    ("start", READ, "--force"),
    ("promote", READ),
    ("pause", READ),
    ("resume", READ),
    ("rollback", READ, "--reason", "manual_check"),
    ("reset", READ),
]


@pytest.mark.parametrize("argv", ROLLOUT_COMMANDS, ids=lambda a: " ".join(a[:1] + a[2:3]))
def test_rollout_command_memory_store_refused_exit_2(cli, argv):
    # memory:// is no service's store: a change there would be lost, a status meaningless.
    code, out, err = cli(*argv, "--store", "memory://")
    assert (code, out) == (2, "")
    _assert_one_error_line(err, "memory://", "--store file://")


@pytest.mark.parametrize("argv", ROLLOUT_COMMANDS, ids=lambda a: " ".join(a[:1] + a[2:3]))
def test_rollout_command_no_store_anywhere_exits_2_naming_plan(cli, argv):
    code, out, err = cli(*argv)  # the example plan has no `store`
    assert (code, out) == (2, "")
    _assert_one_error_line(err, "no store", "--store file://", str(cli.plan))


def test_rollout_command_absolute_path_store_suggests_file_url(cli, tmp_path):
    path = tmp_path / "state.json"
    code, out, err = cli("start", READ, "--store", str(path))
    assert (code, out) == (2, "")
    _assert_one_error_line(err, f"did you mean file://{path}?")  # file:///abs/path
    assert not path.exists()


@pytest.mark.parametrize("argv", ROLLOUT_COMMANDS, ids=lambda a: " ".join(a[:1] + a[2:3]))
def test_rollout_command_file_store_folder_missing_exits_2_creates_nothing(cli, tmp_path, argv):
    missing = tmp_path / "missing"
    code, out, err = cli(*argv, "--store", f"file://{missing / 'state.json'}")
    assert (code, out) == (2, "")
    _assert_one_error_line(err, f"folder {missing} does not exist")
    # no folder, state, lock, outbox or report: tmp_path is also the current folder
    assert list(tmp_path.iterdir()) == []


def test_store_from_plan_used_when_no_option(capsys, example_plan_path, tmp_path):
    state = tmp_path / "plan-store.json"
    plan = tmp_path / "plan.toml"
    plan.write_text(f'store = "file://{state}"\n' + example_plan_path.read_text("utf-8"))
    assert main(["start", READ, "--plan", str(plan)]) == 0
    assert capsys.readouterr().err == ""
    stored = json.loads(state.read_text())["flags"][READ]
    assert (stored["status"], stored["requested"]) == ("pending", "start")


def test_options_before_command_accepted(cli, store):
    argv = ("--plan", str(cli.plan), "--store", store, "start", READ, "--force")
    code, out, _ = cli(*argv, plan=False)
    assert (code, out) == (0, f"{READ}: running, stage 1/4, 5%\n")


# --------------------------------------------------------------------------- bad input


STAGES_50_25 = """
[flags.f]
[[flags.f.stages]]
percent = 50
duration = "1m"
[[flags.f.stages]]
percent = 25
duration = "1m"
"""


@pytest.mark.parametrize(
    ("case", "argv", "fragments"),
    [
        (
            "missing plan",
            ["status", "--plan", "{tmp}/nope.toml"],
            ["nope.toml: plan file not found"],
        ),
        (
            "malformed toml",
            ["plan", "check", "--plan", "{malformed}"],
            ["malformed.toml: malformed TOML"],
        ),
        (
            "invalid plan",
            ["plan", "check", "--plan", "{invalid}"],
            ["invalid.toml: flags.f.stages[1].percent: must be greater than the previous stage"],
        ),
        (
            "unknown flag",
            ["start", "nope", "--plan", "{example}"],
            ["unknown flag 'nope' (plan has: ", f"{READ}, {USER})"],
        ),
        (
            "bad store scheme",
            ["start", READ, "--plan", "{example}", "--store", "bogus://x"],
            ["store URL 'bogus://x': unknown scheme 'bogus'"],
        ),
        (
            "relative file store",
            ["status", "--plan", "{example}", "--store", "file://state.json"],
            ["store URL 'file://state.json'", "absolute path"],
        ),
        (
            "rollback without reason",
            ["rollback", READ, "--plan", "{example}"],
            ["the following arguments are required: --reason"],
        ),
        (
            "rollback blank reason",
            ["rollback", READ, "--reason", " ", "--plan", "{example}"],
            ["rollback: --reason must not be empty"],
        ),
        ("unknown command", ["frobnicate"], ["invalid choice: 'frobnicate'"]),
        ("unknown option", ["status", "--bogus", "--plan", "{example}"], ["--bogus"]),
        ("no command", [], ["required: COMMAND"]),
        (
            "bucket empty unit",
            ["bucket", READ, "", "--plan", "{example}"],
            ["UNIT must not be empty"],
        ),
        (
            "corrupt state file",
            ["status", "--plan", "{example}", "--store", "file://{corrupt}"],
            ["corrupt state file"],
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys, tmp_path, example_plan_path, case, argv, fragments
):
    files = {
        "malformed": ("malformed.toml", "[flags.f\npercent = 5"),
        "invalid": ("invalid.toml", STAGES_50_25),
        "corrupt": ("corrupt.json", "{not json"),
    }
    values = {"tmp": str(tmp_path), "example": str(example_plan_path)}
    for name, (filename, text) in files.items():
        (tmp_path / filename).write_text(text)
        values[name] = str(tmp_path / filename)
    code = main([a.format(**values) for a in argv])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, ""), case
    _assert_one_error_line(captured.err, *fragments)


def test_help_exits_0_and_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("plan", "status", "start", "promote", "pause", "resume", "rollback", "reset"):
        assert command in out
    assert "bucket" in out and "demo" in out


# --------------------------------------------------------------------------- bucket


@pytest.mark.parametrize("unit", ["user-42", "req-0001", "7c9e6679-7425-40de-944b-e07fc1f90ae7"])
def test_bucket_output_agrees_with_bucketing(cli, store, unit):
    code, out, err = cli("bucket", READ, unit, "--store", store)
    assert (code, err) == (0, "")
    first, *stage_lines, now = out.splitlines()
    assert re.search(r"is in bucket (\d+) of 0\.\.9999", first).group(1) == str(bucket(READ, unit))
    plan = load_plan(cli.plan).flag(READ)
    assert len(stage_lines) == len(plan.stages)
    for i, (line, stage) in enumerate(zip(stage_lines, plan.stages, strict=True), start=1):
        expected = "in" if in_rollout(READ, unit, stage.percent) else "out"
        assert line.split() == ["stage", str(i), format_pct(stage.percent), expected]
    assert now == "now: pending, stage 0/4, 0%  out"


def test_bucket_no_store_shows_stages_without_current_state(cli, tmp_path):
    code, out, err = cli("bucket", READ, "user-42")  # the example plan has no `store`
    assert (code, err) == (0, "")
    first, *stage_lines = out.splitlines()
    assert "is in bucket" in first
    assert [line.split()[:2] for line in stage_lines] == [["stage", str(i)] for i in range(1, 5)]
    assert list(tmp_path.iterdir()) == []


def test_bucket_cbor_scheme_flag_uses_its_scheme(capsys, tmp_path):
    plan = tmp_path / "cbor.toml"
    plan.write_text(
        '[flags.f]\nscheme = "flagd-cbor"\n[[flags.f.stages]]\npercent = 50\nduration = "1m"\n'
    )
    assert main(["bucket", "f", "user-42", "--plan", str(plan)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f"bucket {bucket('f', 'user-42', 'flagd-cbor')} of" in first
    assert "scheme flagd-cbor" in first


def test_bucket_running_flag_now_line_reflects_current_percent(cli, store):
    unit_in = next(u for u in (f"u{i}" for i in range(10_000)) if bucket(READ, u) < 500)
    cli("start", READ, "--force", "--store", store)
    code, out, _ = cli("bucket", READ, unit_in, "--store", store)
    assert code == 0
    assert out.splitlines()[1].split() == ["stage", "1", "5%", "in"]
    assert out.splitlines()[-1] == "now: running, stage 1/4, 5%  in"


# --------------------------------------------------------------------------- demo


def test_demo_help_handed_to_the_demo_exit_0(capsys):
    # `demo --help` is the demo's own help (its options), not this CLI's.
    assert main(["demo", "--help"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: openfeature-canary demo ")
    assert "--fault" in captured.out
    assert captured.err == ""


def test_demo_present_receives_its_arguments(monkeypatch):
    received: list[list[str]] = []
    demo = types.ModuleType("openfeature_canary.demo")

    def fake_main(argv: list[str]) -> int:
        received.append(argv)
        return 0

    demo.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "openfeature_canary.demo", demo)
    argv = ["--plan", "p.toml", "demo", "--fault", "latency", "--metrics-port", "9464", "--help"]
    assert main(argv) == 0
    assert received == [
        ["--plan", "p.toml", "--fault", "latency", "--metrics-port", "9464", "--help"]
    ]


# --------------------------------------------------------------------------- console script


def test_console_script_runs_commands_and_reports_errors(example_plan_path, tmp_path):
    assert CONSOLE_SCRIPT.exists(), "package not installed: pip install -e ."
    store = f"file://{tmp_path / 'state.json'}"

    def run_script(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CONSOLE_SCRIPT), *argv, "--plan", str(example_plan_path), "--store", store],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    started = run_script("start", READ, "--force")
    assert (started.returncode, started.stdout, started.stderr) == (
        0,
        f"{READ}: running, stage 1/4, 5%\n",
        "",
    )
    status = run_script("status", READ, "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["flags"][0]["status"] == "running"
    refused = run_script("resume", READ)
    assert refused.returncode == 1
    assert refused.stderr == f"openfeature-canary: error: cannot resume {READ}: it is running\n"


def test_rollback_by_operator_sends_event_and_appends_abort_report(
    tmp_path, monkeypatch, example_plan_path
):
    from openfeature_canary.demo._ingest_server import IngestServer

    flag = "dataservice-read-canary"
    store = f"file://{tmp_path}/state.json"
    common = ["--plan", str(example_plan_path), "--store", store]
    with IngestServer() as server:
        monkeypatch.setenv("A8_URL", server.url)
        assert main(["start", flag, "--force", *common]) == 0
        rollback = ["rollback", flag, "--reason", "manual_check", "--by", "dana"]
        assert main([*rollback, *common]) == 0
        rollbacks = server.named("canary_rollback")
    assert len(rollbacks) == 1
    assert rollbacks[0]["app"] == "scholarship_api"
    props = rollbacks[0]["properties"]
    assert (props["from_pct"], props["reason"], props["flag"]) == (5, "operator", flag)
    assert (props["note"], props["by"], props["rule"]) == (
        "manual_check",
        "operator:dana",
        "command:rollback",
    )
    abort = (tmp_path / "canary-reports" / "canary_abort.md").read_text()
    assert "manual_check" in abort and flag in abort


def test_bucket_undecodable_unit_exits_2_with_one_line(example_plan_path: Path) -> None:
    """A unit that is not valid text (bytes from the shell that are not UTF-8) is refused with
    one line, never a crash inside murmur3 nor a traceback."""
    argv = [sys.executable, "-m", "openfeature_canary", "bucket", READ, "\udcff"]
    done = subprocess.run(
        [*argv, "--plan", str(example_plan_path)],
        capture_output=True,
        text=True,
        errors="surrogateescape",
    )
    assert done.returncode == 2, done.stderr
    _assert_one_error_line(done.stderr, "not valid UTF-8 text")
