"""Bad input is refused in one line (issue 8, items 8 and 9).

- A stored state is validated like the plan: a value the engine could not have written is a
  ``StateStoreError`` naming the store, the flag and the field, and the safe side follows
  (the provider serves the old path and says why; the CLI exits 2).
- A malformed file, URL or value gives one clear line, never a traceback: a non-UTF-8 state
  file, deeply nested JSON or TOML, a NUL byte in a store URL, an empty store, a JSON plan
  with a repeated key, a percentage below the bucketing resolution.
- Property tests (hypothesis): the plan parser raises only ``PlanError`` and the state file
  parser only ``StateStoreError``, on arbitrary data and on mutations of real files, always in
  one line; and every state the engine writes reads back equal.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import Reason

from openfeature_canary import (
    LogEntry,
    PlanError,
    Rollout,
    RolloutPlan,
    RolloutState,
    StateStoreError,
    Status,
    TransitionError,
    load_plan,
    parse_plan,
)
from openfeature_canary.cli import run
from openfeature_canary.state import Verdict, WindowRecord, check_state_against_plan
from openfeature_canary.stores import FileStateStore, open_store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
PHASE2 = "dataservice-user-read-canary"
CTX = EvaluationContext(targeting_key="u-1")
DEEP = 100_000  # far beyond Python's recursion limit

# Every property test stays small: the file runs in a few seconds.
PROPERTY = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _one_error_line(err: str, *fragments: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("openfeature-canary: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _refused(*argv: str) -> str:
    """Run the CLI; it must exit 2 with nothing on stdout and one line on stderr."""
    code, out, err = _cli(*argv)
    assert (code, out) == (2, ""), err
    return _one_error_line(err)


# --------------------------------------------------------------------------- state values


def _engine_state() -> RolloutState:
    """A state as the engine writes it: running at stage 2, a log entry and a judged window."""
    return RolloutState(
        flag_key=FLAG,
        status=Status.RUNNING,
        stage=2,
        percent=25.0,
        since=1_800_000_600.0,
        reason="gates passed",
        version=3,
        log=(LogEntry(1_800_000_600.0, "advance", "gates passed", {"to_stage": 2, "n": 1204}),),
        windows=(WindowRecord(0, 1_800_000_600.0, 1_800_000_900.0, Verdict.PASS, 900, 88.5, 0.0),),
    )


def _as_json(state: RolloutState) -> str:
    return json.dumps(state.to_dict(), sort_keys=True)


def _write_states(path: Path, flags: Mapping[str, Any]) -> None:
    path.write_text(json.dumps({"format": 1, "flags": flags}), "utf-8")


def _entry(**changes: Any) -> dict[str, Any]:
    data = _engine_state().to_dict()
    data.update(changes)
    return data


def _without(key: str) -> dict[str, Any]:
    data = _entry()
    del data[key]
    return data


def _log(entry: Any) -> dict[str, Any]:
    return _entry(log=[entry])


def _window(**changes: Any) -> dict[str, Any]:
    window = _engine_state().windows[0].to_dict()
    window.update(changes)
    return _entry(windows=[window])


F = f"flags.{FLAG}"
BAD_ENTRIES: list[tuple[str, Any, str]] = [
    (
        "percent above 100",
        _entry(percent=500),
        f"{F}.percent: must be a number in [0, 100], got 500",
    ),
    ("percent negative", _entry(percent=-1), f"{F}.percent: must be a number in [0, 100], got -1"),
    (
        "percent NaN",
        _entry(percent=math.nan),
        f"{F}.percent: must be a number in [0, 100], got NaN",
    ),
    (
        "percent infinite",
        _entry(percent=math.inf),
        f"{F}.percent: must be a number in [0, 100], got Infinity",
    ),
    ("percent text", _entry(percent="5"), f'{F}.percent: must be a number in [0, 100], got "5"'),
    (
        "percent boolean",
        _entry(percent=True),
        f"{F}.percent: must be a number in [0, 100], got true",
    ),
    ("percent missing", _without("percent"), f"{F}.percent: is required"),
    ("stage negative", _entry(stage=-1), f"{F}.stage: must be an integer >= 0, got -1"),
    ("stage fraction", _entry(stage=1.5), f"{F}.stage: must be an integer >= 0, got 1.5"),
    (
        "stage while pending",
        _entry(status="pending", stage=2, percent=0.0),
        f"{F}.stage: must be 0 while pending, got 2",
    ),
    (
        "stage 0 while running",
        _entry(stage=0),
        f"{F}.stage: must be at least 1 while running, got 0",
    ),
    (
        "percent while rolled back",
        _entry(status="rolled_back", stage=0, percent=50.0),
        f"{F}.percent: must be 0 while rolled_back, got 50.0",
    ),
    (
        "flag_key of another flag",
        _entry(flag_key=PHASE2),
        f'{F}.flag_key: must be its entry\'s key "{FLAG}", got "{PHASE2}"',
    ),
    (
        "unknown status",
        _entry(status="maybe"),
        f'{F}.status: must be one of pending, running, paused, completed, rolled_back, got "maybe"',
    ),
    ("negative version", _entry(version=-1), f"{F}.version: must be an integer >= 0, got -1"),
    ("since NaN", _entry(since=math.nan), f"{F}.since: must be a finite number, got NaN"),
    (
        "since infinite",
        _entry(since=-math.inf),
        f"{F}.since: must be a finite number, got -Infinity",
    ),
    ("reason not text", _entry(reason=7), f"{F}.reason: must be a string, got 7"),
    (
        "requested unknown",
        _entry(requested="stop"),
        f"{F}.requested: must be empty or 'start', got \"stop\"",
    ),
    ("log not an array", _entry(log={}), f"{F}.log: must be an array, got an object"),
    ("log entry not an object", _log(5), f"{F}.log[0]: must be an object, got 5"),
    ("log entry without at", _log({"action": "start"}), f"{F}.log[0].at: is required"),
    (
        "log entry at infinite",
        _log({"at": math.inf, "action": "start"}),
        f"{F}.log[0].at: must be a finite number, got Infinity",
    ),
    (
        "log entry action not text",
        _log({"at": 1.0, "action": ["start"]}),
        f"{F}.log[0].action: must be a string, got an array",
    ),
    (
        "log entry numbers not an object",
        _log({"at": 1.0, "action": "start", "numbers": [1]}),
        f"{F}.log[0].numbers: must be an object, got an array",
    ),
    (
        "log entry number nested",
        _log({"at": 1.0, "action": "start", "numbers": {"n": {"x": 1}}}),
        f"{F}.log[0].numbers.n: must be a number, a string or null, got an object",
    ),
    (
        "window verdict unknown",
        _window(verdict="maybe"),
        f'{F}.windows[0].verdict: must be one of pass, fail, inconclusive, got "maybe"',
    ),
    ("window count negative", _window(n=-3), f"{F}.windows[0].n: must be an integer >= 0, got -3"),
    (
        "window p95 text",
        _window(p95_ms="fast"),
        f'{F}.windows[0].p95_ms: must be a number or null, got "fast"',
    ),
    ("entry not an object", [1, 2], f"{F}: must be an object, got an array"),
]


@pytest.mark.parametrize(
    ("entry", "detail"), [c[1:] for c in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES]
)
def test_file_store_bad_state_value_raises_one_line_naming_store_flag_and_field(
    tmp_path: Path, entry: Any, detail: str
) -> None:
    path = tmp_path / "state.json"
    _write_states(path, {FLAG: entry})
    before = path.read_bytes()
    store = FileStateStore(path)
    for read in (store.load_all, lambda: store.load(PHASE2)):
        with pytest.raises(StateStoreError) as info:
            read()
        assert str(info.value) == f"file://{path}: corrupt state file: {detail}"
    with pytest.raises(StateStoreError):  # a bad file is never overwritten
        store.save(RolloutState(PHASE2).evolve(), expected_version=0)
    assert path.read_bytes() == before


def test_file_store_engine_state_with_unknown_keys_and_non_finite_evidence_reads_back(
    tmp_path: Path,
) -> None:
    """The checks refuse what the engine cannot write, nothing more: a key a newer version
    adds is ignored, and a measured value may be infinite (a quantile in the +Inf bucket)."""
    state = _engine_state()
    window = WindowRecord(1, 1.0, 2.0, Verdict.FAIL, 80, math.inf, None, "P95 inf > 150")
    state = state.evolve(LogEntry(2.0, "hold", "x", {"value": math.nan}), windows=(window,))
    path = tmp_path / "state.json"
    _write_states(path, {FLAG: {**state.to_dict(), "added_later": [1]}})
    read = FileStateStore(path).load(FLAG)
    assert read is not None and _as_json(read) == _as_json(state)  # NaN equal to NaN
    assert read.windows[0].p95_ms == math.inf


def test_file_store_repeated_flag_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    entry = json.dumps(_entry())
    path.write_text(f'{{"format": 1, "flags": {{"{FLAG}": {entry}, "{FLAG}": {entry}}}}}')
    with pytest.raises(StateStoreError) as info:
        FileStateStore(path).load_all()
    assert str(info.value) == (
        f'file://{path}: corrupt state file: not JSON: duplicate key "{FLAG}"'
    )


def test_file_store_format_given_as_true_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"format": true, "flags": {}}')
    with pytest.raises(StateStoreError, match=r"corrupt state file: unsupported format true$"):
        FileStateStore(path).load_all()


_COMMANDS: list[Callable[[Any], Any]] = [
    lambda c: c.start(force=True),
    lambda c: c.request_start(),
    lambda c: c.promote(),
    lambda c: c.pause(),
    lambda c: c.resume(),
    lambda c: c.rollback("p95_breach", {"value": 162.5, "threshold": 150}),
    lambda c: c.reset(),
]


@PROPERTY
@given(commands=st.lists(st.sampled_from(range(len(_COMMANDS))), max_size=25))
def test_state_file_reads_back_every_state_the_engine_writes(
    tmp_path: Path, commands: list[int]
) -> None:
    """Validation must never refuse the engine's own states: any sequence of operator
    commands, written to a real file store, reads back equal (by a fresh store) and fits the
    plan."""
    plan = load_plan(EXAMPLE)
    path = tmp_path / "engine.json"
    path.unlink(missing_ok=True)
    rollout = Rollout(plan, store=f"file://{path}")
    ctl = rollout.controller(FLAG)
    for index in commands:
        try:
            _COMMANDS[index](ctl)
        except TransitionError:
            continue
        read = FileStateStore(path).load(FLAG)
        assert read == ctl.state
        check_state_against_plan(plan.flag(FLAG), read)


def test_check_state_against_plan_stage_beyond_the_plan_raises_naming_store_flag_and_field(
    plan: RolloutPlan,
) -> None:
    state = RolloutState(FLAG, Status.RUNNING, 99, 5.0, 0.0, version=3)
    with pytest.raises(StateStoreError) as info:
        check_state_against_plan(plan.flag(FLAG), state, source="file:///x/state.json")
    assert str(info.value) == (
        "file:///x/state.json: state does not fit the plan: "
        f"{F}.stage: must be in 0..4 (the plan's stages), got 99"
    )


def test_check_state_against_plan_state_of_another_flag_raises(plan: RolloutPlan) -> None:
    with pytest.raises(StateStoreError, match=rf'{F}.flag_key: must be "{FLAG}", got "{PHASE2}"'):
        check_state_against_plan(plan.flag(FLAG), RolloutState(PHASE2))


@pytest.mark.parametrize("stage", [0, 1, 4])
def test_check_state_against_plan_every_stage_of_the_plan_passes(
    plan: RolloutPlan, stage: int
) -> None:
    status = Status.PENDING if stage == 0 else Status.COMPLETED
    check_state_against_plan(plan.flag(FLAG), RolloutState(FLAG, status, stage))


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (_entry(percent=500, stage=4), "percent: must be a number in [0, 100], got 500"),
        (_entry(percent=math.nan), "percent: must be a number in [0, 100], got NaN"),
        (_entry(flag_key="other"), "flag_key: must be its entry's key \""),
    ],
    ids=["percent 500", "percent NaN", "flag_key"],
)
def test_provider_bad_state_value_serves_the_old_path_and_says_why(
    plan: RolloutPlan, tmp_path: Path, entry: dict[str, Any], field: str
) -> None:
    """``percent: 500`` used to be served as 100 % STATIC and NaN crashed the provider."""
    path = tmp_path / "state.json"
    _write_states(path, {FLAG: entry})
    provider = CanaryProvider(plan, store=f"file://{path}", background=False)
    with pytest.raises(ProviderNotReadyError) as info:
        api.set_provider_and_wait(provider)
    assert str(info.value).count("\n") == 0
    assert f"file://{path}: corrupt state file: {F}.{field}" in str(info.value)
    details = api.get_client().get_boolean_details(FLAG, True, CTX)  # even with default True
    assert (details.value, details.variant, details.reason) == (False, "off", Reason.DISABLED)
    assert f"{F}.{field}" in str(details.flag_metadata["unavailable"])


def test_cli_status_bad_state_value_exits_2_naming_store_flag_and_field(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _write_states(path, {FLAG: _entry(percent=500)})
    line = _refused("status", "--plan", str(EXAMPLE), "--store", f"file://{path}")
    assert line.endswith(
        f"file://{path}: corrupt state file: {F}.percent: must be a number in [0, 100], got 500"
    )


class _Sink:
    """An event sink that keeps what it is given (the pipeline's step 3)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def enqueue(self, event_name: str, properties: Mapping[str, Any]) -> object:
        self.events.append((event_name, dict(properties)))
        return None


def test_provider_rollback_on_a_store_with_a_bad_entry_serves_0_and_queues_its_event(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    """What ``rollback`` does while the store holds a bad value (the controller's sticky
    rollback): it takes effect in this process (0 %, its event queued) and raises the alarm;
    the bad file is not overwritten, and every reader serves 0 % meanwhile."""
    path = tmp_path / "state.json"
    _write_states(path, {FLAG: _entry(percent=math.nan)})
    before = path.read_bytes()
    sink = _Sink()
    provider = CanaryProvider(plan, store=f"file://{path}", events=sink, background=False)
    with pytest.raises(ProviderNotReadyError):
        api.set_provider_and_wait(provider)
    with pytest.raises(StateStoreError, match=r"corrupt state file: .*percent"):
        provider.controller(FLAG).rollback("bad state file")
    assert provider.controller(FLAG).state.status is Status.ROLLED_BACK
    assert [name for name, _ in sink.events] == ["canary_rollback"]
    assert sink.events[0][1]["reason"] == "operator"
    assert sink.events[0][1]["note"] == "bad state file"
    assert api.get_client().get_boolean_value(FLAG, True, CTX) is False
    assert path.read_bytes() == before


def test_cli_rollback_on_a_store_with_a_bad_entry_exits_2_and_leaves_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    _write_states(path, {FLAG: _entry(percent=math.nan)})
    before = path.read_bytes()
    line = _refused(
        "rollback", FLAG, "--reason", "x", "--plan", str(EXAMPLE), "--store", f"file://{path}"
    )
    assert f"file://{path}: corrupt state file: {F}.percent" in line
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- one line


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["rollback", FLAG, "--reason", "x"],
        ["start", FLAG],
        ["bucket", FLAG, "u-1"],
    ],
    ids=["status", "status --json", "rollback", "start", "bucket"],
)
def test_cli_non_utf8_state_file_exits_2_with_one_line(tmp_path: Path, argv: list[str]) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"format": 1, "flags": {"\xff": 1}}')
    line = _refused(*argv, "--plan", str(EXAMPLE), "--store", f"file://{path}")
    assert line.endswith(
        f"file://{path}: corrupt state file: not UTF-8 text (byte 0xff at offset 25)"
    )


