"""A fleet on one ``redis://`` store, with a real ``redis-server`` on 127.0.0.1 (spec §10): a
rollback written by one process reaches four serving processes within 1 s; a rollback racing an
advance wins; Redis killed and restarted: the providers go stale, then serve 0 %, then recover."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus
from redis_server import RedisServer
from waiting import wait_until

from openfeature_canary import (
    LogEntry,
    Rollout,
    RolloutState,
    Status,
    TransitionError,
    load_plan,
    open_store,
)
from openfeature_canary.stores import RedisStateStore

F1 = "dataservice-read-canary"
EXAMPLE_PLAN = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
SPAWN = multiprocessing.get_context("spawn")
UNIT = EvaluationContext(targeting_key="unit-1")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path).start()
    yield srv
    srv.stop()


def _changes(url: str) -> str:
    """The channel a store's change listener subscribes to (module doc of stores/_redis.py)."""
    return f"{RedisStateStore(url).prefix}:changes"


def _at_full_rollout(url: str) -> RolloutState:
    """The flag started and promoted to its last stage (100 %): every unit gets the canary."""
    rollout = Rollout(load_plan(EXAMPLE_PLAN), store=url)
    rollout.load()
    ctl = rollout.controller(F1)
    ctl.start()
    while ctl.state.percent < 100:
        ctl.promote()
    return ctl.state


def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``check()``; how long it took. Fails naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.01)
    return time.monotonic() - started


# ------------------------------------------------------------------ propagation


def _serve(url: str, name: str, reports: str, ready: Any, seen: Any) -> None:  # pragma: no cover
    """A serving process: resolves the flag until it turns off; reports when (monotonic)."""
    from openfeature.contrib.provider.canary import CanaryProvider

    provider = CanaryProvider(str(EXAMPLE_PLAN), store=url, environ={}, reports_dir=reports)
    api.set_provider_and_wait(provider)
    client = api.get_client()
    ready.put((name, client.get_boolean_value(F1, False, UNIT)))
    deadline = time.monotonic() + 30
    details = client.get_boolean_details(F1, True, UNIT)
    while details.value and time.monotonic() < deadline:
        time.sleep(0.001)
        details = client.get_boolean_details(F1, True, UNIT)
    seen.put((name, time.monotonic(), details.value, str(details.reason)))
    provider.shutdown()


def _roll_back(url: str, go: Any, done: Any) -> None:  # pragma: no cover - runs in a child
    """The fifth process: an operator's rollback, timed from just before the call."""
    rollout = Rollout(load_plan(EXAMPLE_PLAN), store=url)
    rollout.load()
    ctl = rollout.controller(F1)
    go.wait(60)
    at = time.monotonic()
    ctl.rollback("p95_breach", {"value": 162.0, "threshold": 150})
    done.put((at, ctl.state.status.value))


def test_fleet_rollback_by_a_fifth_process_reaches_four_providers_within_a_second(
    server: RedisServer, tmp_path: Path
) -> None:
    _at_full_rollout(server.url)
    ready, seen, done, go = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    names = [f"worker-{i}" for i in range(4)]
    procs = [
        SPAWN.Process(target=_serve, args=(server.url, n, str(tmp_path / n), ready, seen))
        for n in names
    ]
    procs.append(SPAWN.Process(target=_roll_back, args=(server.url, go, done)))
    for p in procs:
        p.start()
    try:
        assert sorted(ready.get(timeout=60) for _ in names) == [(n, True) for n in names]
        channel = _changes(server.url)  # a write from now on reaches every provider
        wait_until(lambda: server.subscribers(channel) >= len(names), "4 listeners", 30)
        go.set()
        written_at, status = done.get(timeout=30)
        assert status == "rolled_back"
        results = sorted(seen.get(timeout=30) for _ in names)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [(n, value, reason) for n, _, value, reason in results] == [
        (n, False, "DISABLED") for n in names
    ]
    lags = [at - written_at for _, at, _, _ in results]
    print(
        f"\nrollback propagation to 4 processes (refresh_interval 0.5 s): "
        f"median {statistics.median(lags) * 1000:.0f} ms, worst {max(lags) * 1000:.0f} ms"
    )
    assert max(lags) < 1.0
    assert all(p.exitcode == 0 for p in procs)


# ------------------------------------------------------------------ advance against rollback


def _advance(url: str, rounds: int, bases: Any, go: Any, out: Any) -> None:  # pragma: no cover
    """The decider's write of an advance, on the state it read before the race (as a policy
    round commits its decision: ``save_many`` against the version it decided on). Every other
    round it comes late, so that the rollback lands first and the advance must lose."""
    store = open_store(url)
    for i in range(rounds):
        go.wait(60)  # the round is set up
        base = store.load(F1)
        assert base is not None
        bases.put("read")
        go.wait(60)
        if i % 2:
            time.sleep(0.1)
        target = base.evolve(
            LogEntry(at=base.since + 1, action="advance", reason="gate_passed"),
            stage=base.stage + 1,
            percent=25.0,
        )
        out.put(("advance", store.save_many([(target, base.version)])[0]))


