"""The operator commands of issue 16: ``wait``, ``history``, ``promote --to``/``--skip-soak``,
``status`` (time left, short last decision, ``--watch``), ``outbox list|flush``, ``report``,
``--by``, and a store that cannot be reached (exit 3)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from redis_server import RedisServer, free_port

from openfeature_canary import ManualClock
from openfeature_canary.cli import run
from openfeature_canary.demo._ingest_server import IngestServer

READ = "dataservice-read-canary"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PROCESS_TIMEOUT_S = 60.0  # generous: a loaded 2-core machine


class Cli:
    """The CLI in-process at a controllable time: ``(code, stdout, stderr)``."""

    def __init__(self, capsys: pytest.CaptureFixture[str], plan: Path, store: str) -> None:
        self.capsys = capsys
        self.plan = plan
        self.store = store
        self.clock = ManualClock(start=T0)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = run([*argv, "--plan", str(self.plan), "--store", self.store], clock=self.clock)
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err


@pytest.fixture
def store(tmp_path: Path) -> str:
    (tmp_path / "state").mkdir()
    return f"file://{tmp_path / 'state' / 'state.json'}"


@pytest.fixture
def cli(capsys, example_plan_path, store, monkeypatch) -> Cli:
    monkeypatch.delenv("A8_URL", raising=False)  # events wait in the outbox
    return Cli(capsys, example_plan_path, store)


def _ok(cli: Cli, *argv: str) -> str:
    code, out, err = cli(*argv)
    assert (code, err) == (0, ""), (argv, err)
    return out


def _one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("openfeature-canary: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _spawn(plan: Path, store: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "openfeature_canary", *argv, "--plan", str(plan), "--store", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# --------------------------------------------------------------------------- wait


def _wait_then(cli: Cli, until: str, change: list[tuple[str, ...]]) -> tuple[int, str, str]:
    """Start ``wait`` in another process, then change the store from this one (after the
    waiting process is up and has not ended), and return how the wait ended."""
    proc = _spawn(
        cli.plan,
        cli.store,
        "wait",
        READ,
        "--until",
        until,
        "--timeout",
        "60s",
        "--interval",
        "0.05s",
    )
    try:
        # The waiting process is running (it cannot end before the change below: the flag is
        # running, neither awaited nor final).
        assert proc.poll() is None
        for argv in change:
            _ok(cli, *argv)
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def test_wait_exits_0_when_another_process_completes_the_flag(cli):
    _ok(cli, "start", READ, "--force")
    _ok(cli, "promote", READ, "--to", "4")
    code, out, err = _wait_then(cli, "completed", [("promote", READ, "--skip-soak")])
    assert (code, err) == (0, "")
    assert out.startswith(f"{READ}: completed, stage 4/4 (after ")


def test_wait_for_completed_exits_5_when_rolled_back_meanwhile(cli):
    _ok(cli, "start", READ, "--force")
    code, out, err = _wait_then(cli, "completed", [("rollback", READ, "--reason", "p95_breach")])
    assert (code, out) == (5, "")
    _one_error_line(err, f"{READ}: rolled_back", "p95_breach", "while waiting for completed")


def test_wait_for_paused_and_rolled_back_exit_0(cli):
    _ok(cli, "start", READ, "--force")
    assert _wait_then(cli, "paused", [("pause", READ)])[0] == 0
    assert _wait_then(cli, "rolled_back", [("rollback", READ, "--reason", "lag")])[0] == 0


def test_wait_times_out_with_exit_4(cli):
    _ok(cli, "start", READ, "--force")
    code, out, err = cli(
        "wait", READ, "--until", "completed", "--timeout", "0.2s", "--interval", "0.05s"
    )
    assert (code, out) == (4, "")
    _one_error_line(err, f"{READ}: still running, stage 1/4", "waiting for completed")


def test_wait_in_a_thread_sees_a_change_made_during_the_wait(cli, capsys):
    """In-process: the wait runs in a thread (no signal handlers there) while this thread
    changes the same file store once the wait has read it at least once."""
    _ok(cli, "start", READ, "--force")
    outcome: list[int] = []

    def waiting() -> None:
        outcome.append(
            run(
                [
                    "wait",
                    READ,
                    "--until",
                    "rolled_back",
                    "--timeout",
                    "60s",
                    "--interval",
                    "0.02s",
                    "--plan",
                    str(cli.plan),
                    "--store",
                    cli.store,
                ]
            )
        )

    thread = threading.Thread(target=waiting)
    thread.start()
    try:
        assert outcome == []  # the flag is running: the wait cannot have ended
        code = run(
            ["rollback", READ, "--reason", "manual", "--plan", str(cli.plan), "--store", cli.store]
        )
        assert code == 0
    finally:
        thread.join(PROCESS_TIMEOUT_S)
    assert outcome == [0]


def test_wait_bad_timeout_exits_2(cli):
    code, out, err = cli("wait", READ, "--until", "completed", "--timeout", "soon")
    assert (code, out) == (2, "")
    _one_error_line(err, "wait --timeout 'soon'")


# --------------------------------------------------------------------------- history


def test_history_lists_each_transition_with_its_numbers_oldest_first(cli):
    steps = [
        ("start", READ, "--force"),
        ("promote", READ, "--by", "alice"),
        ("pause", READ, "--by", "bob"),
        ("resume", READ),
        ("promote", READ, "--to", "4"),
        ("rollback", READ, "--reason", "p95_breach", "--by", "carol"),
        ("reset", READ),
    ]
    for argv in steps:
        cli.clock.advance(60)
        _ok(cli, *argv)
    lines = _ok(cli, "history", READ).splitlines()
    assert lines[0].startswith(f"{READ}: pending, stage 0/4, version 7; 7 decisions")
    rows = lines[1:]
    assert [r.split()[2] for r in rows] == [
        "start",
        "advance",
        "pause",
        "resume",
        "advance",
        "rollback",
        "reset",
    ]
    assert [r.split()[0] for r in rows] == [
        f"2026-01-01T00:0{i}:00Z" for i in range(1, 8)
    ]  # oldest first, at the commands' times
    assert "to_pct=5 to_stage=1" in rows[0]
    assert "by operator:alice" in rows[1] and "from_stage=1" in rows[1] and "to_stage=2" in rows[1]
    assert "by operator:bob" in rows[2] and "pct=25" in rows[2]
    assert "from_stage=2" in rows[4] and "to_stage=4" in rows[4] and "to_pct=100" in rows[4]
    assert (
        "operator: p95_breach" in rows[5]
        and "by operator:carol" in rows[5]
        and "from_pct=100" in rows[5]
    )
    assert "from_status=rolled_back" in rows[6]

    data = json.loads(_ok(cli, "history", READ, "--json"))
    assert [e["action"] for e in data["entries"]] == [r.split()[2] for r in rows]
    assert data["entries"][4]["numbers"]["to_stage"] == 4
    assert all(e["transition"] for e in data["entries"])


# --------------------------------------------------------------------------- promote


def test_promote_at_last_stage_refused_without_skip_soak(cli):
    _ok(cli, "start", READ, "--force")
    _ok(cli, "promote", READ, "--to", "100%")
    cli.clock.advance(3600)
    code, out, err = cli("promote", READ)
    assert (code, out) == (1, "")
    _one_error_line(err, "last stage (4)", "skip 23h", "24h soak", "--skip-soak")
    assert json.loads(_ok(cli, "status", READ, "--json"))["flags"][0]["status"] == "running"
    assert _ok(cli, "promote", READ, "--skip-soak").startswith(f"{READ}: completed")


def test_promote_at_last_stage_after_its_soak_completes(cli):
    _ok(cli, "start", READ, "--force")
    _ok(cli, "promote", READ, "--to", "4")
    cli.clock.advance(24 * 3600)
    assert _ok(cli, "promote", READ).startswith(f"{READ}: completed")


def test_promote_to_a_later_stage_in_one_transition(cli):
    _ok(cli, "start", READ, "--force")
    assert _ok(cli, "promote", READ, "--to", "3") == f"{READ}: running, stage 3/4, 50%\n"
    shown = json.loads(_ok(cli, "status", READ, "--json"))["flags"][0]
    assert shown["version"] == 2
    assert shown["last_decision"]["numbers"]["from_stage"] == 1
    # not backwards, not to where it is, not beyond the plan
    code, _, err = cli("promote", READ, "--to", "2")
    assert code == 1
    _one_error_line(err, "to stage 2", "at stage 3", "(4..4)")
    code, _, err = cli("promote", READ, "--to", "9")
    assert code == 2
    _one_error_line(err, "--to '9'", "1..4")
    code, _, err = cli("promote", READ, "--to", "30%")
    assert code == 2
    _one_error_line(err, "no stage at that percent", "5%, 25%, 50%, 100%")


def test_by_must_be_one_name(cli):
    _ok(cli, "start", READ, "--force")
    code, out, err = cli("promote", READ, "--by", "two words")
    assert (code, out) == (2, "")
    _one_error_line(err, "--by 'two words'")


# --------------------------------------------------------------------------- status


def test_status_shows_time_left_and_a_short_last_decision(cli):
    _ok(cli, "start", READ, "--force")
    _ok(cli, "rollback", READ, "--reason", "x" * 200)
    _ok(cli, "reset", READ)
    _ok(cli, "start", READ, "--force")
    cli.clock.advance(150)
    lines = _ok(cli, "status").splitlines()
    assert lines[0].split()[:6] == ["FLAG", "STATUS", "STAGE", "PERCENT", "SINCE", "LEFT"]
    row = lines[1]
    assert row.split()[5] == "7m30s"  # 10 min stage, 2.5 min in
    data = json.loads(_ok(cli, "status", "--json"))["flags"][0]
    assert data["left_s"] == 450.0
    assert "gate may advance in 7m30s" in data["next"]
    # a long reason is cut: the cell stays short
    _ok(cli, "rollback", READ, "--reason", "y" * 300)
    row = _ok(cli, "status", READ).splitlines()[1]
    cell = row.split("  ")[-1].strip()
    assert cell.startswith("rollback operator: yyy") and cell.endswith("…")
    assert len(cell) <= 60


def _read_until(stream: IO[str], needle: str, count: int, limit: int = 400) -> list[str]:
    lines: list[str] = []
    while sum(needle in line for line in lines) < count and len(lines) < limit:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
    return lines


def test_status_watch_redraws_and_stops_cleanly_on_sigint(cli):
    _ok(cli, "start", READ, "--force")
    proc = _spawn(cli.plan, cli.store, "status", "--watch", "--interval", "0.1s")
    try:
        assert proc.stdout is not None
        lines = _read_until(proc.stdout, "openfeature-canary status", 2)
        assert sum("Every 100ms: openfeature-canary status" in x for x in lines) == 2, lines
        assert any(x.startswith(READ) and "running" in x for x in lines)
        # the next decision: the flag's tick (10s); its stage began at T0, long over by now
        assert any(x.startswith(f"{READ}: next tick within 10s; gate due") for x in lines)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (0, "")


# --------------------------------------------------------------------------- stores


def test_unreachable_redis_store_exits_3_with_one_line(cli):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    argv_list = (
        ("status",),
        ("history", READ),
        ("promote", READ),
        ("wait", READ, "--until", "completed", "--timeout", "10s"),
        ("outbox", "list"),
    )
    for argv in argv_list:
        code = run([*argv, "--plan", str(cli.plan), "--store", url], clock=cli.clock)
        captured = cli.capsys.readouterr()
        assert (code, captured.out) == (3, ""), (argv, captured.err)
        _one_error_line(captured.err, "store unreachable", url)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def _hget_calls(server: RedisServer) -> int:
    """How many HGETs (a state read) the server has answered, from INFO commandstats."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
            data += sock.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_hget:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def _until_polling(proc: subprocess.Popen[str], server: RedisServer) -> None:
    """Return once ``proc`` reads the store in its loop (a few more HGETs than before it)."""
    before = _hget_calls(server)
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while _hget_calls(server) < before + 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the waiting process never read the store"
        time.sleep(0.02)


