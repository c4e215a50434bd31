"""The decider lease's timing, in virtual time (``ManualClock``), on every store kind.

A process's runner renews the lease at every round (``Fleet.renew``, every 0.5 s here, as a
file store's runner does); a killed decider simply stops. Shown: a dead decider is replaced
within 2 ticks of the reference plan (10 s); a live one never loses the lease while it renews,
whatever the order and phase of the rounds; one that stalled past its lease cannot decide, and
the store's compare-and-set refuses its stale transition.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openfeature.contrib.provider.canary import CanaryProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis_server import RedisServer

from openfeature_canary import (
    ManualClock,
    RolloutPlan,
    RolloutState,
    Status,
    load_plan,
    open_store,
    setup_telemetry,
)
from openfeature_canary.errors import StaleStateError
from openfeature_canary.policy import BackgroundRunner, Fleet, Rollout
from openfeature_canary.policy._fleet import (
    DEFAULT_LEASE_TTL_S,
    RENEWALS_PER_LEASE,
    check_lease_ttl,
)
from openfeature_canary.signals import InProcessSignalSource, Publisher
from openfeature_canary.stores import FleetStore, Lease, MemoryStateStore, StateStore

ROUND_S = 0.5  # the file store's runner interval (refresh_interval)
TICK_S = 10.0  # the reference plan's tick
START = 1_000_000.0
KINDS = ["memory", "file", "redis"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
def store_of(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], FleetStore]]:
    """Opens a fresh store of a kind (one object per call, except memory: one per test)."""
    namespace = uuid.uuid4().hex[:12]
    memory = MemoryStateStore()
    opened: list[object] = []

    def open_(kind: str) -> FleetStore:
        if kind == "memory":
            return memory
        if kind == "file":
            store = open_store(f"file://{tmp_path}/state.json")
        else:
            srv: RedisServer = request.getfixturevalue("server")
            store = open_store(f"{srv.url}?prefix=t-{namespace}")
        opened.append(store)
        assert isinstance(store, FleetStore)
        return store

    yield open_
    for store in opened:
        close = getattr(store, "close", None)
        if callable(close):
            close()


def _fleets(store_of: Callable[[str], FleetStore], kind: str, n: int) -> list[Fleet]:
    return [
        Fleet(store_of(kind), f"host:{100 + i}:abcd{i:04d}", renew_every_s=ROUND_S)
        for i in range(n)
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_dead_decider_is_replaced_within_two_ticks(
    store_of: Callable[[str], FleetStore], kind: str
) -> None:
    clock = ManualClock(START)
    fleets = _fleets(store_of, kind, 3)
    for _ in range(int(30 / ROUND_S)):  # 30 s of rounds: the first one to ask holds it
        clock.advance(ROUND_S)
        assert [f.renew(clock.now()) for f in fleets] == [True, False, False]
    killed_at = clock.now()  # killed right after its last renewal: the worst case
    survivors = fleets[1:]
    while not any(f.leader for f in survivors):
        clock.advance(ROUND_S)
        for f in survivors:
            f.renew(clock.now())
        assert clock.now() - killed_at <= 2 * TICK_S
    takeover = clock.now() - killed_at
    # The lease's ttl, one renewal gap of the dead decider's and one round of the survivors'.
    assert takeover <= DEFAULT_LEASE_TTL_S + DEFAULT_LEASE_TTL_S / RENEWALS_PER_LEASE + ROUND_S
    # It decides at its next tick, at most one tick later: within 2 ticks of the kill.
    assert takeover + TICK_S <= 2 * TICK_S
    assert sum(f.leader for f in survivors) == 1
    new = next(f for f in survivors if f.leader)
    assert store_of(kind).lease_holder(clock.now()) == new.process_id
    assert new.holds(clock.now()) and new.round(clock.now())


@pytest.mark.parametrize("kind", KINDS)
def test_live_decider_never_loses_its_lease_while_it_renews(
    store_of: Callable[[str], FleetStore], kind: str
) -> None:
    rng = random.Random(17)
    clock = ManualClock(START)
    decider, *others = _fleets(store_of, kind, 3)
    assert decider.renew(clock.now())
    # 20 virtual minutes; each round the processes come in a random order, and the decider's
    # round is late by up to 3/4 of its lease now and then (a GC pause, a slow store).
    for i in range(int(1200 / ROUND_S)):
        clock.advance(ROUND_S + (rng.uniform(0, 0.75 * DEFAULT_LEASE_TTL_S) if i % 97 == 0 else 0))
        fleets = [decider, *others]
        rng.shuffle(fleets)
        for f in fleets:
            f.renew(clock.now())
        if i % 20 == 0:  # a policy tick
            assert decider.round(clock.now())
        assert decider.leader and decider.holds(clock.now())
        assert not any(f.leader for f in others)


@pytest.mark.parametrize("kind", KINDS)
def test_stalled_decider_cannot_decide_after_its_lease_expired(
    store_of: Callable[[str], FleetStore], kind: str
) -> None:
    clock = ManualClock(START)
    stalled, other = _fleets(store_of, kind, 2)
    assert stalled.round(clock.now())  # its tick: it decides, reads what it needs ...
    decided_at = clock.now()
    # ... and stalls: meanwhile the other takes the lease over once it has expired.
    while not other.renew(clock.now()):
        assert stalled.holds(clock.now())  # no one can have it while this holds
        clock.advance(ROUND_S)
    assert clock.now() >= decided_at + DEFAULT_LEASE_TTL_S
    # Back from the stall: the lease it took is over (no I/O needed to know), and its next
    # round is refused by the store.
    assert not stalled.holds(clock.now())
    assert not stalled.round(clock.now() + 0.001)
    assert not stalled.renew(clock.now() + 5)
    assert not stalled.leader and other.leader


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_stale_deciders_transition_is_refused_by_compare_and_set(
    store_of: Callable[[str], FleetStore], kind: str
) -> None:
    """The fence whatever the timing: a decider that decided on version 1 before its stall
    cannot write over what the new decider wrote meanwhile."""
    store = store_of(kind)
    assert isinstance(store, StateStore)
    base = RolloutState("f", Status.RUNNING, stage=1, percent=5.0, since=START, version=0)
    store.save(base.evolve(), 0)
    seen = store.load("f")
    assert seen is not None and seen.version == 1
    store.save(seen.evolve(status=Status.ROLLED_BACK, stage=0, percent=0.0), 1)  # the new decider
    with pytest.raises(StaleStateError):
        store.save(seen.evolve(stage=2, percent=25.0), 1)  # the stale one's advance
    assert store.save_many([(seen.evolve(stage=2, percent=25.0), 1)]) == (False,)
    after = store.load("f")
    assert after is not None and after.status is Status.ROLLED_BACK


@pytest.mark.parametrize("kind", KINDS)
def test_lease_expired_without_a_successor_is_taken_again(
    store_of: Callable[[str], FleetStore], kind: str
) -> None:
    clock = ManualClock(START)
    (fleet,) = _fleets(store_of, kind, 1)
    assert fleet.round(clock.now())
    clock.advance(DEFAULT_LEASE_TTL_S + 1)
    assert not fleet.holds(clock.now())  # must not act on the old one ...
    assert fleet.renew(clock.now()) and fleet.holds(clock.now())  # ... but may take it anew


@pytest.mark.parametrize("kind", KINDS)
def test_released_lease_is_taken_over_at_once(
    store_of: Callable[[str], FleetStore], kind: str
) -> None:
    clock = ManualClock(START)
    first, second = _fleets(store_of, kind, 2)
    assert first.renew(clock.now()) and not second.renew(clock.now())
    first.release()
    assert store_of(kind).lease() is None
    clock.advance(ROUND_S)
    waited = ROUND_S
    while not second.renew(clock.now()):  # its last refusal stands for ttl/8 at most
        clock.advance(ROUND_S)
        waited += ROUND_S
    assert waited <= DEFAULT_LEASE_TTL_S / RENEWALS_PER_LEASE + ROUND_S


@pytest.mark.parametrize("kind", KINDS)
def test_lease_reads_holder_and_expiry(store_of: Callable[[str], FleetStore], kind: str) -> None:
    store = store_of(kind)
    assert store.lease() is None
    assert store.try_lease("host:1:aa", 8.0, START)
    assert store_of(kind).lease() == Lease("host:1:aa", START + 8.0)
    lease = store.lease()
    assert lease is not None and lease.left_s(START + 3) == 5.0
    assert lease.held_at(START + 7.9) and not lease.held_at(START + 8.0)
    assert store.lease_holder(START + 8.0) is None  # expired: read, but held by nobody


class _CountingStore(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        self.asked += 1
        return super().try_lease(holder, ttl_s, now)


def test_renewal_asks_the_store_about_eight_times_per_lease_not_every_round() -> None:
    store = _CountingStore()
    clock = ManualClock(START)
    fleet = Fleet(store, "host:1:aa", renew_every_s=0.1)
    for _ in range(600):  # 60 s of a redis store's runner rounds (0.1 s)
        clock.advance(0.1)
        assert fleet.renew(clock.now())
    assert store.asked <= 60 / (DEFAULT_LEASE_TTL_S / RENEWALS_PER_LEASE) + 1


def test_runner_renews_the_lease_at_every_round_before_any_tick(tmp_path: Path) -> None:
    plan = load_plan_text(tmp_path, tick="1h")
    clock = ManualClock(START)
    store = open_store(f"file://{tmp_path}/state.json")
    assert isinstance(store, FleetStore)
    fleet = Fleet(store, "host:1:aa", renew_every_s=0.5)
    runner = BackgroundRunner(Rollout(plan, store=store, clock=clock), renew=fleet.renew)
    runner.run_once()
    assert store.lease_holder(clock.now()) == "host:1:aa"
    clock.advance(DEFAULT_LEASE_TTL_S / 2)
    runner.run_once()
    lease = store.lease()
    assert lease == Lease("host:1:aa", clock.now() + DEFAULT_LEASE_TTL_S)


def load_plan_text(tmp_path: Path, *, tick: str) -> RolloutPlan:
    path = tmp_path / "plan.toml"
    path.write_text(
        f'[flags.f]\ntick = "{tick}"\n\n[[flags.f.stages]]\npercent = 100\nduration = "1h"\n'
    )
    return load_plan(path)


@pytest.mark.parametrize(
    ("ttl", "renew_every", "expected"),
    [
        (None, 0.5, DEFAULT_LEASE_TTL_S),
        (None, 0.1, DEFAULT_LEASE_TTL_S),
        (None, 10.0, 20.0),  # no runner: renewed at the 10 s tick only
        (None, None, DEFAULT_LEASE_TTL_S),
        (1.0, 0.5, 1.0),
        (30, 10.0, 30.0),
    ],
)
def test_lease_ttl_defaults_and_checks(
    ttl: float | None, renew_every: float | None, expected: float
) -> None:
    assert check_lease_ttl(ttl, renew_every) == expected


@pytest.mark.parametrize(
    ("ttl", "renew_every", "message"),
    [
        (0.9, 0.5, "lease_ttl 0.9 s: must be at least twice the interval it is renewed at"),
        (15.0, 10.0, "lease_ttl 15 s: must be at least twice the interval it is renewed at"),
        (0.0, None, "lease_ttl must be a positive number of seconds, got 0.0"),
        (-1.0, 0.5, "lease_ttl must be a positive number of seconds, got -1.0"),
        (float("nan"), 0.5, "lease_ttl must be a positive number of seconds, got nan"),
        (True, 0.5, "lease_ttl must be a positive number of seconds, got True"),
    ],
)
def test_lease_ttl_bad_input_raises_one_line_naming_it(
    ttl: float, renew_every: float | None, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        Fleet(MemoryStateStore(), "host:1:aa", lease_ttl_s=ttl, renew_every_s=renew_every)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_forked_child_does_not_take_its_parents_lease_for_its_own(tmp_path: Path) -> None:
    """A pre-fork server's worker inherits the parent's Fleet: it gets a new id, and must ask
    the store (and be refused) rather than trust the lease its parent took."""
    store = open_store(f"file://{tmp_path}/state.json")
    assert isinstance(store, FleetStore)
    source = InProcessSignalSource(InMemoryMetricReader())
    fleet = Fleet(store, "x", publisher=Publisher(source, store, "parent:1:aa"))
    now = time.time()
    assert fleet.renew(now) and fleet.holds(now)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave at once
        seen = [fleet.leader, fleet.holds(now), fleet.renew(now + 0.001), fleet.round(now + 0.002)]
        os.write(write, json.dumps([fleet.process_id, *seen]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_id, *seen = json.loads(pipe.read())
    assert os.waitpid(pid, 0)[1] == 0
    assert child_id != "parent:1:aa"
    assert seen == [False, False, False, False]
    assert store.lease_holder(now + 0.003) == "parent:1:aa" and fleet.leader


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, DEFAULT_LEASE_TTL_S),
        ({"lease_ttl": 1.0}, 1.0),  # renewed every 0.5 s: fine
        ({"background": False}, 20.0),  # renewed at the 10 s tick only: two of them
        ({"background": False, "lease_ttl": 25.0}, 25.0),
    ],
)
def test_provider_lease_ttl_follows_how_often_it_is_renewed(
    tmp_path: Path, options: dict[str, object], expected: float
) -> None:
    provider = _provider(tmp_path, **options)
    assert provider.fleet is not None and provider.fleet.lease_ttl_s == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lease_ttl": 0.9}, "lease_ttl 0.9 s: must be at least twice the interval it is "
         "renewed at (0.5 s)"),
        ({"background": False, "lease_ttl": 15.0}, "lease_ttl 15 s: must be at least twice "
         "the interval it is renewed at (10 s)"),
        ({"lease_ttl": -1.0}, "lease_ttl must be a positive number of seconds, got -1.0"),
    ],
)  # fmt: skip
def test_provider_bad_lease_ttl_raises_one_line_naming_it(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        _provider(tmp_path, **options)
    assert str(info.value) == f"CanaryProvider: {message}"


def _provider(tmp_path: Path, **options: object) -> CanaryProvider:
    plan = load_plan_text(tmp_path, tick="10s")
    telemetry = setup_telemetry(plan)
    return CanaryProvider(
        plan,
        store=f"file://{tmp_path}/state.json",
        telemetry=telemetry,
        refresh_interval=0.5,
        **options,  # type: ignore[arg-type]
    )
