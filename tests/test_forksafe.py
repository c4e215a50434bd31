"""Pre-fork servers: a child forked while a background thread held the locks still works."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
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


def _child_exit_code(pid: int, timeout_s: float) -> int | None:
    """The child's exit code, or ``None`` (and the child killed) when it hangs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_fork_waits_for_an_import_under_way_in_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that a background thread is importing at the fork would stay half imported
    in the child, its import lock held by a thread the child does not have: the fork waits
    for the import (issue 17 §5), so the child imports the whole module at once."""
    import sys

    name = f"canary_slow_import_{os.getpid()}"
    started = tmp_path / "started"
    (tmp_path / f"{name}.py").write_text(
        "import pathlib, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        "time.sleep(0.5)  # the module runs while the fork is asked for\n"
        "DONE = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importer = threading.Thread(target=__import__, args=(name,), daemon=True)
    importer.start()
    deadline = time.monotonic() + 10
    while not started.exists():
        assert time.monotonic() < deadline, "the background import did not start"
        time.sleep(0.005)
    forked = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            module = __import__(name)
            os._exit(0 if getattr(module, "DONE", False) else 3)
        except BaseException:
            os._exit(4)
    fork_s = time.monotonic() - forked
    code = _child_exit_code(pid, timeout_s=10.0)
    importer.join()
    sys.modules.pop(name, None)
    assert code is not None, "the child hung on the import lock of a half-imported module"
    assert code == 0, f"the child saw the module half imported (exit {code})"
    assert fork_s < 5.0, f"os.fork() took {fork_s:.2f}s"