def test_provider_non_utf8_state_file_is_not_ready_in_one_line_and_serves_the_old_path(
    plan: RolloutPlan, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"\xfe\xff")
    provider = CanaryProvider(plan, store=f"file://{path}", background=False)
    with pytest.raises(ProviderNotReadyError) as info:
        api.set_provider_and_wait(provider)
    assert (
        str(info.value)
        == f"file://{path}: corrupt state file: not UTF-8 text (byte 0xfe at offset 0)"
    )
    assert api.get_client().get_boolean_value(FLAG, True, CTX) is False


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("plan.json", "[" * DEEP + "]" * DEEP),
        ("plan.json", '{"a":' * DEEP + "1" + "}" * DEEP),
        ("plan.toml", "a = " + "[" * DEEP + "]" * DEEP),
        ("plan.toml", "a = " + "{b = " * 5000 + "1" + "}" * 5000),
    ],
    ids=["json arrays", "json objects", "toml arrays", "toml inline tables"],
)
def test_cli_deeply_nested_plan_exits_2_with_one_line(tmp_path: Path, name: str, text: str) -> None:
    plan = tmp_path / name
    plan.write_text(text)
    assert _refused("plan", "check", "--plan", str(plan)).endswith(
        f"{plan}: nested too deeply to be a plan"
    )