def _read_stderr_until(proc: subprocess.Popen[str], needle: str) -> str:
    assert proc.stderr is not None
    seen = ""
    while needle not in seen:
        line = proc.stderr.readline()
        assert line, f"{needle!r} never came; stderr so far: {seen!r}"
        seen += line
    return seen


def test_wait_rides_out_a_redis_restart_and_sees_the_completion(cli, redis):
    cli.store = redis.url
    _ok(cli, "start", READ, "--force")
    proc = _spawn(
        cli.plan,
        redis.url,
        "wait",
        READ,
        "--until",
        "completed",
        "--timeout",
        "60s",
        "--interval",
        "0.05s",
    )
    try:
        _until_polling(proc, redis)
        redis.kill()  # a crash: Redis without persistence comes back empty
        warned = _read_stderr_until(proc, "store unreachable")
        assert f"openfeature-canary: warning: store unreachable: {redis.url}" in warned
        redis.start()
        for argv in (("start", READ, "--force"), ("promote", READ, "--to", "4")):
            _ok(cli, *argv)
        _ok(cli, "promote", READ, "--skip-soak")
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.startswith(f"{READ}: completed, stage 4/4")
    assert f"{redis.url}: reachable again" in err


def test_wait_exits_3_when_the_store_is_still_down_at_the_timeout(cli, redis):
    cli.store = redis.url
    _ok(cli, "start", READ, "--force")
    proc = _spawn(
        cli.plan,
        redis.url,
        "wait",
        READ,
        "--until",
        "completed",
        "--timeout",
        "2s",
        "--interval",
        "0.05s",
    )
    try:
        _until_polling(proc, redis)
        redis.kill()
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    warning, error = err.splitlines()
    assert "warning: store unreachable" in warning
    assert proc.returncode == 3, err
    assert error.startswith("openfeature-canary: error: ") and redis.url in error


