"""``openfeature-canary status`` shows who decides and how long its lease has left, read
from the store (file and a real ``redis-server``), in the table and in ``--json``."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from openfeature_canary import ManualClock, open_store
from openfeature_canary.cli import run
from openfeature_canary.policy import Fleet
from openfeature_canary.stores import FleetStore

T0 = 1_780_000_000.0
HOLDER = "web-1:4242:9f3a01bc"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture(params=["file", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/state.json"
    srv: RedisServer = request.getfixturevalue("server")
    return f"{srv.url}?prefix=status-{uuid.uuid4().hex[:12]}"


def _status(url: str, plan: Path, at: float, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(
        ["status", *extra, "--plan", str(plan), "--store", url],
        clock=ManualClock(at),
        out=out,
        err=err,
    )
    return code, out.getvalue(), err.getvalue()


def _fleet(url: str) -> Fleet:
    store = open_store(url)
    assert isinstance(store, FleetStore)
    return Fleet(store, HOLDER, renew_every_s=0.5)


def test_status_shows_the_decider_and_its_lease_left(url: str, example_plan_path: Path) -> None:
    fleet = _fleet(url)
    assert fleet.renew(T0)
    code, out, err = _status(url, example_plan_path, T0 + 2.5)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == f"decider: {HOLDER} (lease 5.5 s left)"
    code, out, err = _status(url, example_plan_path, T0 + 2.5, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["decider"] == {
        "process": HOLDER,
        "lease_left_s": 5.5,
        "lease_expires": "2026-05-28T20:26:48Z",
        "lease_expires_epoch": T0 + 8.0,
        "error": None,
    }


def test_status_shows_an_expired_lease_as_no_decider(url: str, example_plan_path: Path) -> None:
    assert _fleet(url).renew(T0)
    code, out, _ = _status(url, example_plan_path, T0 + 11.0)
    assert code == 0
    assert out.splitlines()[-1] == f"decider: none (the lease of {HOLDER} expired 3.0 s ago)"
    data: dict[str, Any] = json.loads(_status(url, example_plan_path, T0 + 11.0, "--json")[1])
    assert data["decider"]["process"] is None and data["decider"]["lease_left_s"] == -3.0


def test_status_without_a_lease_adds_no_line(url: str, example_plan_path: Path) -> None:
    fleet = _fleet(url)
    assert fleet.renew(T0)
    fleet.release()  # a clean shutdown
    code, out, _ = _status(url, example_plan_path, T0 + 1)
    assert code == 0 and "decider" not in out
    assert json.loads(_status(url, example_plan_path, T0 + 1, "--json")[1])["decider"] is None


def test_status_unreadable_lease_is_shown_not_fatal(
    tmp_path: Path, example_plan_path: Path
) -> None:
    url = f"file://{tmp_path}/state.json"
    (tmp_path / "state.json.fleet" / "lease.json").mkdir(parents=True)  # not a file
    code, out, err = _status(url, example_plan_path, T0)
    assert (code, err) == (0, "")
    (line,) = [line for line in out.splitlines() if line.startswith("decider:")]
    assert line.startswith("decider: unknown (cannot read the lease: file://")
    assert "lease.json" in line
