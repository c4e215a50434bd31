"""What a fleet costs: rollback propagation, evaluation with a ``redis://`` store, publication.

Run: ``python benchmarks/bench_fleet.py [--rounds 50] [--calls 200000]`` (needs
``redis-server`` on the PATH; ``scripts/test.sh`` installs it). Prints one Markdown table of
figures measured in this run:

- **Rollback propagation to 4 processes**: four spawned processes each serve the reference
  flag through ``CanaryProvider`` (``refresh_interval`` 0.5 s, the default, and 0.1 s) on a
  ``redis://`` store (a real ``redis-server`` on 127.0.0.1) and on a ``file://`` store. Each
  round the flag is reset, started and promoted to 100 %; once every process serves ``True``
  the bench process waits a random part of a poll (so that the write does not line up with
  the processes' polls), then rolls back as the CLI does
  (``Rollout(plan, store=url).controller(flag).rollback(...)``), timed from just before that
  call. Each process reports the ``time.monotonic()`` (one clock for the whole host) at which
  ``client.get_boolean_details`` turned ``False``. Figures: p50/p99 of the time until all
  four saw it, over ``--rounds`` rollbacks, and of each process's own lag.
- **Evaluation cost**: ``client.get_boolean_value`` at 5 % (the SPLIT path) with a
  ``redis://`` store against ``memory://``, ``--calls`` calls each in interleaved batches in
  this process; the evaluation path reads an immutable snapshot and never talks to Redis.
- **Publication cost per process per tick**: ``Fleet.round(now)`` (a local signals snapshot,
  its record written to the store, the lease taken or renewed) on each store, with a record
  of both flags' cohorts carrying traffic.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_provider import time_per_call_ns
from openfeature import api
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext

from openfeature_canary import Rollout, Status, load_plan, setup_telemetry
from openfeature_canary.instrumentation import record_request
from openfeature_canary.policy import Fleet
from openfeature_canary.signals import InProcessSignalSource, Publisher, snapshot_record
from openfeature_canary.stores import FleetStore, RedisStateStore, open_store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer  # noqa: E402  (the tests' real-server helper)

PLAN = ROOT / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
UNIT = "unit-1"
PROCESSES = 4
SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 10.0  # a child gives up on a flip it does not see (reported as missing)

Row = tuple[str, str]


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------ propagation


def _watch(url: str, refresh: float, reports: str, conn: Any) -> None:
    """A serving process: on ``"arm"`` wait until the flag serves ``True``, then report the
    monotonic time it turns ``False`` (``None`` if not within :data:`WAIT_S`)."""
    provider = CanaryProvider(
        str(PLAN), store=url, environ={}, reports_dir=reports, refresh_interval=refresh
    )
    api.set_provider_and_wait(provider)
    client = api.get_client()
    ctx = EvaluationContext(targeting_key=UNIT)
    conn.send("ready")
    while conn.recv() == "arm":
        conn.send(_flip_at(lambda: client.get_boolean_details(FLAG, False, ctx).value, True))
        conn.send(_flip_at(lambda: client.get_boolean_details(FLAG, True, ctx).value, False))
    provider.shutdown()


def _flip_at(value: Callable[[], bool], wanted: bool) -> float | None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if value() is wanted:
            return time.monotonic()
        time.sleep(0.001)
    return None


def propagation(url: str, refresh: float, rounds: int, folder: Path) -> tuple[list[float], ...]:
    """``rounds`` rollbacks seen by :data:`PROCESSES` processes: (all-four lags, each lag)."""
    rollout = Rollout(load_plan(PLAN), store=url)
    rollout.load()
    ctl = rollout.controller(FLAG)
    pipes = [SPAWN.Pipe() for _ in range(PROCESSES)]
    procs = [
        SPAWN.Process(target=_watch, args=(url, refresh, str(folder / f"r{i}"), child))
        for i, (_, child) in enumerate(pipes)
    ]
    for p in procs:
        p.start()
    conns = [parent for parent, _ in pipes]
    all_four: list[float] = []
    each: list[float] = []
    try:
        assert [c.recv() for c in conns] == ["ready"] * PROCESSES
        for _ in range(rounds):
            ctl.refresh()  # the rollback came from another Rollout, as the CLI's does
            if ctl.state.status is not Status.PENDING:
                ctl.reset()
            ctl.start()
            while ctl.state.percent < 100:
                ctl.promote()
            for c in conns:
                c.send("arm")
            assert all(c.recv() is not None for c in conns), "a process never served True"
            time.sleep(random.uniform(0, refresh))  # anywhere in the processes' poll
            written = time.monotonic()
            Rollout(load_plan(PLAN), store=url).controller(FLAG).rollback("bench")
            seen = [c.recv() for c in conns]
            lags = [at - written for at in seen if at is not None]
            assert len(lags) == PROCESSES, f"{PROCESSES - len(lags)} process(es) never saw it"
            each.extend(lags)
            all_four.append(max(lags))
    finally:
        for c in conns:
            c.send("stop")
        for p in procs:
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
    return all_four, each


# ------------------------------------------------------------------ evaluation


def evaluation(redis_url: str, calls: int) -> dict[str, float]:
    """Nanoseconds per ``get_boolean_value`` (median batch) with each store, 5 % stage."""
    ctxs = [EvaluationContext(targeting_key=f"req-{i:08x}") for i in range(1000)]
    providers = {
        "memory": CanaryProvider(load_plan(PLAN), store="memory://", environ={}),
        "redis": CanaryProvider(load_plan(PLAN), store=redis_url, environ={}),
    }
    fns: dict[str, Callable[[EvaluationContext], object]] = {}
    for name, provider in providers.items():
        api.set_provider_and_wait(provider, domain=f"bench-{name}")
        ctl = provider.controller(FLAG)
        if ctl.state.status is not Status.PENDING:
            ctl.reset()
        ctl.start()  # stage 1, 5 %: the SPLIT path
        client = api.get_client(f"bench-{name}")
        fns[name] = lambda ctx, client=client: client.get_boolean_value(FLAG, False, ctx)
    batches = 8
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        time_per_call_ns(fn, ctxs, calls // 10)
    for _ in range(batches):  # interleaved: a noisy neighbour hits both alike
        for name, fn in fns.items():
            samples[name].append(time_per_call_ns(fn, ctxs, calls // batches))
    for provider in providers.values():
        provider.shutdown()
        store = provider.rollout.store
        if isinstance(store, RedisStateStore):
            store.close()  # its listening thread, before the server stops
    api.shutdown()
    api.clear_providers()
    return {k: statistics.median(v) for k, v in samples.items()}


# ------------------------------------------------------------------ publication


def publication(url: str, rounds: int) -> tuple[list[float], list[float], int]:
    """Seconds per ``Fleet.round(now)`` on ``url`` (``rounds`` ticks 10 s apart, the
    reference plan's), seconds per lease renewal alone (``try_lease``), and the size of the
    record it publishes (bytes of JSON)."""
    plan = load_plan(PLAN)
    telemetry = setup_telemetry(plan)
    rng = random.Random(7)
    for flag in plan.flags:
        for variant in ("on", "off"):
            for _ in range(2000):
                status = 503 if rng.random() < 0.01 else 200
                record_request(
                    flag, variant, rng.lognormvariate(-3, 0.5), status,
                    meter_provider=telemetry.meter_provider,
                )  # fmt: skip
    store = open_store(url)
    assert isinstance(store, FleetStore)
    local = InProcessSignalSource(telemetry.reader, plan=plan)
    fleet = Fleet(store, "bench-process", publisher=Publisher(local, store, "bench-process"))
    now = time.time()
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        fleet.round(now + 10 * i)
        times.append(time.perf_counter() - started)
    lease = []
    for i in range(rounds):
        started = time.perf_counter()
        store.try_lease("bench-process", fleet.lease_ttl_s, now + 10 * (rounds + i))
        lease.append(time.perf_counter() - started)
    snap = local.latest()
    size = len(json.dumps(snapshot_record(snap))) if snap is not None else 0
    fleet.release()
    telemetry.shutdown()
    return times, lease, size


# ------------------------------------------------------------------ the table


@contextmanager
def _redis(folder: Path) -> Iterator[RedisServer]:
    server = RedisServer(folder).start()
    try:
        yield server
    finally:
        server.stop()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=50, help="rollbacks per configuration")
    parser.add_argument("--calls", type=int, default=200_000, help="evaluations per store")
    parser.add_argument("--ticks", type=int, default=200, help="Fleet.round calls per store")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, _redis(Path(tmp)) as server:
        folder = Path(tmp)
        base = server.url.rsplit("/", 1)[0]
        stores = {
            "redis": lambda i: f"{base}/{i}",
            "file": lambda i: f"file://{folder / f'state-{i}.json'}",
        }
        for i, (kind, refresh) in enumerate((k, r) for k in ("redis", "file") for r in (0.5, 0.1)):
            all_four, each = propagation(stores[kind](i), refresh, args.rounds, folder)
            rows.append(
                (
                    f"rollback → all {PROCESSES} processes, {kind}, refresh {refresh:g} s, "
                    f"p50 / p99 (n={len(all_four)})",
                    f"{_ms(pct(all_four, 0.5))} / {_ms(pct(all_four, 0.99))} "
                    f"(per process p50 {_ms(pct(each, 0.5))}, max {_ms(max(each))})",
                )
            )
        ns = evaluation(stores["redis"](8), args.calls)
        rows.append(
            (
                f"get_boolean_value at 5 %, redis:// vs memory:// ({args.calls} calls each)",
                f"{ns['redis'] / 1000:.3f} µs vs {ns['memory'] / 1000:.3f} µs: "
                f"ratio {ns['redis'] / ns['memory']:.3f}",
            )
        )
        for kind in ("file", "redis"):
            times, lease, size = publication(stores[kind](9), args.ticks)
            rows.append(
                (
                    f"Fleet.round(now) per process per tick, {kind} (n={len(times)})",
                    f"p50 {_ms(pct(times, 0.5))}, p99 {_ms(pct(times, 0.99))}; of which "
                    f"try_lease p50 {_ms(pct(lease, 0.5))} (record {size / 1024:.1f} KiB)",
                )
            )
    print(f"python {sys.version.split()[0]}, {PROCESSES} spawned processes, one host\n")
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
