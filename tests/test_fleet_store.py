"""The fleet side of the state stores (spec §10): each process's published record with its
heartbeat, and the one decider lease; memory, file and a real ``redis-server`` on 127.0.0.1.
Records from other processes, damaged records, lease races between processes and a holder
killed with SIGKILL."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_server import RedisServer

from openfeature_canary import open_store
from openfeature_canary.stores import FileStateStore, FleetStore, RedisStateStore

SPAWN = multiprocessing.get_context("spawn")
KINDS = ["memory", "file", "redis"]
SHARED = ["file", "redis"]  # the kinds that other processes see

Opener = Callable[[], FleetStore]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
def url_of(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """The URL of a fresh store of a kind (a fresh file, a fresh redis prefix)."""
    namespace = uuid.uuid4().hex[:12]

    def url(kind: str) -> str:
        if kind == "memory":
            return "memory://"
        if kind == "file":
            return f"file://{tmp_path}/state.json"
        srv: RedisServer = request.getfixturevalue("server")
        return f"{srv.url}?prefix=t-{namespace}"

    return url


def _open(url: str) -> FleetStore:
    store = open_store(url)
    assert isinstance(store, FleetStore)
    return store


@pytest.fixture
def opener(request: pytest.FixtureRequest, url_of: Callable[[str], str]) -> Iterator[Opener]:
    """Opens handles on one fresh store of the test's kind: each its own object (and
    connection), except for ``memory://``, which only this one object holds."""
    url = url_of(request.param)
    opened = [_open(url)]

    def open_() -> FleetStore:
        if url == "memory://":
            return opened[0]
        opened.append(_open(url))
        return opened[-1]

    yield open_
    for store in opened:
        if isinstance(store, RedisStateStore):
            store.close()


def _url(store: FleetStore) -> str:
    assert isinstance(store, FileStateStore | RedisStateStore)
    return store.url


RECORD = {"flags": {"f": {"requests": [1, 2]}}, "lag": 0.5}


# ---------------------------------------------------------------------- records


@pytest.mark.parametrize("opener", KINDS, indirect=True)
def test_records_publish_replace_forget_round_trip(opener: Opener) -> None:
    store = opener()
    assert isinstance(store, FleetStore)
    assert store.records() == {}
    store.publish("host-1:101:ab", RECORD, 10.0)
    store.publish("host-1:102:cd", {"n": 1}, 11.5)
    assert store.records() == {"host-1:101:ab": (10.0, RECORD), "host-1:102:cd": (11.5, {"n": 1})}

    store.publish("host-1:101:ab", {"n": 2}, 20.0)  # replaces its last one
    assert opener().records()["host-1:101:ab"] == (20.0, {"n": 2})

    store.forget("host-1:102:cd")
    store.forget("never-published")
    assert store.records() == {"host-1:101:ab": (20.0, {"n": 2})}


def _publish_in_child(url: str, process_id: str) -> None:  # pragma: no cover - runs in a child
    _open(url).publish(process_id, {"pid": os.getpid()}, 42.0)


@pytest.mark.parametrize("opener", SHARED, indirect=True)
def test_records_written_by_another_process_are_seen(opener: Opener) -> None:
    store = opener()
    store.publish("parent", {"pid": os.getpid()}, 41.0)
    child = SPAWN.Process(target=_publish_in_child, args=(_url(store), "child"))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    found = store.records()
    assert found["parent"] == (41.0, {"pid": os.getpid()})
    assert found["child"] == (42.0, {"pid": child.pid})


BAD_VALUES = {
    "torn": b'{"heartbeat":1.0,"record":{"fla',
    "not UTF-8": b'{"heartbeat":1.0,"record":{"\xff":1}}',
    "not an object": b"[1, 2]",
    "no heartbeat": b'{"record":{}}',
    "heartbeat not a number": b'{"heartbeat":"1","record":{}}',
    "record not an object": b'{"heartbeat":1.0,"record":[]}',
}


def _raw_client(store: RedisStateStore) -> redis.Redis:
    """A plain connection to the store's Redis (the URL without the store's options)."""
    return redis.Redis.from_url(store.url.partition("?")[0])


def _plant(store: FleetStore, process_id: str, raw: bytes) -> None:
    """A damaged record, as a killed writer, a disk error or another program leaves it."""
    if isinstance(store, FileStateStore):
        folder = store.path.with_name(store.path.name + ".fleet") / "processes"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{process_id}.json").write_bytes(raw)
    else:
        assert isinstance(store, RedisStateStore)
        client = _raw_client(store)
        client.hset(f"{store.prefix}:processes", process_id, raw)
        client.close()