def test_status_watch_shows_a_store_outage_and_goes_on(cli, redis):
    cli.store = redis.url
    _ok(cli, "start", READ, "--force")
    proc = _spawn(cli.plan, redis.url, "status", "--watch", "--interval", "0.1s")
    try:
        assert proc.stdout is not None
        assert _read_until(proc.stdout, "openfeature-canary status", 1)
        redis.kill()
        lines = _read_until(proc.stdout, "store unreachable", 2)
        assert sum(f"store unreachable: {redis.url}" in x for x in lines) == 2, lines
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (0, "")


def test_corrupt_file_store_is_bad_input_not_unreachable(cli):
    Path(cli.store.removeprefix("file://")).write_text("{not json")
    code, out, err = cli("status")
    assert (code, out) == (2, "")
    _one_error_line(err, "corrupt state file")


# --------------------------------------------------------------------------- outbox, report


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    with IngestServer() as server:
        yield server


def test_outbox_list_then_flush_to_a_real_ingest(cli, ingest, monkeypatch):
    _ok(cli, "start", READ, "--force")  # no A8_URL: the event waits in the outbox
    _ok(cli, "promote", READ)
    listed = _ok(cli, "outbox", "list").splitlines()
    assert listed[0].startswith("2 events waiting in Outbox(")
    assert [x.split()[1] for x in listed[1:]] == ["canary_stage_advanced"] * 2
    ids = [x.split("id=")[1].split()[0] for x in listed[1:]]
    assert [e["id"] for e in json.loads(_ok(cli, "outbox", "list", "--json"))["pending"]] == ids

    monkeypatch.setenv("A8_URL", ingest.url)
    out = _ok(cli, "outbox", "flush", "--timeout", "30s")
    assert out.startswith("delivered 2, 0 waiting, to http://127.0.0.1:")
    received = ingest.named("canary_stage_advanced")
    assert sorted(e["properties"]["to_pct"] for e in received) == [5, 25]
    assert {e["properties"]["event_id"] for e in received} == set(ids)
    assert _ok(cli, "outbox", "list").splitlines() == [listed[0].replace("2 events", "0 events")]