def test_cli_deeply_nested_state_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"format": 1, "flags": ' + "[" * DEEP + "]" * DEEP + "}")
    line = _refused("status", "--plan", str(EXAMPLE), "--store", f"file://{path}")
    assert line.endswith(f"file://{path}: corrupt state file: nested too deeply to be a state file")


@pytest.mark.parametrize(
    "url", ["file:///x/a%00b.json", "file:///tmp/a%00b.json", "file:///tmp/a%0Ab.json"]
)
@pytest.mark.parametrize("command", [["status"], ["rollback", FLAG, "--reason", "x"]])
def test_cli_store_url_with_a_control_character_exits_2_with_one_line(
    url: str, command: list[str]
) -> None:
    line = _refused(*command, "--plan", str(EXAMPLE), "--store", url)
    assert line.endswith(
        f"store URL {url!r}: a file path cannot contain control characters "
        "(a NUL byte %00, a newline %0A, …)"
    )


@pytest.mark.parametrize(
    "command", [["status"], ["rollback", FLAG, "--reason", "x"], ["start", FLAG]]
)
@pytest.mark.parametrize("plan_store", [False, True], ids=["plan without store", "plan store"])
def test_cli_empty_store_exits_2_and_never_falls_back(
    tmp_path: Path, command: list[str], plan_store: bool
) -> None:
    """``--store ''`` is refused, whether or not the plan names a store: neither
    ``memory://`` (which no service reads) nor the plan's store is used instead."""
    plan = tmp_path / "plan.toml"
    state = tmp_path / "state.json"
    head = f'store = "file://{state}"\n' if plan_store else ""
    plan.write_text(head + EXAMPLE.read_text())
    line = _refused(*command, "--plan", str(plan), "--store", "")
    assert "--store" in line
    assert not state.exists()


