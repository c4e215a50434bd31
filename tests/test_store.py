"""State stores: compare-and-set, corrupt files, URLs, and several processes sharing one
``file://`` store (spec §10)."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from openfeature_canary import (
    FileStateStore,
    LogEntry,
    MemoryStateStore,
    Rollout,
    RolloutState,
    StaleStateError,
    StateStore,
    StateStoreError,
    Status,
    load_plan,
    open_store,
)
from openfeature_canary.clock import ManualClock

F1 = "dataservice-read-canary"
EXAMPLE_PLAN = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
SPAWN = multiprocessing.get_context("spawn")


def _bumped(state: RolloutState, action: str = "tick") -> RolloutState:
    return state.evolve(LogEntry(at=float(state.version), action=action, reason="test"))


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "memory":
        return open_store("memory://")
    (tmp_path / "state").mkdir()  # the file store never creates its folder
    return open_store(f"file://{tmp_path}/state/state.json")


# ------------------------------------------------------------------ one process


def test_store_never_written_loads_none(store: StateStore) -> None:
    assert store.load(F1) is None
    assert store.load_all() == {}


def test_store_save_then_load_round_trips_state_and_log(store: StateStore) -> None:
    state = RolloutState(flag_key=F1).evolve(
        LogEntry(at=12.5, action="start", reason="operator", numbers=MappingProxyType({"n": 3})),
        status=Status.RUNNING,
        stage=1,
        percent=5.0,
        since=12.5,
        reason="started",
    )
    store.save(state, expected_version=0)
    assert store.load(F1) == state
    assert store.load_all() == {F1: state}
    assert isinstance(store, StateStore)


def test_store_save_with_stale_version_raises_and_keeps_newer_state(store: StateStore) -> None:
    v1 = _bumped(RolloutState(flag_key=F1))
    store.save(v1, expected_version=0)
    v2 = _bumped(v1)
    store.save(v2, expected_version=1)
    competing = _bumped(v1, action="rollback")  # built from the stale v1
    with pytest.raises(StaleStateError, match=r"expected version 1, found 2"):
        store.save(competing, expected_version=1)
    assert store.load(F1) == v2


def test_store_first_save_expecting_existing_version_raises(store: StateStore) -> None:
    with pytest.raises(StaleStateError, match=rf"{F1}: state changed underneath"):
        store.save(_bumped(RolloutState(flag_key=F1)), expected_version=3)
    assert store.load(F1) is None


def test_store_change_token_changes_with_every_save(store: StateStore) -> None:
    tokens = [store.change_token()]
    state = RolloutState(flag_key=F1)
    for _ in range(3):
        new = _bumped(state)
        store.save(new, expected_version=state.version)
        state = new
        tokens.append(store.change_token())
    assert len(set(tokens)) == 4


def test_store_flags_are_kept_apart(store: StateStore) -> None:
    a = _bumped(RolloutState(flag_key="a"))
    b = _bumped(_bumped(RolloutState(flag_key="b")))
    store.save(a, expected_version=0)
    store.save(b, expected_version=0)
    assert store.load_all() == {"a": a, "b": b}


def test_memory_stores_do_not_share_state() -> None:
    first, second = open_store("memory://"), open_store("memory://")
    first.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    assert second.load(F1) is None
    assert isinstance(first, MemoryStateStore)


def test_file_store_survives_a_new_instance_and_writes_json(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = _bumped(RolloutState(flag_key=F1))
    FileStateStore(path).save(state, expected_version=0)
    assert FileStateStore(path).load(F1) == state
    data = json.loads(path.read_text("utf-8"))
    assert data["format"] == 1
    assert data["flags"][F1]["version"] == 1
    # No temporary file is left beside the state.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.lock"]


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("{not json", "corrupt state file"),
        ('{"format": 2, "flags": {}}', "unsupported format 2"),
        ('{"format": 1}', "corrupt state file"),
        ('{"format": 1, "flags": {"f": {"flag_key": "f"}}}', "corrupt state file"),
        (
            '{"format": 1, "flags": {"f": {"flag_key": "f", "status": "maybe", "stage": 0, '
            '"percent": 0, "since": 0, "version": 1}}}',
            "corrupt state file",
        ),
        ("[]", "corrupt state file"),
    ],
)
def test_file_store_corrupt_file_raises_state_store_error_naming_url(
    tmp_path: Path, content: str, detail: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content, "utf-8")
    store = FileStateStore(path)
    for read in (lambda: store.load(F1), store.load_all):
        with pytest.raises(StateStoreError) as info:
            read()
        assert str(info.value).startswith(f"file://{path}: ")
        assert detail in str(info.value)
    with pytest.raises(StateStoreError, match=r"corrupt|unsupported"):
        store.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    assert path.read_text("utf-8") == content  # a corrupt file is never overwritten


def test_file_store_folder_that_cannot_exist_raises_state_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", "utf-8")
    store = FileStateStore(blocker / "state.json")  # building it touches nothing
    url = f"file://{blocker}/state.json"
    for read in (lambda: store.load(F1), store.load_all):
        with pytest.raises(StateStoreError, match=rf"^{url}: cannot read: Not a directory"):
            read()
    with pytest.raises(StateStoreError, match=rf"^{url}: folder {blocker} does not exist"):
        store.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    assert blocker.read_text("utf-8") == "x"


def test_file_store_missing_folder_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "typo"
    store = open_store(f"file://{folder}/state.json")  # building it touches nothing
    message = rf"^file://{folder}/state.json: folder {folder} does not exist$"
    for call in (
        lambda: store.load(F1),
        store.load_all,
        lambda: store.save(_bumped(RolloutState(flag_key=F1)), expected_version=0),
    ):
        with pytest.raises(StateStoreError, match=message):
            call()
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_file_store_two_loads_without_a_write_parse_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    first = _bumped(RolloutState(flag_key=F1))
    FileStateStore(path).save(first, expected_version=0)
    parses: list[int] = []
    real_loads = json.loads

    def counting_loads(*args: Any, **kwargs: Any) -> Any:
        parses.append(1)
        return real_loads(*args, **kwargs)

    monkeypatch.setattr("openfeature_canary.stores._store.json.loads", counting_loads)
    reader = FileStateStore(path)

    assert reader.load_all() == {F1: first}
    assert reader.load_all() == {F1: first}
    assert reader.load(F1) == first
    assert len(parses) == 1

    # A write by another instance (another process) changes the file: the next load sees it.
    second = _bumped(first)
    FileStateStore(path).save(second, expected_version=1)
    parses.clear()
    assert reader.load_all() == {F1: second}
    assert reader.load(F1) == second
    assert len(parses) == 1


def test_file_store_load_all_returns_a_copy_the_caller_may_change(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = _bumped(RolloutState(flag_key=F1))
    store = FileStateStore(path)
    store.save(state, expected_version=0)
    store.load_all().clear()
    assert store.load_all() == {F1: state}
    assert store.load(F1) == state


def test_file_store_state_and_lock_files_are_owner_only_under_umask_022(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    previous = os.umask(0o022)
    try:
        FileStateStore(path).save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    finally:
        os.umask(previous)
    lock = tmp_path / "state.json.lock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_rollout_on_file_store_reads_nothing_until_load(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json", "utf-8")
    rollout = Rollout(load_plan(EXAMPLE_PLAN), store=f"file://{path}", clock=ManualClock(100))
    assert rollout.controller(F1).state == RolloutState(flag_key=F1)  # pending, the safe side
    with pytest.raises(StateStoreError, match=rf"^file://{path}: corrupt state file"):
        rollout.load()


def test_file_store_path_is_a_folder_raises_state_store_error_naming_url(tmp_path: Path) -> None:
    folder = tmp_path / "state.json"
    folder.mkdir()
    store = FileStateStore(folder)
    with pytest.raises(StateStoreError, match=rf"^file://{folder}: cannot read"):
        store.load(F1)


def test_open_store_file_url_opens_file_store(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/a%20b/state.json")
    assert isinstance(store, FileStateStore)
    assert store.path == tmp_path / "a b" / "state.json"
    assert isinstance(open_store(f"file://localhost{tmp_path}/s.json"), FileStateStore)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file://host/x.json", "file URLs need an absolute path"),
        ("file:relative.json", "file URLs need an absolute path"),
        ("file:///tmp/folder/", "needs a file name"),
        ("file://", "needs a file name|absolute path"),
        ("http://127.0.0.1/state", "unknown scheme 'http'"),
        ("state.json", "unknown scheme ''"),
    ],
)
def test_open_store_bad_url_raises_state_store_error_naming_url(url: str, message: str) -> None:
    with pytest.raises(StateStoreError, match=message) as info:
        open_store(url)
    assert repr(url) in str(info.value)


# ------------------------------------------------------------------ several processes


def _provider_side(
    path: str, to_child: Any, to_parent: Any
) -> None:  # pragma: no cover - runs in a child
    """Another worker: serves the flag from the shared file through a CanaryProvider."""
    from openfeature.contrib.provider.canary import CanaryProvider
    from openfeature.evaluation_context import EvaluationContext

    provider = CanaryProvider(
        str(EXAMPLE_PLAN), store=f"file://{path}", environ={}, background=False
    )
    provider.initialize(EvaluationContext())  # reads the store
    seen: list[str] = []
    provider.rollout.add_observer(lambda _old, new: seen.append(new.status.value))
    view = provider.view(F1)
    to_parent.put(("ready", view.status.value, view.percent))
    assert to_child.get(timeout=60) == "check"
    provider.runner.run_once()
    view = provider.view(F1)
    details = provider.resolve_boolean_details(F1, True, EvaluationContext("unit-1"))
    to_parent.put(
        (
            "after",
            view.status.value,
            view.percent,
            str(details.reason),
            details.value,
            details.variant,
            dict(details.flag_metadata),
            seen,
        )
    )
    # Now this worker acts, and the first one must see it.
    ctl = provider.controller(F1)
    ctl.reset()
    ctl.start()
    ctl.rollback("ledger_mismatch")
    to_parent.put(("done", ctl.state.version))
    provider.shutdown()


def test_file_store_rollback_in_one_process_is_seen_by_another(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    rollout = Rollout(load_plan(EXAMPLE_PLAN), store=f"file://{path}", clock=ManualClock(100))
    rollout.controller(F1).start()
    to_child, to_parent = SPAWN.Queue(), SPAWN.Queue()
    child = SPAWN.Process(target=_provider_side, args=(str(path), to_child, to_parent))
    child.start()
    try:
        assert to_parent.get(timeout=60) == ("ready", "running", 5.0)
        rollout.controller(F1).rollback("p95_breach", {"value": 162.0, "threshold": 150})
        to_child.put("check")
        tag, status, percent, reason, value, variant, meta, seen = to_parent.get(timeout=60)
        assert (tag, status, percent) == ("after", "rolled_back", 0.0)
        assert (reason, value, variant) == ("DISABLED", False, "off")
        assert meta == {
            "stage": 0,
            "percent": 0.0,
            "status": "rolled_back",
            "trigger": "p95_breach",
        }
        assert seen == ["rolled_back"]
        assert to_parent.get(timeout=60) == ("done", 5)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    notified: list[RolloutState] = []
    rollout.add_observer(lambda _old, new: notified.append(new))
    rollout.refresh()
    state = rollout.controller(F1).state
    assert (state.status, state.reason, state.version) == (Status.ROLLED_BACK, "ledger_mismatch", 5)
    assert [e.action for e in state.log] == ["start", "rollback", "reset", "start", "rollback"]
    assert notified == [state]


def _increment(path: str, n: int, go: Any, results: Any) -> None:  # pragma: no cover - child
    """Do ``n`` compare-and-set increments, retrying on a lost race; report wins and losses."""
    store = FileStateStore(path)
    go.wait(60)
    losses = 0
    for _ in range(n):
        while True:
            cur = store.load(F1) or RolloutState(flag_key=F1)
            try:
                store.save(_bumped(cur, action=f"pid{os.getpid()}"), expected_version=cur.version)
                break
            except StaleStateError:
                losses += 1
    results.put((n, losses))


def test_file_store_concurrent_writers_never_lose_an_update(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    writers, n = 3, 25
    go, results = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_increment, args=(path, n, go, results)) for _ in range(writers)]
    for p in procs:
        p.start()
    go.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(done for done, _ in outcomes) == writers * n
    final = FileStateStore(path).load(F1)
    assert final is not None
    assert final.version == writers * n
