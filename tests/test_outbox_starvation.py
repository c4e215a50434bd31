"""Issue 17 §5: readers of a shared outbox cannot keep a writer out.

Linux ``flock`` has no writer preference: processes that keep taking the shared lock (every
sender's round used to replay the outbox under it) can hold it without a gap for as long as
they run, and a process that needs the exclusive lock (an ``enqueue``) waits for all of them.
Twenty providers starved a 21st for over a minute. Now a writer holds a turnstile while it
waits, which readers pass through, and a reader of an unchanged outbox takes no lock at all.

Real processes (forked from this one), one real outbox file, real ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from openfeature_canary.events import Outbox, OutboxEvent

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

READERS = 20
#: Pending events in the outbox: each replay parses them under the shared lock.
PENDING = 300
WRITES = 5
#: The longest one enqueue may wait for the readers (generous: a loaded 2-core machine).
MAX_WRITE_S = 10.0
#: How long a reader process runs at most (it stops earlier once the writer is done).
READER_LIFETIME_S = 60.0


def _reader(path: Path, ready: Path, stop: Path) -> None:
    """Replay the outbox from scratch (a fresh object: no cache) again and again."""
    until = time.monotonic() + READER_LIFETIME_S
    rounds = 0
    while time.monotonic() < until and not stop.exists():
        assert len(Outbox(path).pending()) >= PENDING
        rounds += 1
        if rounds == 1:
            ready.touch()


def _wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_twenty_processes_replaying_an_outbox_do_not_keep_a_writer_out(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = Outbox(path)
    for i in range(PENDING):
        outbox.enqueue(OutboxEvent.create("canary_probe", {"i": i}, now=float(i)))
    stop = tmp_path / "stop"
    pids = []
    for i in range(READERS):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _reader(path, tmp_path / f"ready-{i}", stop)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    waits: list[float] = []
    try:
        _wait_for(
            lambda: all((tmp_path / f"ready-{i}").exists() for i in range(READERS)),
            60.0,
            "every reader's first replay",
        )

        def write() -> None:
            for i in range(WRITES):
                started = time.monotonic()
                Outbox(path).enqueue(OutboxEvent.create("canary_rollback", {"i": i}, now=0.0))
                waits.append(time.monotonic() - started)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(WRITES * MAX_WRITE_S)
        starved = writer.is_alive()
    finally:
        stop.touch()
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert not starved, f"the writer got {len(waits)} of {WRITES} writes in while 20 read"
    assert max(waits) <= MAX_WRITE_S, f"one enqueue waited {max(waits):.1f}s: {waits}"
    assert codes == [0] * READERS
    assert len(Outbox(path).pending()) == PENDING + WRITES


def test_reading_an_unchanged_outbox_takes_no_lock(tmp_path: Path) -> None:
    """A sender's look at an outbox that did not change since its last read is one ``stat``:
    it gets its answer even while another process holds the outbox's exclusive lock."""
    path = tmp_path / "outbox.jsonl"
    outbox = Outbox(path)
    outbox.enqueue(OutboxEvent.create("canary_rollback", {"from_pct": 25}, now=0.0))
    assert len(outbox.pending()) == 1  # read once: now cached
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "r+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file description: a real conflict
        answers: list[int] = []
        reader = threading.Thread(target=lambda: answers.append(len(outbox.pending())))
        reader.start()
        reader.join(5.0)
        blocked = reader.is_alive()
        fcntl.flock(held, fcntl.LOCK_UN)
    reader.join()
    assert not blocked, "pending() waited for the exclusive lock of an unchanged outbox"
    assert answers == [1]
    turnstile = path.with_name(path.name + ".turnstile")
    assert turnstile.stat().st_mode & 0o777 == 0o600  # owner-only, like the outbox's lock