def test_file_store_path_with_a_nul_byte_raises_state_store_error(tmp_path: Path) -> None:
    """A path given directly (not through ``open_store``, which refuses it)."""
    store = FileStateStore(f"{tmp_path}/a\x00b.json")
    with pytest.raises(StateStoreError, match=r"cannot read: embedded null byte"):
        store.load_all()


def test_open_store_empty_url_raises_state_store_error() -> None:
    for url in ("", "  "):
        with pytest.raises(StateStoreError, match=r"store URL '\s*' is empty: give memory://"):
            open_store(url)


def test_plan_empty_store_is_refused() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    with pytest.raises(PlanError, match=r"^p: store: must be a store URL such as file:///"):
        parse_plan({"store": "", **data}, source="p")


def test_parse_plan_key_that_is_not_text_raises_plan_error() -> None:
    stages = [{"percent": 5, "duration": "1m"}]
    with pytest.raises(PlanError, match=r"^p: flags: keys must be strings, got 1$"):
        parse_plan({"flags": {1: {"stages": stages}}}, source="p")


def _json_plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(text)
    return path


STAGE = '{"percent": 5, "duration": "10m"}'


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f'{{"flags": {{"a": {{"stages": [{STAGE}]}}, "a": {{"stages": [{STAGE}]}}}}}}', "flags.a"),
        (
            f'{{"flags": {{"a": {{"stages": [{STAGE}, {{"percent": 9, "percent": 50, '
            '"duration": "1m"}]}}}',
            "flags.a.stages[1].percent",
        ),
        (
            '{"store": "memory://", "store": "file:///x", '
            f'"flags": {{"a": {{"stages": [{STAGE}]}}}}}}',
            "store",
        ),
    ],
    ids=["flag key", "stage key", "top-level key"],
)
def test_load_plan_json_repeated_key_is_refused_naming_its_path(
    tmp_path: Path, text: str, where: str
) -> None:
    path = _json_plan(tmp_path, text)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value) == f"{path}: {where}: given twice (JSON would keep only the last one)"
    assert _refused("plan", "check", "--plan", str(path)).endswith(str(info.value))


