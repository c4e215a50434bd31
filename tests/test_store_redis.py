"""The ``redis://`` store against a real ``redis-server`` on 127.0.0.1: the store protocol as the
file store keeps it (compare-and-set, ``save_many``, ``load_all``, a change token that moves with
every write, also another connection's or process's), corrupt values, an unreachable or silent
server, URLs, pub/sub with its polling fallback, and ``os.fork()`` (spec §10)."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import redis
from redis_server import RedisServer, free_port
from waiting import wait_until

from openfeature_canary import (
    FileStateStore,
    LogEntry,
    RolloutState,
    StaleStateError,
    StateStore,
    StateStoreError,
    Status,
    open_store,
)
from openfeature_canary.stores import RedisStateStore

F1 = "dataservice-read-canary"
SPAWN = multiprocessing.get_context("spawn")


def _bumped(state: RolloutState, action: str = "tick") -> RolloutState:
    return state.evolve(LogEntry(at=float(state.version), action=action, reason="test"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
def url(server: RedisServer) -> str:
    """A fresh namespace in the shared server: each test sees an empty store."""
    return f"{server.url}?prefix=t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def opener() -> Iterator[Callable[[str], RedisStateStore]]:
    """``open_store`` for the test; every store it opened is closed after it."""
    opened: list[RedisStateStore] = []

    def open_(url: str) -> RedisStateStore:
        store = open_store(url)
        assert isinstance(store, RedisStateStore)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(url: str, opener: Callable[[str], RedisStateStore]) -> RedisStateStore:
    return opener(url)


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    """Redis itself, to look at and spoil what the store wrote."""
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    yield client
    client.close()


def _eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ------------------------------------------------------------------ the protocol


def test_redis_store_never_written_loads_none(store: RedisStateStore) -> None:
    assert store.load(F1) is None
    assert store.load_all() == {}
    assert isinstance(store, StateStore)


def test_redis_store_save_then_load_round_trips_state_and_log(
    store: RedisStateStore, opener: Callable[[str], RedisStateStore]
) -> None:
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
    assert opener(store.url).load(F1) == state  # another connection reads it too


def test_redis_store_save_with_stale_version_raises_and_keeps_newer_state(
    store: RedisStateStore,
) -> None:
    v1 = _bumped(RolloutState(flag_key=F1))
    store.save(v1, expected_version=0)
    v2 = _bumped(v1)
    store.save(v2, expected_version=1)
    competing = _bumped(v1, action="rollback")
    with pytest.raises(StaleStateError, match=r"expected version 1, found 2"):
        store.save(competing, expected_version=1)
    with pytest.raises(
        StaleStateError, match=rf"^{re.escape(store.url)}: {F1}: state changed underneath"
    ):
        store.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    assert store.load(F1) == v2


def test_redis_store_save_many_writes_each_flag_whose_version_still_matches(
    store: RedisStateStore,
) -> None:
    a1, b1 = _bumped(RolloutState(flag_key="a")), _bumped(RolloutState(flag_key="b"))
    assert store.save_many([(a1, 0), (b1, 0)]) == (True, True)
    a2, b2, c1 = _bumped(a1), _bumped(b1), _bumped(RolloutState(flag_key="c"))
    token = store.change_token()
    # b is stale (expects 0, finds 1): a and c are written, b is not.
    assert store.save_many([(a2, 1), (b2, 0), (c1, 0)]) == (True, False, True)
    assert store.load_all() == {"a": a2, "b": b1, "c": c1}
    assert store.change_token() != token
    # Two changes of one flag in one call: the second sees the first.
    a3 = _bumped(a2)
    assert store.save_many([(a3, 2), (_bumped(a3), 3)]) == (True, True)
    # Nothing written: the token does not move.
    token = store.change_token()
    assert store.save_many([(a2, 1), (c1, 0)]) == (False, False)
    assert store.save_many([]) == ()
    assert store.change_token() == token
    assert store.load("a") == _bumped(a3)


def test_redis_store_change_token_changes_with_every_save(store: RedisStateStore) -> None:
    tokens = [store.change_token()]
    state = RolloutState(flag_key=F1)
    for _ in range(3):
        new = _bumped(state)
        store.save(new, expected_version=state.version)
        state = new
        tokens.append(store.change_token())  # this process's own write: at once
    assert len(set(tokens)) == 4


def test_redis_store_change_token_moves_on_another_connections_write(
    url: str, opener: Callable[[str], RedisStateStore]
) -> None:
    reader, writer = opener(url), opener(url)
    before = reader.change_token()
    state = RolloutState(flag_key=F1)
    for _ in range(3):
        new = _bumped(state)
        writer.save(new, expected_version=state.version)
        state = new
        assert _eventually(lambda b=before: reader.change_token() != b, 1.0)
        before = reader.change_token()
        assert reader.load(F1) == state


def _write_in_child(url: str) -> None:  # pragma: no cover - runs in a child
    open_store(url).save(_bumped(RolloutState(flag_key=F1)), expected_version=0)


def test_redis_store_change_token_moves_on_another_processes_write(
    url: str, opener: Callable[[str], RedisStateStore]
) -> None:
    store = opener(url)
    before = store.change_token()
    child = SPAWN.Process(target=_write_in_child, args=(url,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert _eventually(lambda: store.change_token() != before, 1.0)
    loaded = store.load(F1)
    assert loaded is not None
    assert loaded.version == 1


def test_redis_store_prefixes_keep_two_rollouts_apart(
    server: RedisServer, opener: Callable[[str], RedisStateStore]
) -> None:
    one = opener(f"{server.url}?prefix=one-{uuid.uuid4().hex}")
    two = opener(f"{server.url}?prefix=two-{uuid.uuid4().hex}")
    one.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    token = two.change_token()
    assert two.load_all() == {}
    two.save(_bumped(_bumped(RolloutState(flag_key=F1))), expected_version=0)
    assert one.load(F1) == _bumped(RolloutState(flag_key=F1))
    # "two" listens on its own channel: a write to "one" must not move "two"'s token.
    wait_until(lambda: server.subscribers(f"{two.prefix}:changes") >= 1, "two's listener")
    one.save(_bumped(_bumped(RolloutState(flag_key=F1))), expected_version=1)
    assert _eventually(lambda: two.change_token() != token, 1.0)  # its own write
    token = two.change_token()
    one.save(_bumped(_bumped(_bumped(RolloutState(flag_key=F1)))), expected_version=2)
    time.sleep(0.2)  # the scenario: a window for a notification that must NOT come
    assert two.change_token() == token


def test_redis_store_keeps_the_json_the_file_store_keeps(
    store: RedisStateStore, raw: redis.Redis, tmp_path: Path
) -> None:
    state = _bumped(RolloutState(flag_key=F1), action="start")
    store.save(state, expected_version=0)
    FileStateStore(tmp_path / "s.json").save(state, expected_version=0)
    in_file = json.loads((tmp_path / "s.json").read_text("utf-8"))["flags"][F1]
    stored = raw.hget(f"{store.prefix}:states", F1)
    assert isinstance(stored, bytes)
    assert json.loads(stored) == in_file
    assert raw.get(f"{store.prefix}:version") is not None


def test_redis_store_concurrent_writers_in_processes_never_lose_an_update(url: str) -> None:
    writers, n = 3, 25
    go, results = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_increment, args=(url, n, go, results)) for _ in range(writers)]
    for p in procs:
        p.start()
    go.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(done for done, _ in outcomes) == writers * n
    final = open_store(url).load(F1)
    assert final is not None
    assert final.version == writers * n
    print(f"\nCAS conflicts lost and retried: {sum(lost for _, lost in outcomes)}")


def _increment(url: str, n: int, go: Any, results: Any) -> None:  # pragma: no cover - child
    store = open_store(url)
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


def test_redis_store_works_for_a_user_limited_to_its_prefix(
    server: RedisServer, raw: redis.Redis, opener: Callable[[str], RedisStateStore]
) -> None:
    """The ACL of docs/stores.md: the prefix's keys and channel, the commands listed."""
    prefix = f"acl-{uuid.uuid4().hex[:8]}"
    acl = (
        f"ACL SETUSER {prefix} on >pw resetkeys ~{prefix}:* resetchannels &{prefix}:* -@all "
        "+hget +hgetall +hset +get +set +incr +exists +publish +eval +evalsha +script|load "
        "+subscribe +ping"
    )
    raw.execute_command(*acl.split())
    store = opener(f"redis://{prefix}:pw@127.0.0.1:{server.port}/0?prefix={prefix}")
    before = store.change_token()
    writer = opener(store.url.replace("***", "pw"))
    writer.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    assert _eventually(lambda: store.change_token() != before, 1.0)
    assert store.load_all() == {F1: _bumped(RolloutState(flag_key=F1))}
    other = opener(f"redis://{prefix}:pw@127.0.0.1:{server.port}/0?prefix=other")
    with pytest.raises(StateStoreError, match=r"NoPermissionError"):
        other.load_all()