def _rollback(url: str, rounds: int, bases: Any, go: Any, out: Any) -> None:  # pragma: no cover
    """An operator's rollback through the controller (it re-reads and retries a lost race)."""
    rollout = Rollout(load_plan(EXAMPLE_PLAN), store=url)
    ctl = rollout.controller(F1)
    for _ in range(rounds):
        go.wait(60)  # the round is set up
        bases.put("read")
        go.wait(60)
        try:
            out.put(("rollback", ctl.rollback("error_rate_breach").status.value))
        except TransitionError as exc:
            out.put(("rollback", str(exc)))


def test_fleet_rollback_racing_an_advance_always_wins(server: RedisServer) -> None:
    rounds = 12
    plan = load_plan(EXAMPLE_PLAN)
    rollout = Rollout(plan, store=server.url)
    ctl = rollout.controller(F1)
    bases, out = SPAWN.Queue(), SPAWN.Queue()
    gates = [SPAWN.Event() for _ in range(2 * rounds)]  # per round: set up, then go
    advanced_first = 0
    ctl.refresh()
    ctl.start()
    procs = [
        SPAWN.Process(target=fn, args=(server.url, rounds, bases, go_list, out))
        for fn, go_list in ((_advance, _Gates(gates)), (_rollback, _Gates(gates)))
    ]
    for p in procs:
        p.start()
    try:
        for i in range(rounds):
            gates[2 * i].set()
            assert [bases.get(timeout=60) for _ in range(2)] == ["read", "read"]
            gates[2 * i + 1].set()
            outcome = dict(out.get(timeout=30) for _ in range(2))
            ctl.refresh()
            state = ctl.state
            assert state.status is Status.ROLLED_BACK, (i, outcome, state.log[-3:])
            assert outcome["rollback"] == "rolled_back"
            actions = [e.action for e in state.log]
            if outcome["advance"]:  # the advance landed first; the rollback came after it
                advanced_first += 1
                assert actions[-2:] == ["advance", "rollback"]
            else:
                assert actions[-2:] == ["start", "rollback"]
            if i < rounds - 1:
                ctl.reset()
                ctl.start()
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    print(f"\n{rounds} races: the advance landed first {advanced_first} times, then rolled back")
    assert all(p.exitcode == 0 for p in procs)
    assert 0 < advanced_first < rounds  # both orders were raced


class _Gates:
    """Start signals shared with the children (picklable for spawn): each ``wait`` waits for
    the next one."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.round = 0

    def wait(self, timeout: float) -> bool:
        ok = bool(self.events[self.round].wait(timeout))
        self.round += 1
        return ok


# ------------------------------------------------------------------ Redis down and back


def test_fleet_redis_killed_and_restarted_providers_go_stale_then_safe_then_ready(
    server: RedisServer, tmp_path: Path
) -> None:
    from openfeature.contrib.provider.canary import CanaryProvider

    last = _at_full_rollout(server.url)
    providers = [
        CanaryProvider(
            str(EXAMPLE_PLAN),
            store=server.url,
            environ={},
            reports_dir=tmp_path / f"r{i}",
            refresh_interval=0.1,
            max_staleness=1.0,
        )
        for i in range(2)
    ]
    clients = []
    for i, provider in enumerate(providers):
        api.set_provider_and_wait(provider, domain=f"p{i}")
        clients.append(api.get_client(domain=f"p{i}"))

    def all_are(status: ProviderStatus) -> bool:
        return all(c.get_provider_status() is status for c in clients)

    assert all_are(ProviderStatus.READY)
    assert [c.get_boolean_value(F1, False, UNIT) for c in clients] == [True, True]
    wait_until(lambda: server.subscribers(_changes(server.url)) >= 2, "both listeners subscribed")

    server.kill()
    to_stale = _wait(lambda: all_are(ProviderStatus.STALE), 3.0, "PROVIDER_STALE")
    # Within max_staleness: the last known state (100 %) is still served.
    assert [c.get_boolean_value(F1, False, UNIT) for c in clients] == [True, True]
    to_error = _wait(lambda: all_are(ProviderStatus.ERROR), 5.0, "PROVIDER_ERROR")
    for client in clients:
        details = client.get_boolean_details(F1, True, UNIT)  # even with a default of True
        assert (details.value, details.reason) == (False, Reason.DISABLED)  # 0 %: the old path
        assert server.url in str(details.flag_metadata["unavailable"])

    server.start()  # back on the same port, empty: it kept nothing
    to_ready = _wait(lambda: all_are(ProviderStatus.READY), 5.0, "PROVIDER_READY")
    assert [c.get_boolean_value(F1, False, UNIT) for c in clients] == [True, True]

    # An operator restores the state and rolls back: the listeners hear it on the new server.
    open_store(server.url).save(last, expected_version=0)
    rollout = Rollout(load_plan(EXAMPLE_PLAN), store=server.url)
    rollout.load()
    rollout.controller(F1).rollback("ledger_mismatch")
    _wait(lambda: not any(c.get_boolean_value(F1, True, UNIT) for c in clients), 1.0, "rollback")
    print(
        f"\nRedis killed: stale after {to_stale:.2f}s, error after {to_stale + to_error:.2f}s; "
        f"restarted: ready after {to_ready:.2f}s"
    )
    for provider in providers:
        provider.shutdown()
        store = provider.rollout.store
        assert isinstance(store, RedisStateStore)
        store.close()
