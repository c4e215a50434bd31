"""Pre-fork servers: a child forked while a background thread held the locks still works."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from openfeature.contrib.provider.canary import CanaryProvider

from openfeature_canary import Status, load_plan

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"


def test_child_forked_while_locks_are_held_can_still_roll_back(tmp_path: Path) -> None:
    provider = CanaryProvider(load_plan(EXAMPLE), store=f"file://{tmp_path}/state.json")
    ctl = provider.controller(FLAG)
    ctl.start()
    held, release = threading.Event(), threading.Event()

    def busy_background_tick() -> None:
        # (The store's write lock is held across a fork by design: a fork waits for a write.)
        with ctl._mutex, ctl._due_lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=busy_background_tick)
    thread.start()
    assert held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: the holding thread does not exist here
        code = 3
        try:
            state = ctl.rollback("rolled back in the child")
            code = 0 if state.status is Status.ROLLED_BACK else 1
        finally:
            os._exit(code)
    release.set()
    thread.join()
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child hung on a lock held at fork time")
    assert status is not None and os.waitstatus_to_exitcode(status) == 0
    provider.rollout.refresh()
    assert provider.controller(FLAG).state.status is Status.ROLLED_BACK
