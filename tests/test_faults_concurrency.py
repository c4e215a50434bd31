"""Faults of concurrency (issue 8): forks under load and rollbacks raced by a fast poll.

- Pre-fork servers fork while threads evaluate flags (MetricsHook and PolicyHook recording and
  ticking), collect metrics, write the state store and the outbox: every child must do all of
  that itself at once, and the parent's writes must go on.
- The same faults made certain: a thread holding what a file write holds (its thread lock,
  then the ``flock``), what a whole collection holds, or a lock stuck for good, at the fork.
- A rollback that has returned is never undone: no evaluation that starts after it answers
  ``on``, while a background poll reads the store every millisecond.

Real parts only: a file store in ``tmp_path``, the OpenTelemetry SDK, real ``os.fork()``; the
only injected fault is a thread holding the real locks at the moment of a fork.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import MetricsHook, PolicyHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otel_points import points

from openfeature_canary import RolloutPlan, RolloutState, Status, _forksafe, load_plan
from openfeature_canary.errors import StaleStateError
from openfeature_canary.events import JsonScalar, Outbox, OutboxEvent
from openfeature_canary.stores import FileStateStore, StateStore
from openfeature_canary.telemetry import Telemetry, setup_telemetry

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

FLAG = "dataservice-read-canary"
OTHER = "dataservice-user-read-canary"  # written by the writer thread and by every child
FORKS = 20
CHILD_TIMEOUT_S = 5.0
CYCLES = 12


@pytest.fixture
def plan(example_plan_path: Path) -> RolloutPlan:
    return load_plan(example_plan_path)


class _Load:
    """Background threads that keep every lock of a serving process busy."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.writes = 0
        self.longest_write_s = 0.0
        self._threads: list[threading.Thread] = []

    def run(self, target: Callable[[], object], count: int = 1) -> None:
        def loop() -> None:
            try:
                while not self.stop.is_set():
                    target()
            except BaseException:
                self.errors.append(traceback.format_exc())

        for _ in range(count):
            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self) -> list[bool]:
        self.stop.set()
        for thread in self._threads:
            thread.join(5)
        return [t.is_alive() for t in self._threads]


def _bump(store: StateStore, key: str) -> None:
    """One more version of ``key``'s state (compare-and-set, retried against other writers)."""
    for _ in range(100):
        current = store.load(key)
        assert current is not None
        try:
            store.save(current.evolve(), expected_version=current.version)
            return
        except StaleStateError:
            continue
    raise AssertionError(f"{key}: lost 100 compare-and-set races in a row")


def _event(name: str, **properties: JsonScalar) -> OutboxEvent:
    return OutboxEvent.create(name, properties, now=time.time())


def _wait_child(pid: int, timeout_s: float) -> int | None:
    """The child's exit code, or None when it had to be killed after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)


def _in_thread(work: Callable[[], object], timeout_s: float) -> bool:
    """Run ``work`` on a thread; False when it has not finished within ``timeout_s``."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


@pytest.fixture
def serving(tmp_path: Path, plan: RolloutPlan) -> Iterator[tuple[CanaryProvider, Telemetry]]:
    telemetry = setup_telemetry(plan)
    provider = CanaryProvider(
        plan,
        store=f"file://{tmp_path}/state.json",
        telemetry=telemetry,
        reports_dir=tmp_path / "reports",
        environ={},
        refresh_interval=0.005,
    )
    api.set_provider_and_wait(provider)
    yield provider, telemetry
    provider.shutdown()
    telemetry.shutdown()