@pytest.mark.parametrize("percent", [0.004, 0.009, 1e-300])
def test_plan_percent_below_one_basis_point_is_refused(tmp_path: Path, percent: float) -> None:
    """0.004 % used to pass and serve 0 %: traffic is split in basis points (0.01 %)."""
    path = _json_plan(
        tmp_path, json.dumps({"flags": {"a": {"stages": [{"percent": percent, "duration": "1m"}]}}})
    )
    line = _refused("plan", "check", "--plan", str(path))
    assert line.endswith(
        f"{path}: flags.a.stages[0].percent: must be at least 0.01 (one basis point, the "
        f"bucketing resolution: a smaller share would serve 0 %), got {percent}"
    )


def test_plan_percent_of_one_basis_point_is_accepted() -> None:
    plan = parse_plan({"flags": {"a": {"stages": [{"percent": 0.01, "duration": "1m"}]}}})
    assert plan.flag("a").stages[0].percent == 0.01


def test_plan_stage_step_below_one_basis_point_is_refused() -> None:
    stages = [{"percent": 5, "duration": "1m"}, {"percent": 5.001, "duration": "1m"}]
    with pytest.raises(PlanError) as info:
        parse_plan({"flags": {"a": {"stages": stages}}}, source="p")
    assert str(info.value) == (
        "p: flags.a.stages[1].percent: must be at least 0.01 greater than the previous stage "
        "(5): traffic is split in basis points (0.01 %), so 5.001 would serve the same share"
    )


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('{"flags": {"a": {"stages": [{"percent": 1' + "0" * 5000 + "}]}}}", "malformed JSON: "),
        (
            '{"flags": {"a": {"stages": [{"percent": 1' + "0" * 400 + ', "duration": "1m"}]}}}',
            "flags.a.stages[0].percent: must be a finite number",
        ),
        (
            '{"flags": {"a": {"stages": [{"percent": 5, "duration": "' + "9" * 5000 + 'd"}]}}}',
            "flags.a.stages[0].duration: malformed duration '99999",
        ),
        ('{"flags": {"a\\nb": {"stages": []}}}', "flags.'a\\nb': flag key must be printable text"),
    ],
    ids=[
        "integer beyond the digits limit",
        "number too large",
        "duration too long",
        "flag key with a newline",
    ],
)
def test_load_plan_extreme_value_is_one_line(tmp_path: Path, text: str, detail: str) -> None:
    path = _json_plan(tmp_path, text)
    line = _refused("plan", "check", "--plan", str(path))
    assert f"{path}: {detail}" in line
    assert len(line) < 300


