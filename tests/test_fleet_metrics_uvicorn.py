"""A fleet-true ``/metrics`` under ``uvicorn --workers 4`` on a ``redis://`` store.

Whichever worker a scrape reaches, it shows the fleet's canary numbers, read from the store:
40 scrapes of the one port (each on a new connection, so the kernel spreads them over the
workers) show the same rollback count and the same canary request total after a rollback, and
again after the deciding worker is SIGKILLed (its contribution stays counted).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
from prometheus_server import free_port
from redis_server import RedisServer
from test_example_dataservice import Server, _env
from test_fleet_uvicorn import (
    FLAG,
    WORKERS,
    _canary_count,
    _cli,
    _drive,
    _other_holder,
    _plan,
    _uvicorn,
    _wait_for,
    _wait_ready,
    _wait_value,
    stub,  # noqa: F401  (the fixture)
)

from openfeature_canary import open_store
from openfeature_canary.stores import FleetStore

SCRAPES = 40


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _scrapes(url: str, n: int = SCRAPES) -> list[tuple[float, float, float]]:
    """``n`` scrapes, each on a new connection: (rollbacks, canary requests, this worker's
    own request count, which tells the workers apart)."""
    out = []
    with httpx.Client(
        limits=httpx.Limits(max_keepalive_connections=0), timeout=5, trust_env=False
    ) as client:
        for _ in range(n):
            text = client.get(f"{url}/metrics").text
            out.append(
                (
                    _sample(text, "canary_fleet_rollbacks_total", feature_flag_key=FLAG),
                    _sample(
                        text, "canary_fleet_requests_total", feature_flag_key=FLAG, cohort="canary"
                    ),
                    _sample(text, "http_server_request_duration_seconds_count"),
                )
            )
    return out


def _trigger_names(url: str, n: int = SCRAPES) -> list[frozenset[str]]:
    """``n`` scrapes on new connections: per scrape, the triggers with a fleet reading that is
    not breached (the values move at each tick; which triggers the decider read does not)."""
    out = []
    with httpx.Client(
        limits=httpx.Limits(max_keepalive_connections=0), timeout=5, trust_env=False
    ) as client:
        for _ in range(n):
            text = client.get(f"{url}/metrics").text
            names = _triggers_in(text, "canary_fleet_trigger_value")
            calm = _triggers_in(text, "canary_trigger_breached", value=0.0)
            out.append(frozenset(names) & frozenset(calm))
    return out


def _triggers_in(text: str, name: str, value: float | None = None) -> frozenset[str]:
    """The ``trigger`` labels of ``name``'s samples for FLAG (of the given value, if any)."""
    found = set()
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if not match or f'feature_flag_key="{FLAG}"' not in match.group(1):
            continue
        trigger = re.search(r'\btrigger="([^"]+)"', match.group(1))
        if trigger and (value is None or float(match.group(2)) == value):
            found.add(trigger.group(1))
    return frozenset(found)


def _store_canary_total(store: FleetStore) -> int:
    return sum(_canary_count(record) for _beat, record in store.records().values())


def _settled(store: FleetStore, quiet_s: float = 3.0) -> int:
    """The fleet's canary total once no record changed it for ``quiet_s``."""
    last, since = _store_canary_total(store), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        now = _store_canary_total(store)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _all_show(url: str, rollbacks: float, canary: float) -> list[tuple[float, float, float]]:
    """40 scrapes once every worker shows ``rollbacks`` and ``canary`` (given a few ticks
    to refresh), or the last 40 that did not."""
    scrapes: list[tuple[float, float, float]] = []

    def agree() -> bool:
        scrapes[:] = _scrapes(url)
        return all(s[:2] == (rollbacks, canary) for s in scrapes)

    _wait_for(agree, 30)
    return scrapes


def test_every_worker_shows_the_fleets_rollbacks_and_canary_total(
    tmp_path: Path,
    stub: Server,  # noqa: F811
) -> None:
    plan_path = _plan(tmp_path, tick="1s")
    with plan_path.open("a") as plan:  # a trigger the stub's latencies never reach
        plan.write(
            f'\n[[flags.{FLAG}.triggers]]\nname = "p95_breach"\n'
            'signal = "latency_p95_ms"\nabove = 2000\n'
        )
    redis = RedisServer(tmp_path).start()
    env = _env(
        DATASERVICE_URL=stub.url,
        DATASERVICE_EXAMPLE_PLAN=str(plan_path),
        DATASERVICE_EXAMPLE_STORE=redis.url,
        DATASERVICE_EXAMPLE_REPORTS=str(tmp_path / "reports"),
    )
    port = free_port()
    service = _uvicorn(port, env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        store = open_store(redis.url)
        assert isinstance(store, FleetStore)
        _wait_ready(url, service)
        _cli(env, plan_path, redis.url, "start", FLAG, "--force")
        served = _drive(url, seconds=4.0)
        assert served["canary"] > 0, served
        # The decider's trigger readings, on whichever worker a scrape reaches.
        shown: list[frozenset[str]] = []

        def readings_everywhere() -> bool:
            shown[:] = _trigger_names(url)
            return all(names == {"p95_breach"} for names in shown)

        _wait_for(readings_everywhere, 30)
        assert all(names == {"p95_breach"} for names in shown), (shown, service.log()[-3000:])
        _cli(env, plan_path, redis.url, "rollback", FLAG, "--reason", "checking /metrics")
        _drive(url, seconds=2.0)  # baseline only now; every worker publishes again
        canary = _settled(store)
        assert canary >= served["canary"] * 0.5, (canary, served)
        scrapes = _all_show(url, 1.0, float(canary))
        assert all(s[:2] == (1.0, canary) for s in scrapes), (scrapes, service.log()[-3000:])
        # The scrapes reached several workers (their own request counts differ).
        workers = len({s[2] for s in scrapes})
        print(f"\n{SCRAPES} scrapes reached {workers} workers: rollbacks 1, canary {canary}")
        assert workers >= 2, scrapes

        holder = _wait_value(lambda: store.lease_holder(time.time()), 30)
        assert isinstance(holder, str), service.log()[-3000:]
        os.kill(int(holder.split(":")[1]), signal.SIGKILL)
        assert _wait_value(lambda: _other_holder(store, holder), 60), service.log()[-3000:]
        _wait_ready(url, service)
        _drive(url, seconds=2.0)
        # The killed worker's record stays in the store: its canary requests still count.
        assert _settled(store) == canary
        scrapes = _all_show(url, 1.0, float(canary))
        assert all(s[:2] == (1.0, canary) for s in scrapes), (scrapes, service.log()[-3000:])
        print(f"after the SIGKILL: {len({s[2] for s in scrapes})} workers, all the same")
        assert len(store.records()) >= WORKERS
        assert "Traceback" not in service.log(), service.log()[-3000:]
    finally:
        service.stop()
        redis.stop()