@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("opener", SHARED, indirect=True)
def test_records_damaged_record_left_out_with_one_warning(
    opener: Opener, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = opener()
    store.publish("good", RECORD, 1.0)
    _plant(store, "broken", BAD_VALUES[bad])
    with caplog.at_level(logging.WARNING, logger="openfeature_canary"):
        for _ in range(3):  # the decider reads at every tick
            assert store.records() == {"good": (1.0, RECORD)}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "process broken" in warnings[0] and "left out" in warnings[0]

    store.publish("broken", RECORD, 2.0)  # the process publishes again: read, and read fine
    assert set(store.records()) == {"good", "broken"}


def test_records_file_store_unreadable_file_left_out_with_one_warning(
    url_of: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    store = _open(url_of("file"))
    store.publish("good", RECORD, 1.0)
    assert isinstance(store, FileStateStore)
    (store.path.with_name(store.path.name + ".fleet") / "processes" / "odd.json").mkdir()
    with caplog.at_level(logging.WARNING, logger="openfeature_canary"):
        assert store.records() == {"good": (1.0, RECORD)}
        assert store.records() == {"good": (1.0, RECORD)}
    assert [r.getMessage().endswith("left out: Is a directory") for r in caplog.records] == [True]


BAD_IDS = ["", "a/b", "../x", "a b", "é", "x" * 129, "a\nb"]


@pytest.mark.parametrize("process_id", BAD_IDS)
@pytest.mark.parametrize("opener", KINDS, indirect=True)
def test_process_id_not_acceptable_raises_value_error(opener: Opener, process_id: str) -> None:
    store = opener()
    calls: list[Callable[[], object]] = [
        lambda: store.publish(process_id, {}, 1.0),
        lambda: store.forget(process_id),
        lambda: store.try_lease(process_id, 1.0, 1.0),
        lambda: store.release_lease(process_id),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="must be 1-128 characters"):
            call()
    assert store.records() == {}
    assert store.lease_holder(1.0) is None


@pytest.mark.parametrize(
    ("record", "now", "match"),
    [
        ({"x": float("nan")}, 1.0, "not JSON-safe"),
        ({"x": object()}, 1.0, "not JSON-safe"),
        ({"x": "y" * (1024 * 1024)}, 1.0, "more than 1048576"),
        ({}, float("inf"), "heartbeat must be a finite number"),
    ],
)
@pytest.mark.parametrize("opener", KINDS, indirect=True)
def test_publish_bad_record_raises_value_error(
    opener: Opener, record: dict[str, Any], now: float, match: str
) -> None:
    store = opener()
    with pytest.raises(ValueError, match=match):
        store.publish("p1", record, now)
    assert store.records() == {}


# ---------------------------------------------------------------------- the lease


@pytest.mark.parametrize("opener", KINDS, indirect=True)
def test_lease_taken_renewed_refused_expired_released(
    opener: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = opener(), opener()
    with caplog.at_level(logging.DEBUG, logger="openfeature_canary"):
        assert a.lease_holder(0.0) is None
        assert a.try_lease("a", 10.0, 0.0)  # first taker
        assert not b.try_lease("b", 10.0, 5.0)  # refused, quietly
        assert b.lease_holder(5.0) == "a"
        assert a.try_lease("a", 10.0, 8.0)  # renewed until 18
        assert not b.try_lease("b", 10.0, 17.9)
        assert b.lease_holder(17.9) == "a"
        assert b.lease_holder(18.0) is None  # expired at its `expires`
        assert b.try_lease("b", 10.0, 18.0)  # taken over
        assert not a.try_lease("a", 10.0, 19.0)
        assert a.lease_holder(19.0) == "b"

        a.release_lease("a")  # not the holder: nothing happens
        assert a.lease_holder(19.0) == "b"
        b.release_lease("b")
        assert a.lease_holder(19.0) is None
        assert a.try_lease("a", 10.0, 19.0)  # at once, not after expiry
        assert b.lease_holder(19.0) == "a"
    assert caplog.records == []


@pytest.mark.parametrize(("ttl", "now"), [(0.0, 1.0), (-1.0, 1.0), (1.0, float("nan"))])
@pytest.mark.parametrize("opener", KINDS, indirect=True)
def test_lease_bad_ttl_or_now_raises_value_error(opener: Opener, ttl: float, now: float) -> None:
    with pytest.raises(ValueError, match="lease"):
        opener().try_lease("a", ttl, now)


@pytest.mark.parametrize("opener", SHARED, indirect=True)
def test_lease_damaged_value_counts_as_free(opener: Opener) -> None:
    store = opener()
    if isinstance(store, FileStateStore):
        folder = store.path.with_name(store.path.name + ".fleet")
        folder.mkdir()
        (folder / "lease.json").write_bytes(b'{"holder": "x", "expi')
    else:
        assert isinstance(store, RedisStateStore)
        client = _raw_client(store)
        client.set(f"{store.prefix}:lease", b"not json")
        client.close()
    assert store.lease_holder(0.0) is None
    assert store.try_lease("a", 1.0, 0.0)
    assert store.lease_holder(0.5) == "a"


def test_lease_redis_key_has_garbage_collection_expiry(
    server: RedisServer, url_of: Callable[[str], str]
) -> None:
    store = open_store(url_of("redis"))
    assert isinstance(store, RedisStateStore)
    try:
        store.try_lease("a", 1.0, 100.0)
        client = _raw_client(store)
        assert 59_000 < client.pttl(f"{store.prefix}:lease") <= 60_000
        store.try_lease("a", 30.0, 101.0)  # 10 x ttl
        assert 299_000 < client.pttl(f"{store.prefix}:lease") <= 300_000
        assert json.loads(client.get(f"{store.prefix}:lease")) == {"holder": "a", "expires": 131.0}
        client.close()
    finally:
        store.close()


# ---------------------------------------------------------------------- races

ROUNDS = 25
RACERS = 8


def _race(url: str, name: str, barrier: Any, results: Any) -> None:  # pragma: no cover - child
    store = _open(url)
    won = []
    for r in range(ROUNDS):
        barrier.wait(20)
        # The last round's lease (ttl 1) has expired at this round's `now`: all compete.
        won.append(store.try_lease(name, 1.0, 10.0 * r))
    results.put((name, won))
    if isinstance(store, RedisStateStore):
        store.close()


def _winners(results: list[tuple[str, list[bool]]]) -> list[list[str]]:
    return [[name for name, won in results if won[r]] for r in range(ROUNDS)]


def test_lease_race_file_store_processes_one_winner_per_round(url_of: Callable[[str], str]) -> None:
    url = url_of("file")
    barrier, queue = SPAWN.Barrier(RACERS), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_race, args=(url, f"p{i}", barrier, queue)) for i in range(RACERS)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(60)  # returns when it ends: 10 s missed at load 20
        assert p.exitcode == 0
    winners = _winners(results)
    assert all(len(w) == 1 for w in winners), winners
    assert _open(url).lease_holder(10.0 * (ROUNDS - 1)) == winners[-1][0]


def test_lease_race_redis_connections_one_winner_per_round(
    server: RedisServer, url_of: Callable[[str], str]
) -> None:
    url = url_of("redis")
    barrier = threading.Barrier(RACERS)
    results: list[tuple[str, list[bool]]] = []

    class Results:
        def put(self, item: tuple[str, list[bool]]) -> None:
            results.append(item)

    threads = [
        threading.Thread(target=_race, args=(url, f"t{i}", barrier, Results()))
        for i in range(RACERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == RACERS
    assert all(len(w) == 1 for w in _winners(results)), _winners(results)


# ---------------------------------------------------------------------- a holder killed

TTL_S = 1.0
RENEW_S = 0.2


def _hold(url: str, holding: Any) -> None:  # pragma: no cover - runs in a child
    store = _open(url)
    while True:
        if store.try_lease("holder", TTL_S, time.time()):
            holding.set()
        time.sleep(RENEW_S)


def test_lease_holder_killed_taken_over_within_ttl_and_one_renewal(
    url_of: Callable[[str], str],
) -> None:
    url = url_of("file")
    store = _open(url)
    holding = SPAWN.Event()
    child = SPAWN.Process(target=_hold, args=(url, holding), daemon=True)
    child.start()
    try:
        assert holding.wait(60)  # a spawned child's start-up under load
        time.sleep(3 * RENEW_S)  # it renews: still refused after more than one renewal
        assert not store.try_lease("taker", TTL_S, time.time())
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        killed = time.time()
        while not store.try_lease("taker", TTL_S, time.time()):
            assert time.time() - killed < 5 * TTL_S, "the lease was never taken over"
            time.sleep(0.02)
        took = time.time() - killed
    finally:
        child.kill()
        child.join(10)
    print(f"\nlease taken over {took:.3f} s after SIGKILL (ttl {TTL_S} s, renewal {RENEW_S} s)")
    assert took <= TTL_S + RENEW_S
    assert store.lease_holder(time.time()) == "taker"