def test_load_plan_nul_byte_in_path_raises_plan_error() -> None:
    with pytest.raises(PlanError, match=r"cannot read plan file: embedded null byte"):
        load_plan("/tmp/a\x00b.toml")


@pytest.mark.parametrize("value", ["1_0", "\uff15", "1e1", "nan"])
def test_provider_env_override_with_python_only_number_syntax_is_refused(
    plan: RolloutPlan, tmp_path: Path, value: str
) -> None:
    """``float()`` takes these; the override does not (plain ASCII decimals only)."""
    path = tmp_path / "state.json"
    Rollout(plan, store=f"file://{path}").controller(FLAG).start(force=True)
    environ = {"DATASERVICE_READ_CANARY": value}
    provider = CanaryProvider(plan, store=f"file://{path}", environ=environ, background=False)
    api.set_provider_and_wait(provider)
    details = api.get_client().get_boolean_details(FLAG, False, CTX)
    assert (details.reason, details.error_code) == (Reason.ERROR, ErrorCode.PARSE_ERROR)
    assert details.error_message == (
        f"environment variable DATASERVICE_READ_CANARY={value!r} is not a number (expected 0..100)"
    )
    assert provider.view(FLAG).override is None  # the value is not applied


# --------------------------------------------------------------------------- properties

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["10m", "1h30m", "rollback", "pause", "error_rate", "above", "flagd", FLAG])
)
_KEYS = st.text(max_size=8) | st.sampled_from(
    [
        "flags",
        "stages",
        "triggers",
        "percent",
        "duration",
        "window",
        "signal",
        "above",
        "store",
        "telemetry",
        "url",
        "reports",
        "dir",
        "signals",
        "after",
        "tick",
        "name",
        FLAG,
    ]
)
JSON_LIKE = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=25,
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, (*prefix, i))


@st.composite
def _mutated(draw: st.DrawFn, original: Any) -> Any:
    """``original`` (plain data) with one to three edits: a value replaced, a key removed or
    added, a list entry duplicated."""
    data = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        if not path:
            data = draw(JSON_LIKE) if draw(st.integers(0, 9)) == 0 else data
            continue
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "add", "copy"]))
        if action == "replace":
            parent[last] = draw(JSON_LIKE)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(_KEYS)] = draw(JSON_LIKE)
        elif action == "copy" and isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[last])))
    return data