# ------------------------------------------------------------------ bad values in Redis


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "expected a JSON object, got an array"),
        (b"\xff\xfe", "not UTF-8 text"),
        (
            b'{"flag_key": "F", "status": "pending", "stage": 0, "percent": 0, "since": 0, '
            b'"version": 1, "log": {}}',
            ".log: must be an array, got an object",
        ),
        (
            b'{"flag_key": "x", "status": "pending", "stage": 0, "percent": 0, "since": 0, '
            b'"version": 1}',
            "flag_key: must be its field's name",
        ),
        (
            b'{"flag_key": "F", "status": "maybe", "stage": 0, "percent": 0, "since": 0, '
            b'"version": 1}',
            ".status: must be one of",
        ),
        (
            b'{"flag_key": "F", "status": "running", "stage": 1, "percent": 500, "since": 0, '
            b'"version": 1}',
            ".percent: must be a number in [0, 100], got 500",
        ),
    ],
)
def test_redis_store_corrupt_value_raises_state_store_error_naming_the_key(
    store: RedisStateStore, raw: redis.Redis, value: bytes, detail: str
) -> None:
    value = value.replace(b'"F"', json.dumps(F1).encode())
    raw.hset(f"{store.prefix}:states", F1, value)
    for read in (lambda: store.load(F1), store.load_all):
        with pytest.raises(StateStoreError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{store.url}: corrupt state in {store.prefix}:states field ")
        assert f'"{F1}"' in message
        assert detail in message
    if b'"version": 1' not in value:  # no version to compare: never overwritten
        with pytest.raises(StateStoreError, match=r"corrupt state .* not overwritten"):
            store.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
        assert raw.hget(f"{store.prefix}:states", F1) == value


def test_redis_store_field_that_is_not_utf8_raises_naming_it(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    good = json.dumps(_bumped(RolloutState(flag_key=F1)).to_dict()).encode()
    raw.hset(f"{store.prefix}:states", b"\xffkey", good)
    with pytest.raises(StateStoreError) as info:
        store.load_all()
    message = str(info.value)
    where = f'{store.url}: corrupt state in {store.prefix}:states field "\\udcffkey": '
    assert message.startswith(where)
    assert "flag_key: must be its field's name" in message
    message.encode("utf-8")  # printable in any log


def test_redis_store_corrupt_flag_blocks_a_batch_entirely(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    raw.hset(f"{store.prefix}:states", "bad", b'{"version": -1}')
    with pytest.raises(StateStoreError, match=r'field "bad": not a state object'):
        store.save_many(
            [(_bumped(RolloutState(flag_key="a")), 0), (_bumped(RolloutState("bad")), 0)]
        )
    assert raw.hget(f"{store.prefix}:states", "a") is None  # nothing was written


def test_redis_store_key_of_another_type_raises_state_store_error(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    raw.set(f"{store.prefix}:states", "something else")
    for call in (
        lambda: store.load(F1),
        store.load_all,
        lambda: store.save(_bumped(RolloutState(flag_key=F1)), 0),
    ):
        with pytest.raises(
            StateStoreError, match=rf"^{re.escape(store.url)}: .*{store.prefix}:states"
        ):
            call()


# ------------------------------------------------------------------ an unusable Redis


def test_redis_store_unreachable_raises_state_store_error_without_the_password(
    opener: Callable[[str], RedisStateStore],
) -> None:
    port = free_port()
    store = opener(f"redis://:s3cret@127.0.0.1:{port}/0?timeout=0.5")
    assert store.url == f"redis://:***@127.0.0.1:{port}/0?timeout=0.5"
    for call in (
        lambda: store.load(F1),
        store.load_all,
        store.change_token,
        lambda: store.save(_bumped(RolloutState(flag_key=F1)), 0),
        lambda: store.save_many([(_bumped(RolloutState(flag_key=F1)), 0)]),
    ):
        started = time.monotonic()
        with pytest.raises(StateStoreError) as info:
            call()
        assert time.monotonic() - started < 5
        message = str(info.value)
        assert message.startswith(f"redis://:***@127.0.0.1:{port}/0?timeout=0.5: cannot ")
        assert "s3cret" not in message
        assert "ConnectionError" in message


def test_redis_store_silent_server_times_out_as_state_store_error() -> None:
    """A server that accepts and never answers (a hung Redis, a black-holed proxy)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = open_store(f"redis://127.0.0.1:{port}/0?timeout=0.3")
        started = time.monotonic()
        with pytest.raises(StateStoreError, match=r"cannot read: TimeoutError"):
            store.load_all()
        assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://", "needs a host"),
        ("redis://127.0.0.1:port/0", "the port must be a number"),
        ("redis://127.0.0.1:6379/zero", "the database must be a number"),
        ("redis://127.0.0.1:6379/0?prefix=", "prefix= must be"),
        ("redis://127.0.0.1:6379/0?prefix=a b", "prefix= must be"),
        ("redis://127.0.0.1:6379/0?timeout=0", "timeout= must be seconds"),
        ("redis://127.0.0.1:6379/0?timeout=soon", "timeout= must be seconds"),
        ("redis://127.0.0.1:6379/0?timout=1", "got timout"),
        ("redis://127.0.0.1:6379/0?prefix=a&prefix=b", "each once"),
        ("redis://127.0.0.1:6379/0#x", "has a #fragment"),
    ],
)
def test_open_store_bad_redis_url_raises_state_store_error_naming_it(
    url: str, message: str
) -> None:
    with pytest.raises(StateStoreError, match=message) as info:
        open_store(url)
    assert str(info.value).startswith(f"store URL {url!r}: ")


def test_redis_store_unparsable_url_raises_state_store_error_without_the_password() -> None:
    with pytest.raises(StateStoreError, match=r"^store URL 'redis://\*\*\*@\[::1:6379/0': "):
        RedisStateStore("redis://u:pw-9@[::1:6379/0")


def test_open_store_bad_redis_url_hides_the_password() -> None:
    with pytest.raises(StateStoreError) as info:
        open_store("redis://user:pw-9@127.0.0.1:6379/x")
    assert "pw-9" not in str(info.value)
    assert "redis://user:***@127.0.0.1:6379/x" in str(info.value)


def test_open_store_redis_url_defaults_and_options() -> None:
    store = open_store("redis://127.0.0.1")  # connects to nothing yet
    assert isinstance(store, RedisStateStore)
    assert (store.url, store.prefix) == ("redis://127.0.0.1", "openfeature-canary")
    other = open_store("rediss://cache.internal:6380/3?prefix=checkout.v2&timeout=2.5")
    assert isinstance(other, RedisStateStore)
    assert other.prefix == "checkout.v2"


def test_open_store_redis_without_the_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed
    with pytest.raises(StateStoreError, match=r"pip install 'openfeature-canary\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")


# ------------------------------------------------------------------ notification


def _gets(raw: redis.Redis) -> int:
    stats = raw.info("commandstats")
    assert isinstance(stats, dict)
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


def test_redis_store_change_token_costs_no_command_while_subscribed_and_polls_when_not(
    store: RedisStateStore, raw: redis.Redis, opener: Callable[[str], RedisStateStore]
) -> None:
    def quiet() -> bool:  # the listener is subscribed and has read the counter
        raw.config_resetstat()
        store.change_token()  # the first call starts the listening thread
        return _gets(raw) == 0

    wait_until(quiet, "the listener subscribed: a poll costs no command", 5.0)
    raw.config_resetstat()
    for _ in range(200):
        store.change_token()
    assert _gets(raw) == 0  # pub/sub is up: no network call per poll

    raw.client_kill_filter(_type="pubsub")  # the subscription drops (as in a failover)
    assert _eventually(lambda: (store.change_token(), _gets(raw))[1] > 0)  # polling fallback
    token = store.change_token()
    writer = opener(store.url)
    writer.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    assert _eventually(lambda: store.change_token() != token, 1.0)

    # The listener comes back by itself, and polling stops again.
    assert _eventually(quiet, 5.0)
    token = store.change_token()
    writer.save(_bumped(_bumped(RolloutState(flag_key=F1))), expected_version=1)
    assert _eventually(lambda: store.change_token() != token, 1.0)


def _listeners() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "openfeature-canary-redis-watcher"}


def test_redis_store_close_stops_the_listener_and_reopens_on_use(
    store: RedisStateStore,
) -> None:
    before = _listeners()
    store.change_token()
    started = _listeners() - before
    assert len(started) == 1
    store.close()
    assert not any(t.is_alive() for t in started)
    store.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)  # opens again
    assert store.load(F1) is not None


def test_redis_store_dropped_without_close_ends_its_listener(url: str) -> None:
    before = _listeners()
    store = open_store(url)
    store.change_token()
    started = _listeners() - before
    assert len(started) == 1
    del store
    gc.collect()
    assert _eventually(lambda: not any(t.is_alive() for t in started))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_redis_store_forked_child_opens_its_own_connections(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    store.save(_bumped(RolloutState(flag_key=F1)), expected_version=0)
    token = store.change_token()  # the parent's listener and pooled connection are up
    channel = f"{store.prefix}:changes"
    wait_until(lambda: raw.pubsub_numsub(channel)[0][1] >= 1, "the parent's listener")
    parent_clients = {c["id"] for c in raw.client_list()}
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_fd)
            state = store.load(F1)
            assert state is not None
            store.save(_bumped(state), expected_version=1)
            assert isinstance(store.change_token(), int)  # its own listener, started here
            ids = {c["id"] for c in redis.Redis.from_url(store.url.split("?")[0]).client_list()}
            store.close()  # closes the child's connections only
            os.write(write_fd, json.dumps(sorted(ids)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        seen_by_child = set(json.loads(pipe.read() or "[]"))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert seen_by_child - parent_clients  # the child connected anew
    # The parent's connections still work, and it hears the child's write.
    assert _eventually(lambda: store.change_token() != token, 1.0)
    loaded = store.load(F1)
    assert loaded is not None
    assert loaded.version == 2