def test_outbox_flush_to_a_dead_ingest_exits_1_and_keeps_the_events(cli, monkeypatch):
    _ok(cli, "start", READ, "--force")
    monkeypatch.setenv("A8_URL", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    code, out, err = cli("outbox", "flush", "--timeout", "1s")
    assert time.monotonic() - started < PROCESS_TIMEOUT_S
    assert code == 1
    assert out.startswith("delivered 0, 1 waiting")
    _one_error_line(err, "1 event(s) still waiting after 1s")
    assert _ok(cli, "outbox", "list").startswith("1 event waiting")


def test_outbox_flush_without_url_exits_2(cli):
    code, out, err = cli("outbox", "flush")
    assert (code, out) == (2, "")
    _one_error_line(err, "no telemetry ingest URL", "$A8_URL")


def test_report_regenerates_results_and_abort_from_the_state(cli, tmp_path):
    for argv in (
        ("start", READ, "--force"),
        ("promote", READ),
        ("rollback", READ, "--reason", "p95_breach"),
    ):
        cli.clock.advance(60)
        _ok(cli, *argv)
    out_dir = tmp_path / "regenerated"
    (out_dir).mkdir()
    (out_dir / "canary_abort.md").write_text("# stale\n")
    out = _ok(cli, "report", "--out", str(out_dir))
    assert out.startswith(f"{out_dir}: ") and out.endswith("\n")
    listed = out.strip().split(": ", 1)[1].split(", ")
    assert {"canary_plan.md", "canary_results.md", "canary_abort.md"} <= set(listed)
    results = (out_dir / "canary_results.md").read_text()
    # one run, its two stages with their start and end, and how it ended
    assert "## Run 1" in results or "Run 1" in results
    assert "2026-01-01T00:01:00Z" in results and "2026-01-01T00:03:00Z" in results
    abort = (out_dir / "canary_abort.md").read_text()
    assert "stale" not in abort and "p95_breach" in abort and READ in abort
    assert (out_dir / "canary_plan.md").exists()
    # the same again gives the same files (rows are replaced, not appended)
    _ok(cli, "report", "--out", str(out_dir))
    assert (out_dir / "canary_results.md").read_text() == results
    assert (out_dir / "canary_abort.md").read_text() == abort