def _plan_or_plan_error(data: Any) -> None:
    try:
        plan = parse_plan(data, source="p")
    except PlanError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("p: ")
        assert len(str(exc)) < 400
        return
    assert isinstance(plan, RolloutPlan) and plan.flags


EXAMPLE_DATA = tomllib.loads(EXAMPLE.read_text())


@PROPERTY
@given(data=JSON_LIKE)
def test_parse_plan_arbitrary_data_returns_a_plan_or_raises_plan_error(data: Any) -> None:
    _plan_or_plan_error(data)


@PROPERTY
@given(data=_mutated(EXAMPLE_DATA))
def test_parse_plan_mutated_example_returns_a_plan_or_raises_plan_error(data: Any) -> None:
    _plan_or_plan_error(data)


@PROPERTY
@given(
    text=st.text(max_size=200) | st.builds(json.dumps, _mutated(EXAMPLE_DATA)),
    suffix=st.sampled_from([".json", ".toml"]),
)
def test_load_plan_arbitrary_text_returns_a_plan_or_raises_plan_error(
    tmp_path: Path, text: str, suffix: str
) -> None:
    path = tmp_path / f"plan{suffix}"
    path.write_text(text, "utf-8", errors="surrogatepass")
    try:
        load_plan(path)
    except PlanError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))


def _assert_valid(key: str, state: RolloutState) -> None:
    """What a state read from a store guarantees to the engine."""
    assert state.flag_key == key
    assert isinstance(state.status, Status)
    assert type(state.stage) is int and state.stage >= 0
    assert type(state.version) is int and state.version >= 0
    assert math.isfinite(state.percent) and 0 <= state.percent <= 100
    assert math.isfinite(state.since)
    if state.status in (Status.PENDING, Status.ROLLED_BACK):
        assert (state.stage, state.percent) == (0, 0.0)
    else:
        assert state.stage >= 1
    assert all(math.isfinite(e.at) and isinstance(e.action, str) for e in state.log)
    assert all(isinstance(w.verdict, Verdict) and w.n >= 0 for w in state.windows)
    assert state.requested in ("", "start")
    assert _as_json(RolloutState.from_dict(json.loads(_as_json(state)))) == _as_json(state)


def _states_or_store_error(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        states = FileStateStore(path).load_all()
    except StateStoreError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"file://{path}: ")
        assert len(str(exc)) < 400
        return
    for key, state in states.items():
        _assert_valid(key, state)


def _state_file(*states: RolloutState) -> dict[str, Any]:
    return {"format": 1, "flags": {s.flag_key: s.to_dict() for s in states}}


STATE_FILE = _state_file(
    _engine_state(),
    RolloutState(
        PHASE2,
        Status.ROLLED_BACK,
        0,
        0.0,
        5.0,
        "p95_breach",
        7,
        (LogEntry(5.0, "rollback", "p95_breach"),),
    ),
)


@PROPERTY
@given(content=st.binary(max_size=300))
def test_file_store_arbitrary_bytes_raise_state_store_error(tmp_path: Path, content: bytes) -> None:
    _states_or_store_error(tmp_path / "state.json", content)


@PROPERTY
@given(data=JSON_LIKE)
def test_file_store_arbitrary_json_raises_state_store_error_or_gives_valid_states(
    tmp_path: Path, data: Any
) -> None:
    _states_or_store_error(tmp_path / "state.json", json.dumps(data).encode())


@PROPERTY
@given(data=_mutated(STATE_FILE))
def test_file_store_mutated_state_file_raises_state_store_error_or_gives_valid_states(
    tmp_path: Path, data: Any
) -> None:
    _states_or_store_error(tmp_path / "state.json", json.dumps(data).encode())


@PROPERTY
@given(data=_mutated(STATE_FILE), cut=st.integers(0, 2000), byte=st.integers(0, 255))
def test_file_store_damaged_state_file_bytes_raise_state_store_error_or_give_valid_states(
    tmp_path: Path, data: Any, cut: int, byte: int
) -> None:
    raw = bytearray(json.dumps(data).encode())
    if raw:
        raw[cut % len(raw)] = byte
    _states_or_store_error(tmp_path / "state.json", bytes(raw))