def test_fork_under_load_children_evaluate_record_collect_write_enqueue_parent_unblocked(
    serving: tuple[CanaryProvider, Telemetry], tmp_path: Path
) -> None:
    provider, telemetry = serving
    client = api.get_client()
    policy_hook = PolicyHook(provider)  # ticks the policy on evaluating threads
    api.add_hooks([policy_hook])
    provider.controller(FLAG).start(force=True)
    store = provider.rollout.store
    store.save(provider.controller(OTHER).state.evolve(), expected_version=0)
    outbox = provider.outbox
    assert outbox is not None
    counter = telemetry.meter_provider.get_meter("fork-test").create_counter("fork_test.records")
    load = _Load()
    units = iter(range(10**9))

    def evaluate() -> None:
        client.get_boolean_value(FLAG, False, EvaluationContext(targeting_key=f"u-{next(units)}"))

    def write() -> None:
        began = time.monotonic()
        _bump(store, OTHER)
        outbox.enqueue(_event("parent_write", n=load.writes))
        load.writes += 1
        load.longest_write_s = max(load.longest_write_s, time.monotonic() - began)

    load.run(evaluate, count=4)
    load.run(write)
    load.run(lambda: telemetry.reader.get_metrics_data())  # a scrape, over and over
    load.run(lambda: counter.add(1, {"thread": "load"}))
    time.sleep(0.2)

    failures: list[str] = []
    fork_s: list[float] = []
    child_s: list[float] = []
    try:
        for k in range(FORKS):
            time.sleep(0.005 * (k % 4))
            read_end, write_end = os.pipe()
            with warnings.catch_warnings():  # 3.12+: "multi-threaded process": on purpose
                warnings.simplefilter("ignore", DeprecationWarning)
                forked = time.monotonic()
                pid = os.fork()
            if pid == 0:  # the child: only this thread exists
                code, report = 1, "the child crashed"
                try:
                    os.close(read_end)
                    answer = client.get_boolean_details(
                        FLAG, False, EvaluationContext(targeting_key="child")
                    )
                    assert answer.error_code is None, answer.error_message
                    counter.add(1, {"thread": "child"})
                    mine = [
                        point.value
                        for attrs, point in points(telemetry.reader, "fork_test.records")
                        if attrs == {"thread": "child"}
                    ]
                    assert mine == [1], f"the child's own record collected: {mine}"
                    _bump(store, OTHER)
                    outbox.enqueue(_event("child_write", child=k))
                    code, report = 0, ""
                except BaseException:
                    report = traceback.format_exc()
                finally:
                    os.write(write_end, report.encode()[:4000])
                    os._exit(code)
            os.close(write_end)
            fork_s.append(time.monotonic() - forked)
            exit_code = _wait_child(pid, CHILD_TIMEOUT_S)
            child_s.append(time.monotonic() - forked)
            with os.fdopen(read_end, "rb") as pipe:
                report = pipe.read().decode(errors="replace")
            if exit_code is None:
                failures.append(f"child {k} hung (killed after {CHILD_TIMEOUT_S}s)")
            elif exit_code != 0:
                failures.append(f"child {k} exited {exit_code}: {report}")
    finally:
        alive = load.join()
        api.clear_hooks()
        policy_hook.close()
    print(
        f"os.fork() took up to {max(fork_s) * 1000:.0f} ms, a child up to {max(child_s):.2f} s, "
        f"a parent's write up to {load.longest_write_s:.2f} s"
    )
    assert not failures, "\n".join(failures)
    assert not load.errors, load.errors[0]
    assert not any(alive), "a load thread of the parent is stuck"

    # The parent's writes were not blocked by any child, and are not now.
    assert load.writes >= FORKS, f"the parent wrote only {load.writes} times meanwhile"
    assert load.longest_write_s < CHILD_TIMEOUT_S / 2, "a child held up the parent's writes"
    assert _in_thread(lambda: _bump(store, OTHER), 5.0), "the parent's store write is blocked"
    assert _in_thread(lambda: outbox.enqueue(_event("after")), 5.0), "the outbox is blocked"
    names = [e.event_name for e in Outbox(outbox.path).pending()]
    assert names.count("child_write") == FORKS
    assert names.count("parent_write") == load.writes


def _fork_child(work: Callable[[], object]) -> tuple[int, float]:
    """Fork; the child runs ``work`` and exits 0 when it returned. Returns the child's pid and
    how long ``os.fork()`` took in the parent (its wait for the locks)."""
    with warnings.catch_warnings():  # 3.12+: "multi-threaded process": on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        began = time.monotonic()
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid, time.monotonic() - began


