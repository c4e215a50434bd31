"""``export-flagd``: the current state as a flagd flag definition with exactly the cohorts of
``CanaryProvider`` (spec §10), proven against flagd's own evaluators.

- CBOR scheme: the export loaded by ``openfeature-provider-flagd`` 0.6.1 in its in-process
  FILE mode (flagd-core 2.x) answers like ``CanaryProvider`` for 10 000 units at every stage
  percentage of ``examples/canary_plan.toml``, both through OpenFeature SDK clients.
- Go scheme: vectors copied from flagd's own ``fractional_test.go``, evaluated on the exported
  definition by flagd-core 1.0.0's ``fractional`` (the same arithmetic as flagd's Go evaluator
  since 0.15) and by ``CanaryProvider``.
- ``--watch``: a real subprocess on a real ``file://`` store keeps the file current (a
  rollback made by the CLI in another process, a corrupt store survived), and a flagd
  provider reading the file follows it; bad input exits 2 with one line.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from json_logic import builtins, jsonLogic
from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from openfeature_canary import ManualClock, RolloutState, Status, bucket, load_plan, parse_plan
from openfeature_canary.cli import run
from openfeature_canary.errors import PlanError, StateStoreError
from openfeature_canary.flagd_export import (
    FLAGD_SCHEMA,
    export_scheme,
    flagd_definition,
    render_flagd,
    write_flagd_file,
)
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.policy import Rollout
from openfeature_canary.stores import MemoryStateStore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "canary_plan.toml"
FLAGD_CORE_1 = (
    ROOT / ".ci-deps/flagd-core-1/openfeature/contrib/tools/flagd/core/targeting/custom_ops.py"
)
READ = "dataservice-read-canary"
USER = "dataservice-user-read-canary"
T0 = 1_767_225_600.0
#: Waits on another process are bounded: generous for a loaded CI machine, never a timing
#: assert (the watcher polls every 0.1 s).
DEADLINE_S = 15.0


class _Events:
    """An event sink that keeps nothing: these providers make no transitions."""

    def enqueue(self, event_name: str, properties: Mapping[str, object]) -> object:
        return None


def _units(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def _cbor_plan_text() -> str:
    """The reference plan with both flags bucketing as flagd-core 2.x does."""
    text = EXAMPLE.read_text()
    assert text.count('bucket_by = "targetingKey"\n') == 2
    return text.replace(
        'bucket_by = "targetingKey"\n', 'bucket_by = "targetingKey"\nscheme = "flagd-cbor"\n'
    )


@pytest.fixture
def cbor_plan_path(tmp_path: Path) -> Path:
    path = tmp_path / "canary_plan.toml"
    path.write_text(_cbor_plan_text())
    return path


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    (tmp_path / "state").mkdir()
    return f"file://{tmp_path / 'state' / 'state.json'}"


def _drive(plan: RolloutPlan, steps: list[str]) -> MemoryStateStore:
    """A store holding the states the real controller reaches through ``steps``."""
    store = MemoryStateStore()
    rollout = Rollout(plan, store=store, clock=ManualClock(start=T0))
    ctl = rollout.controller(READ)
    for step in steps:
        if step == "start":
            ctl.start(force=True)
        elif step == "rollback":
            ctl.rollback("p95_breach")
        else:
            getattr(ctl, step)()
    return store


# --------------------------------------------------------------- CBOR: flagd-provider FILE mode

STAGES = [  # (steps of the read flag, the percent it then serves)
    (["start"], 5.0),
    (["start", "promote"], 25.0),
    (["start", "promote", "promote", "pause"], 50.0),
    (["start", "promote", "promote", "promote", "promote"], 100.0),
    (["start", "promote", "rollback"], 0.0),
]


@pytest.mark.parametrize(("steps", "percent"), STAGES, ids=[f"{p:g}%" for _, p in STAGES])
def test_export_cbor_in_flagd_file_mode_answers_like_canary_provider(
    tmp_path: Path, cbor_plan_path: Path, steps: list[str], percent: float
) -> None:
    plan = load_plan(cbor_plan_path)
    store = _drive(plan, steps)
    out = tmp_path / "flags.flagd.json"
    write_flagd_file(out, flagd_definition(plan, store.load_all()))

    canary = CanaryProvider(plan, store=store, events=_Events(), background=False)
    api.set_provider_and_wait(canary, domain="canary")
    flagd = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(out))
    api.set_provider_and_wait(flagd, domain="flagd")
    ours, theirs = api.get_client("canary"), api.get_client("flagd")

    assert canary.view(READ).percent == percent
    units = _units(10_000, seed=10)
    for key in (READ, USER):
        mine = [ours.get_boolean_value(key, False, EvaluationContext(u)) for u in units]
        flagd_says = [theirs.get_boolean_value(key, False, EvaluationContext(u)) for u in units]
        expected_on = percent if key == READ else 0.0
        bp = round(expected_on * 100)
        assert mine == [bucket(key, u, "flagd-cbor") < bp for u in units]
        assert flagd_says == mine, f"{key} at {expected_on}%"
    details = theirs.get_boolean_details(READ, False, EvaluationContext(units[0]))
    assert details.flag_metadata["percent"] == percent
    assert details.flag_metadata["scheme"] == "flagd-cbor"
    assert details.flag_metadata["status"] == canary.view(READ).status.value


def test_export_for_the_go_scheme_would_move_units_in_flagd_core_2(tmp_path: Path) -> None:
    """Why the scheme is named: the same weights read by flagd-core 2.x (CBOR) put another
    half of the units in the canary than the plain-murmur3 provider does."""
    plan = load_plan(EXAMPLE)
    store = _drive(plan, ["start", "promote", "promote"])  # 50 %
    core = FlagdCore()
    core.set_flags(flagd_definition(plan, store.load_all()))
    units = _units(2000, seed=3)
    go_side = [bucket(READ, u, "flagd") < 5000 for u in units]
    cbor_side = [core.resolve_boolean_value(READ, False, EvaluationContext(u)).value for u in units]
    moved = sum(a != b for a, b in zip(go_side, cbor_side, strict=True))
    assert 800 <= moved <= 1200  # independent hashes: about half of the units differ


# --------------------------------------------------------------- Go scheme: flagd's own vectors

# Copied from open-feature/flagd core/pkg/evaluator/fractional_test.go at commit
# bbb05d4bc3903ea8bf5123a88b1cf558750a22ab (TestFractionalEvaluation): the rules whose
# bucketing our export writes. (flag key, bucket_by, context, weights, expected variant).
# "headerColor" with {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]} and 4 x 25:
FOUR_WAY = [("red", 25), ("blue", 25), ("green", 25), ("yellow", 25)]
GO_VECTORS: list[tuple[str, str, dict[str, Any], list[tuple[str, int]], str]] = [
    ("headerColor", "email", {"email": "rachel@faas.com"}, FOUR_WAY, "blue"),
    ("headerColor", "email", {"email": "monica@faas.com"}, FOUR_WAY, "yellow"),
    ("headerColor", "email", {"email": "joey@faas.com"}, FOUR_WAY, "red"),
    ("headerColor", "email", {"email": "ross@faas.com"}, FOUR_WAY, "blue"),
    # "default to targetingKey if no bucket key provided": the shorthand.
    (
        "headerColor",
        "targetingKey",
        {"targetingKey": "foo@foo.com"},
        [("blue", 50), ("green", 50)],
        "green",
    ),
    # "missing email - parser should ignore nil/missing custom variables and continue": it
    # falls back to the shorthand's flagKey + targetingKey.
    (
        "headerColor",
        "targetingKey",
        {"targetingKey": "foo@foo.com"},
        [("red", 50), ("blue", 50)],
        "blue",
    ),
]
# "missing/empty targetingKey returns default variant": the shorthand buckets nobody.
GO_NO_UNIT = [{}, {"targetingKey": ""}]


def _cuts(weights: list[tuple[str, int]], expected: str) -> list[tuple[float, bool]]:
    """(percent, on?) at every boundary between the vector's variants: flagd's bucket is
    ``(h * total) >> 32``, so a boundary at ``c`` of ``total`` cuts exactly where our
    ``(h * 10000) >> 32 < round(100 * 100 * c / total)`` does."""
    total = sum(w for _, w in weights)
    start = 0
    for name, w in weights:
        if name == expected:
            break
        start += w
    end = start + dict(weights)[expected]
    cuts, edge = [], 0
    for _, w in weights[:-1]:
        edge += w
        cuts.append((100 * edge / total, end <= edge))
    return cuts


@pytest.fixture(scope="module")
def flagd_core_1() -> Callable[..., Any]:
    """flagd-core 1.0.0's ``fractional`` (plain murmur3 of flagKey + targetingKey, as flagd's
    Go evaluator), from the side folder scripts/test.sh fills."""
    if not FLAGD_CORE_1.is_file():
        pytest.fail(
            f"flagd-core 1.0.0 is missing ({FLAGD_CORE_1.relative_to(ROOT)}): "
            "run `bash scripts/test.sh` once, it installs it into .ci-deps/flagd-core-1"
        )
    spec = importlib.util.spec_from_file_location("_flagd_core_1_ops", FLAGD_CORE_1)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[..., Any] = module.fractional
    return fn


def _flagd_core_1_resolve(
    fractional: Callable[..., Any], definition: Mapping[str, Any], key: str, ctx: dict[str, Any]
) -> bool:
    """What flagd-core 1.0.0 answers: its JSON Logic with its ``fractional`` over the context
    it builds (attributes, ``$flagd.flagKey``, ``targetingKey``); no variant → default."""
    flag = definition["flags"][key]
    variant = flag["defaultVariant"]
    if "targeting" in flag:
        data = {k: v for k, v in ctx.items() if k != "targetingKey"}
        data["$flagd"] = {"flagKey": key, "timestamp": int(T0)}
        data["targetingKey"] = ctx.get("targetingKey")
        ops = {**builtins.BUILTINS, "fractional": fractional}
        variant = jsonLogic(flag["targeting"], data, ops) or variant
    result: bool = flag["variants"][variant]
    return result


def _one_flag_plan(key: str, bucket_by: str, percents: list[float]) -> RolloutPlan:
    stages = [{"percent": p, "duration": "1m"} for p in sorted({*percents, 100.0})]
    return parse_plan({"flags": {key: {"bucket_by": bucket_by, "stages": stages}}})


def _state_at(plan: RolloutPlan, key: str, percent: float) -> MemoryStateStore:
    stage = 1 + [s.percent for s in plan.flag(key).stages].index(percent)
    store = MemoryStateStore()
    store.save(RolloutState(key, Status.RUNNING, stage, percent, T0, version=1), 0)
    return store


@pytest.mark.parametrize(
    ("key", "bucket_by", "ctx", "weights", "expected"),
    GO_VECTORS,
    ids=[f"{v[2].get('email') or v[2]['targetingKey']}-{v[4]}" for v in GO_VECTORS],
)
def test_export_go_scheme_reproduces_flagd_test_vectors(
    flagd_core_1: Callable[..., Any],
    key: str,
    bucket_by: str,
    ctx: dict[str, Any],
    weights: list[tuple[str, int]],
    expected: str,
) -> None:
    cuts = _cuts(weights, expected)
    plan = _one_flag_plan(key, bucket_by, [p for p, _ in cuts])
    for percent, on in cuts:
        store = _state_at(plan, key, percent)
        definition = flagd_definition(plan, store.load_all(), "flagd")
        if bucket_by != "targetingKey":  # flagd's own test rule, guarded against no unit
            rule = definition["flags"][key]["targeting"]["if"][1]["fractional"][0]
            assert rule == {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}
        assert _flagd_core_1_resolve(flagd_core_1, definition, key, ctx) is on, percent
        provider = CanaryProvider(plan, store=store, events=_Events(), background=False)
        api.set_provider_and_wait(provider, domain="go")
        attrs = {k: v for k, v in ctx.items() if k != "targetingKey"}
        context = EvaluationContext(ctx.get("targetingKey"), attrs)
        assert api.get_client("go").get_boolean_value(key, False, context) is on, percent


@pytest.mark.parametrize("bucket_by", ["targetingKey", "email"])
@pytest.mark.parametrize("ctx", GO_NO_UNIT, ids=["missing", "empty"])
def test_export_go_scheme_without_a_unit_serves_off(
    flagd_core_1: Callable[..., Any], bucket_by: str, ctx: dict[str, Any]
) -> None:
    plan = _one_flag_plan("headerColor", bucket_by, [50.0])
    definition = flagd_definition(plan, _state_at(plan, "headerColor", 50.0).load_all())
    assert _flagd_core_1_resolve(flagd_core_1, definition, "headerColor", ctx) is False


def test_export_go_scheme_matches_flagd_core_1_for_random_units_by_attribute(
    flagd_core_1: Callable[..., Any],
) -> None:
    plan = _one_flag_plan("checkout", "user_id", [12.34])
    definition = flagd_definition(plan, _state_at(plan, "checkout", 12.34).load_all())
    for unit in _units(2000, seed=5):
        got = _flagd_core_1_resolve(flagd_core_1, definition, "checkout", {"user_id": unit})
        assert got is (bucket("checkout", unit, "flagd") < 1234)


# --------------------------------------------------------------- the definition itself


def test_definition_at_0_and_100_percent_has_no_targeting_and_one_answer() -> None:
    plan = load_plan(EXAMPLE)
    store = _drive(plan, ["start", "promote", "promote", "promote", "promote"])
    flags = flagd_definition(plan, store.load_all())["flags"]
    assert flags[READ]["defaultVariant"] == "on" and "targeting" not in flags[READ]
    assert flags[USER]["defaultVariant"] == "off" and "targeting" not in flags[USER]
    assert flags[READ]["variants"] == {"on": True, "off": False}
    assert flags[READ]["metadata"]["status"] == "completed"


def test_definition_metadata_names_stage_percent_version_scheme_and_unexported_override() -> None:
    plan = load_plan(EXAMPLE)
    store = _drive(plan, ["start", "promote", "rollback"])
    state = store.load(READ)
    assert state is not None
    definition = flagd_definition(plan, store.load_all())
    assert definition["$schema"] == FLAGD_SCHEMA
    assert definition["metadata"]["scheme"] == "flagd"
    meta = definition["flags"][READ]["metadata"]
    assert meta["stage"] == state.stage and meta["percent"] == 0.0
    assert meta["status"] == "rolled_back" and meta["trigger"] == "p95_breach"
    assert meta["state_version"] == state.version and meta["scheme"] == "flagd"
    assert "DATASERVICE_READ_CANARY" in str(meta["env_override"])
    assert "not exported" in str(meta["env_override"])
    assert "env_override" not in definition["flags"][USER]["metadata"]


def test_definition_ignores_the_env_override_of_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATASERVICE_READ_CANARY", "100")
    plan = load_plan(EXAMPLE)
    flags = flagd_definition(plan, _drive(plan, ["start"]).load_all())["flags"]
    assert flags[READ]["targeting"] == {"fractional": [["on", 500], ["off", 9500]]}


def test_definition_splits_at_basis_points_of_fractional_percentages() -> None:
    plan = _one_flag_plan("f", "targetingKey", [0.01, 12.34])
    flags = flagd_definition(plan, _state_at(plan, "f", 0.01).load_all())["flags"]
    assert flags["f"]["targeting"] == {"fractional": [["on", 1], ["off", 9999]]}


def test_definition_of_equal_states_is_equal_text() -> None:
    plan = load_plan(EXAMPLE)
    states = _drive(plan, ["start"]).load_all()
    assert render_flagd(flagd_definition(plan, states)) == render_flagd(
        flagd_definition(plan, dict(states))
    )


def test_export_scheme_defaults_to_the_plans_and_refuses_a_mismatch(cbor_plan_path: Path) -> None:
    assert export_scheme(load_plan(EXAMPLE)) == "flagd"
    assert export_scheme(load_plan(cbor_plan_path)) == "flagd-cbor"
    with pytest.raises(PlanError, match=r"flags\.dataservice-read-canary\.scheme: buckets with"):
        export_scheme(load_plan(EXAMPLE), "flagd-cbor")
    with pytest.raises(ValueError, match="unknown bucketing scheme 'murmur'"):
        export_scheme(load_plan(EXAMPLE), "murmur")


def test_export_scheme_refuses_a_plan_whose_flags_disagree(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        'bucket_by = "targetingKey"\n', 'bucket_by = "targetingKey"\nscheme = "flagd-cbor"\n', 1
    )
    (tmp_path / "mixed.toml").write_text(text)
    with pytest.raises(PlanError, match=r"different schemes .*read-canary: flagd-cbor"):
        export_scheme(load_plan(tmp_path / "mixed.toml"))


@pytest.mark.parametrize(
    ("bucket_by", "scheme", "why"),
    [("user_id", "flagd-cbor", "flagd-core 2.x hashes"), ("user.id", "flagd", "as a path")],
)
def test_definition_refuses_a_bucket_by_the_scheme_cannot_express(
    bucket_by: str, scheme: str, why: str
) -> None:
    data = {
        "flags": {
            "f": {
                "bucket_by": bucket_by,
                "scheme": scheme,
                "stages": [{"percent": 5, "duration": "1m"}, {"percent": 100, "duration": "1m"}],
            }
        }
    }
    plan = parse_plan(data)
    store = MemoryStateStore()
    store.save(RolloutState("f", Status.RUNNING, 1, 5.0, T0, version=1), 0)
    with pytest.raises(PlanError, match=rf"flags\.f\.bucket_by: .*{why}"):
        flagd_definition(plan, store.load_all())


def test_definition_refuses_a_state_that_does_not_fit_the_plan() -> None:
    plan = load_plan(EXAMPLE)
    bad = RolloutState(READ, Status.RUNNING, 9, 50.0, T0, version=2)
    with pytest.raises(StateStoreError, match=r"stage: must be in 0\.\.4"):
        flagd_definition(plan, {READ: bad})


# --------------------------------------------------------------- the command


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), clock=ManualClock(start=T0), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_command_prints_the_definition_of_the_stores_states(store_url: str) -> None:
    assert _cli("start", READ, "--force", "--plan", str(EXAMPLE), "--store", store_url)[0] == 0
    code, out, err = _cli("export-flagd", "--plan", str(EXAMPLE), "--store", store_url)
    assert (code, err) == (0, "")
    flags = json.loads(out)["flags"]
    assert flags[READ]["targeting"] == {"fractional": [["on", 500], ["off", 9500]]}
    assert flags[USER]["metadata"]["status"] == "pending"


def test_command_writes_the_file_and_names_what_flagd_now_serves(
    tmp_path: Path, store_url: str
) -> None:
    out_file = tmp_path / "flags.json"
    code, out, err = _cli(
        "export-flagd", "--plan", str(EXAMPLE), "--store", store_url, "--out", str(out_file)
    )
    assert (code, err) == (0, "")
    assert out == f"{out_file}: {READ} 0% (pending, v0), {USER} 0% (pending, v0)\n"
    assert json.loads(out_file.read_text())["metadata"]["scheme"] == "flagd"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--plan", "missing.toml"], ["missing.toml", "plan file not found"]),
        (["--scheme", "murmur"], ["--scheme", "invalid choice: 'murmur'"]),
        (["--store", "ftp://host/x"], ["ftp://host/x", "unknown scheme 'ftp'"]),
        (["--store", "memory://"], ["memory://", "no service shares"]),
        (["--store", "/abs/state.json"], ["did you mean file:///abs/state.json"]),
        (["--watch"], ["--watch keeps a file current: give --out FILE"]),
        (["--out", "f.json", "--watch", "--interval", "0"], ["--interval must be a positive"]),
        (["--interval", "2"], ["--interval is for --watch"]),
        (["--out", "nowhere/f.json"], ["folder nowhere does not exist"]),
        (["--scheme", "flagd-cbor"], ["flags.dataservice-read-canary.scheme", "flagd-core 2.x"]),
    ],
    ids=[
        "missing-plan",
        "unknown-scheme",
        "unknown-store-scheme",
        "memory-store",
        "bare-path-store",
        "watch-to-stdout",
        "zero-interval",
        "interval-without-watch",
        "missing-out-folder",
        "scheme-mismatch",
    ],
)
def test_command_bad_input_exits_2_with_one_line(
    store_url: str, argv: list[str], fragments: list[str]
) -> None:
    base = ["export-flagd", "--plan", str(EXAMPLE), "--store", store_url]
    code, out, err = _cli(*base, *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err


def test_command_refuses_to_overwrite_the_state_store(tmp_path: Path, store_url: str) -> None:
    target = store_url.removeprefix("file://")
    code, _, err = _cli(
        "export-flagd", "--plan", str(EXAMPLE), "--store", store_url, "--out", target
    )
    assert code == 2 and "is the state store itself" in err


# --------------------------------------------------------------- --watch, in real processes


def _spawn(*argv: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "openfeature_canary", *argv],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _cli_process(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openfeature_canary", *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


def _wait_for(what: str, check: Callable[[], bool]) -> float:
    """Poll ``check`` until it holds; the seconds it took (fails after DEADLINE_S)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > DEADLINE_S:
            pytest.fail(f"not within {DEADLINE_S:g}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def _replace(path: Path, data: bytes) -> None:
    """Replace a file whole, as the store itself does (the watcher never sees half of it)."""
    tmp = path.with_name(path.name + ".test-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_meta(path: Path, key: str) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads(path.read_text())["flags"][key]["metadata"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return meta


@pytest.fixture
def watcher(tmp_path: Path, cbor_plan_path: Path, store_url: str) -> Iterator[dict[str, Any]]:
    """A real ``export-flagd --watch`` process on a real file store (read flag at 5 %)."""
    assert (
        _cli_process(
            "start", READ, "--force", "--plan", str(cbor_plan_path), "--store", store_url
        ).returncode
        == 0
    )
    out = tmp_path / "flags.flagd.json"
    log = tmp_path / "watch.log"
    proc = _spawn(
        "export-flagd",
        "--plan",
        str(cbor_plan_path),
        "--store",
        store_url,
        "--out",
        str(out),
        "--watch",
        "--interval",
        "0.1",
        log=log,
    )
    try:
        _wait_for("the first export", lambda: _read_meta(out, READ).get("percent") == 5.0)
        yield {"proc": proc, "out": out, "log": log, "plan": cbor_plan_path, "store": store_url}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE_S)


def test_watch_follows_a_rollback_by_the_cli_and_flagd_enforces_it(
    watcher: dict[str, Any],
) -> None:
    out: Path = watcher["out"]
    flagd = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(out))
    api.set_provider_and_wait(flagd, domain="fleet")
    client = api.get_client("fleet")
    units = _units(1000, seed=21)
    on_before = [client.get_boolean_value(READ, False, EvaluationContext(u)) for u in units]
    assert on_before == [bucket(READ, u, "flagd-cbor") < 500 for u in units]

    done = _cli_process(
        "rollback",
        READ,
        "--reason",
        "p95_breach",
        "--plan",
        str(watcher["plan"]),
        "--store",
        watcher["store"],
    )
    assert done.returncode == 0, done.stderr
    _wait_for(
        "the rollback in the file", lambda: _read_meta(out, READ).get("status") == "rolled_back"
    )

    def flagd_status() -> object:
        ctx = EvaluationContext(units[0])
        return client.get_boolean_details(READ, False, ctx).flag_metadata.get("status")

    _wait_for("flagd serving it", lambda: flagd_status() == "rolled_back")
    assert not any(client.get_boolean_value(READ, True, EvaluationContext(u)) for u in units)

    proc: subprocess.Popen[bytes] = watcher["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE_S) == 0
    log = watcher["log"].read_text()
    assert "Traceback" not in log
    assert log.count(f"{out}: ") == 2  # the first export and the rollback, nothing else


def test_watch_survives_a_corrupt_store_and_keeps_the_last_file(watcher: dict[str, Any]) -> None:
    out: Path = watcher["out"]
    state_file = Path(watcher["store"].removeprefix("file://"))
    good = state_file.read_bytes()
    before = out.read_bytes()
    _replace(state_file, b"{not json")  # whole: a torn write would be a second error
    _wait_for("the warning", lambda: "corrupt state file" in watcher["log"].read_text())
    time.sleep(0.3)  # a few more polls: still one line, the file untouched
    assert out.read_bytes() == before
    _replace(state_file, good)
    done = _cli_process("pause", READ, "--plan", str(watcher["plan"]), "--store", watcher["store"])
    assert done.returncode == 0, done.stderr
    _wait_for("the pause in the file", lambda: _read_meta(out, READ).get("status") == "paused")

    proc: subprocess.Popen[bytes] = watcher["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=DEADLINE_S) == 0
    lines = watcher["log"].read_text().splitlines()
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 2, lines  # one for the corrupt store, one when it recovered
    assert "corrupt state file" in warnings[0] and "keeps the last good definition" in warnings[0]
    assert "recovered" in warnings[1]
    assert not any("Traceback" in line for line in lines)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--plan", "missing.toml"], "missing.toml: plan file not found"),
        (["--scheme", "murmur"], "--scheme: invalid choice: 'murmur'"),
        (["--store", "redis//nowhere"], "redis//nowhere"),
    ],
    ids=["missing-plan", "unknown-scheme", "bad-store-url"],
)
def test_watch_bad_input_exits_2_with_one_line_in_a_real_process(
    tmp_path: Path, store_url: str, argv: list[str], fragment: str
) -> None:
    base = ["export-flagd", "--plan", str(EXAMPLE), "--store", store_url]
    done = _cli_process(*base, "--out", str(tmp_path / "f.json"), "--watch", *argv)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert fragment in done.stderr
    assert not (tmp_path / "f.json").exists()