def _hold_in_thread(*locks: Any, flock_path: Path | None = None) -> threading.Event:
    """A thread holding ``locks`` (then an ``flock`` on ``flock_path``), as a write or a
    collection under way does, until the returned event is set."""
    inside, release = threading.Event(), threading.Event()

    def run() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            if flock_path is not None:
                lock_file = stack.enter_context(open(flock_path, "a+b"))
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            inside.set()
            release.wait(10)

    threading.Thread(target=run, daemon=True).start()
    assert inside.wait(5)
    return release


def _file_store(tmp_path: Path) -> FileStateStore:
    store = FileStateStore(tmp_path / "state.json")
    store.save(RolloutState(flag_key=OTHER).evolve(), expected_version=0)
    return store


def _file_writer(
    tmp_path: Path, kind: str
) -> tuple[Any, Path, Callable[[], object], Callable[[], int]]:
    """(its thread lock, its lock file, one write, how many writes are in the file)."""
    if kind == "store":
        store = _file_store(tmp_path)

        def version() -> int:
            state = store.load(OTHER)
            return state.version if state else 0

        return store._thread_lock, store._lock_path, lambda: _bump(store, OTHER), version
    outbox = Outbox(tmp_path / "outbox.jsonl")
    outbox.enqueue(_event("first"))
    return (
        outbox._thread_lock,
        outbox._lock_path,
        lambda: outbox.enqueue(_event("write")),
        lambda: len(Outbox(outbox.path).pending()),
    )


@pytest.mark.parametrize("kind", ["store", "outbox"])
def test_fork_during_a_file_write_waits_for_it_child_and_parent_both_write(
    tmp_path: Path, kind: str
) -> None:
    thread_lock, lock_path, write, written = _file_writer(tmp_path, kind)
    # A thread inside a write: the thread lock, then the flock (what every write holds).
    release = _hold_in_thread(thread_lock, flock_path=lock_path)
    threading.Timer(0.3, release.set).start()  # the write ends during the fork's wait

    def child() -> None:
        write()
        time.sleep(1.0)  # the worker lives on, and so would an inherited flock

    pid, fork_s = _fork_child(child)
    try:
        assert _in_thread(write, 0.5), "the parent's write is blocked while the child lives"
    finally:
        exit_code = _wait_child(pid, CHILD_TIMEOUT_S)
    assert exit_code == 0, "the child could not write (killed: hung on the inherited flock)"
    assert 0.2 < fork_s < 2.0, f"os.fork() took {fork_s:.2f}s: it waited for the write"
    assert written() == 3


def test_fork_lock_held_past_the_wait_limit_fork_goes_on_child_renews_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_forksafe, "FORK_WAIT_S", 0.3)
    store = _file_store(tmp_path)
    release = _hold_in_thread(store._thread_lock)  # a write stuck for good
    try:
        pid, fork_s = _fork_child(lambda: _bump(store, OTHER))
    finally:
        release.set()
    assert _wait_child(pid, CHILD_TIMEOUT_S) == 0
    assert fork_s < 2.0
    assert "os.fork() waited 0.3s for FileStateStore._thread_lock and went on" in caplog.text


def test_fork_during_a_long_collection_does_not_wait_child_records_and_collects() -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    MetricsHook(meter_provider)  # the hook makes its meter provider fork-safe
    counter = meter_provider.get_meter("fork-test").create_counter("fork_test.records")
    counter.add(1)
    # A collection under way (slow observable callbacks): the reader's and the consumer's
    # locks, held for its whole run.
    consumer = meter_provider._measurement_consumer
    release = _hold_in_thread(reader._lock, consumer._lock)

    def child() -> None:
        counter.add(1)
        assert [p.value for _, p in points(reader, "fork_test.records")] == [2]

    try:
        pid, fork_s = _fork_child(child)
    finally:
        release.set()
    assert _wait_child(pid, CHILD_TIMEOUT_S) == 0, "the child hung on the collection's locks"
    assert fork_s < 0.5, f"os.fork() waited {fork_s:.2f}s for a whole collection"
    meter_provider.shutdown()


def _serve_rollbacks(
    provider: CanaryProvider, client: OpenFeatureClient, cycles: int, threads: int
) -> tuple[list[tuple[int, int]], list[tuple[array[int], bytearray]]]:
    """Run rollout cycles (reset, start, promote to 100 %, rollback) against evaluating
    threads. Returns the rollback windows (from the return of ``rollback()`` to the next
    ``reset()``, in ``perf_counter_ns``) and, per thread, every evaluation's start and answer."""
    ctl = provider.controller(FLAG)
    answers = [(array("q"), bytearray()) for _ in range(threads)]
    stop = threading.Event()

    def evaluate(starts: array[int], ons: bytearray) -> None:
        ctx = EvaluationContext(targeting_key="unit-1")
        clock = time.perf_counter_ns
        while not stop.is_set():
            started = clock()
            ons.append(client.get_boolean_value(FLAG, False, ctx))
            starts.append(started)

    workers = [threading.Thread(target=evaluate, args=a, daemon=True) for a in answers]
    switch = sys.getswitchinterval()
    # Threads take turns every 0.2 ms (not 5): more interleavings, and the commands do not
    # wait as long behind eight busy threads for the GIL.
    sys.setswitchinterval(0.0002)
    for worker in workers:
        worker.start()
    windows: list[tuple[int, int]] = []
    try:
        for _ in range(cycles):
            if ctl.state.status is not Status.PENDING:
                begin = time.perf_counter_ns()
                ctl.reset()
                windows[-1] = (windows[-1][0], begin)
            ctl.start(force=True)
            for _ in range(len(ctl.flag.stages) - 1):
                ctl.promote()
            assert ctl.state.percent == 100
            time.sleep(0.005)  # evaluations answer on
            ctl.rollback("stress")
            windows.append((time.perf_counter_ns(), 2**63))
            time.sleep(0.03)  # the poll goes on reading, maybe what it read before
    finally:
        stop.set()
        for worker in workers:
            worker.join(5)
        sys.setswitchinterval(switch)
    assert not any(w.is_alive() for w in workers)
    return windows, answers


def _on_after_rollback(
    windows: list[tuple[int, int]], answers: list[tuple[array[int], bytearray]]
) -> tuple[int, int, int]:
    """(evaluations started in a rollback window, of which answered on, on outside them)."""
    begins = [begin for begin, _ in windows]  # in order, not overlapping
    inside = on_inside = on_outside = 0
    for starts, ons in answers:
        for started, on in zip(starts, ons, strict=False):  # a thread may end between appends
            i = bisect_left(begins, started) - 1
            if i >= 0 and started < windows[i][1]:
                inside += 1
                on_inside += on
            else:
                on_outside += on
    return inside, on_inside, on_outside


class _ListSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Mapping[str, JsonScalar]]] = []

    def enqueue(self, event_name: str, properties: Mapping[str, JsonScalar]) -> object:
        self.events.append((event_name, properties))
        return None


def test_rollback_returned_no_evaluation_started_after_answers_on_under_fast_poll(
    tmp_path: Path, plan: RolloutPlan
) -> None:
    events = _ListSink()
    provider = CanaryProvider(
        plan,
        store=f"file://{tmp_path}/state.json",
        events=events,
        reports_dir=tmp_path / "reports",
        environ={},
        refresh_interval=0.001,  # a poll overlaps nearly every command
    )
    api.set_provider_and_wait(provider)
    t0 = time.monotonic()
    try:
        windows, answers = _serve_rollbacks(provider, api.get_client(), cycles=CYCLES, threads=8)
    finally:
        provider.shutdown()
    print(f"cycles took {time.monotonic() - t0:.1f}s")
    inside, on_inside, on_outside = _on_after_rollback(windows, answers)
    total = sum(len(starts) for starts, _ in answers)
    print(f"{total} evaluations, {inside} after a rollback, {on_outside} on before")
    assert len(windows) == CYCLES
    assert [name for name, _ in events.events].count("canary_rollback") == CYCLES
    # The stress did stress: the flag answered on, and evaluations ran after rollbacks.
    assert on_outside > 1000 and inside > 1000, (on_outside, inside, total)
    assert on_inside == 0, f"{on_inside} of {inside} evaluations after a rollback answered on"
