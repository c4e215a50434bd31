"""End to end over real HTTP: the example's guard (``docs/guards.md``, issue 18).

The DataService stub and the example service run under uvicorn on 127.0.0.1 (subprocesses,
as in ``test_example_dataservice.py``), with a ``file://`` store, a loopback ingest and a plan
whose only stage holds for ten minutes (no gate decides by time during a test) and whose guard
is the example plan's own (``examples/dataservice/canary_plan.toml``). ``load.py``'s simulated
users open a provider's detail after 30 % of the dashboards, half as often after an
incomplete one; the service reports both with OpenFeature's ``track()``.

- With the stub's ``incomplete`` switch the flag is rolled back by ``guard_breach`` (rule
  ``guard:provider_detail_opened``): in the ingest's event, the CLI's ``status --json`` and the
  log line, while every answer is 200, no trigger fired and the shadow comparison saw no
  mismatch. The same run without the switch is not rolled back.
- The switch itself: answers stay 200, every canary dashboard lacks the figures, and the load
  generator's click-through on the canary path drops.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomllib
from prometheus_client.parser import text_string_to_metric_families
from test_example_dataservice import EXAMPLE, FLAG, LOAD, USER_FLAG, Server, Service, _env, _wait

from openfeature_canary.demo._ingest_server import IngestServer

GUARD_RULE = "guard:provider_detail_opened"
CLICK_THROUGH = 0.3
#: Dashboards sent per batch, and at most in a run: the switched run must roll back within
#: this budget, the unswitched run sends all of it and must not. At 50 % and 30 % vs 15 %
#: click-through the guard rolled back after about 1000 dashboards in our runs.
BATCH = 100
BUDGET = 3000
_RUN_TIMEOUT_S = 150.0


def _shipped_guard() -> dict[str, Any]:
    """The example plan's guard on the flag, as a TOML table (so the test runs the shipped one)."""
    plan = tomllib.loads((EXAMPLE / "canary_plan.toml").read_text(encoding="utf-8"))
    (guard,) = plan["flags"][FLAG]["guards"]
    assert guard["event"] == "provider_detail_opened" and guard["per"] == "dashboard_viewed"
    return dict(guard)


def _toml_value(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower()


def _plan(folder: Path) -> Path:
    """Stage 1 at 50 % for ten minutes (5xx and P95 lines no healthy run comes near), the
    5xx trigger, and the example plan's guard; phase 2 waits."""
    guard = "\n".join(f"{k} = {_toml_value(v)}" for k, v in _shipped_guard().items())
    path = folder / "plan.toml"
    path.write_text(
        f"""
[telemetry]
url_env = "A8_URL"
app = "dataservice_example_guard_test"

[decisions]
latency_margin = 0.5

[flags.{FLAG}]
tick = "1s"

[[flags.{FLAG}.stages]]
percent = 50
duration = "10m"
window = "5s"
max_p95_ms = 500
max_error_rate = 0.01

[[flags.{FLAG}.stages]]
percent = 100
duration = "60s"
window = "5s"

[[flags.{FLAG}.triggers]]
name = "error_rate_breach"
signal = "error_rate"
at_least = 0.05
for = "3s"
window = "5s"
min_samples = 10

[[flags.{FLAG}.guards]]
{guard}

[flags.{USER_FLAG}]
after = "{FLAG}"
tick = "1s"

[[flags.{USER_FLAG}.stages]]
percent = 50
duration = "60s"
""",
        encoding="utf-8",
    )
    return path


class GuardedService:
    """The stub (faults of its own) and the service on the guarded plan, the flag at 50 %."""

    def __init__(self, folder: Path, ingest: IngestServer) -> None:
        self.stub = Server(
            ["-m", "examples.dataservice.stub", "--port", "0", "--seed", "7"],
            _env(),
            folder / "stub.log",
        )
        self.service = Service(folder, self.stub, ingest, 50, None, plan=_plan(folder))
        self.server = self.service.server
        self.url = self.service.url

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``openfeature-canary ARGS --plan PLAN --store STORE``."""
        return self.service.cli(*args)

    def served(self) -> dict[str, Any]:
        """What the service serves for the flag (``GET /healthz``)."""
        served: dict[str, Any] = self.service.flags()[FLAG]
        return served

    def start(self) -> None:
        """``start --force``; wait until the service serves 50 %."""
        self.service.start_flag(50)

    def faults(self, **body: Any) -> None:
        """Switch the stub's faults."""
        response = httpx.post(
            f"{self.stub.url}/admin/faults", json=body, timeout=5, trust_env=False
        )
        assert response.status_code == 200, response.text

    def run(self, until_rolled_back: bool) -> tuple[list[Any], dict[str, Any]]:
        """Dashboards with clicking users in batches of :data:`BATCH` (seeded: the same users
        in every run) up to :data:`BUDGET`, stopping early once rolled back if asked; the
        load results and what the service serves at the end."""
        results: list[Any] = []
        deadline = time.monotonic() + _RUN_TIMEOUT_S
        for batch in range(BUDGET // BATCH):
            assert time.monotonic() < deadline, f"{len(results)} batches only:\n{self.tail()}"
            results.append(
                LOAD.run_load(
                    self.url,
                    requests=BATCH,
                    endpoint="dashboard",
                    seed=batch,
                    id_prefix=f"guard{batch}",
                    concurrency=16,
                    duration_s=60.0,
                    timeout_s=30.0,
                    click_through=CLICK_THROUGH,
                )
            )
            served = self.served()
            if until_rolled_back and served["status"] == "rolled_back":
                return results, served
        return results, self.served()

    def tail(self) -> str:
        """The end of the service's log (for a failure's message)."""
        return self.server.log()[-4000:]

    def stop(self) -> None:
        """Both servers."""
        self.server.stop()
        self.stub.stop()


@pytest.fixture
def ingest() -> Iterator[IngestServer]:
    """A loopback telemetry ingest (the plan's A8_URL)."""
    with IngestServer() as server:
        yield server


@pytest.fixture
def guarded(tmp_path: Path, ingest: IngestServer) -> Iterator[GuardedService]:
    """The stub and the service on the guarded plan (stopped after the test)."""
    service = GuardedService(tmp_path, ingest)
    yield service
    service.stop()


def _samples(service: GuardedService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{service.url}/metrics", timeout=5, trust_env=False).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(samples: dict[tuple[str, Any], float], name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()
    )


def _statuses(results: list[Any]) -> set[int]:
    return {code for r in results for (_e, _p, code) in r.statuses} | {
        code for r in results for code in r.detail_statuses
    }


def _click_through(results: list[Any], path: str) -> float:
    views = sum(r.views[(path, True)] + r.views[(path, False)] for r in results)
    return sum(r.clicks[path] for r in results) / views


# --------------------------------------------------------------------------- tests


def test_incomplete_data_rolls_back_by_guard_breach_while_latency_and_5xx_stay_healthy(
    guarded: GuardedService, ingest: IngestServer
) -> None:
    guarded.start()
    guarded.faults(incomplete=True)

    results, served = guarded.run(until_rolled_back=True)

    assert served == {"status": "rolled_back", "stage": 0, "percent": 0.0}, guarded.tail()
    print(f"rolled back after {sum(r.sent for r in results)} dashboards")  # for the record
    # Users saw fewer figures on the canary path and clicked through less; every answer was
    # 200 (no 5xx, no transport error).
    assert _statuses(results) == {200}
    assert sum(r.transport_errors for r in results) == 0
    assert sum(r.views[("canary", True)] for r in results) == 0
    assert sum(r.views[("current", False)] for r in results) == 0
    assert _click_through(results, "canary") < _click_through(results, "current")

    found = _wait(
        "canary_rollback at the ingest",
        lambda: [e for e in ingest.named("canary_rollback") if e["properties"]["flag"] == FLAG],
        10,
        guarded.server,
    )
    (event,) = found
    props = event["properties"]
    assert (props["reason"], props["rule"]) == ("guard_breach", GUARD_RULE), props
    assert props["threshold"] == pytest.approx(0.05)
    assert props["value"] > 0.05  # the canary's relative drop against the baseline
    assert props["from_pct"] == 50

    (status,) = json.loads(guarded.cli("status", FLAG, "--json").stdout)["flags"]
    assert (status["status"], status["reason"]) == ("rolled_back", "guard_breach")
    decision = status["last_decision"]
    assert (decision["action"], decision["reason"], decision["rule"]) == (
        "rollback",
        "guard_breach",
        GUARD_RULE,
    )
    # The engine's one INFO line, by the process that decided (the service).
    lines = re.findall(
        rf"{FLAG}: rollback running stage 1 \(50%\) -> rolled_back stage 0 \(0%\): "
        rf"reason=guard_breach rule={GUARD_RULE} ",
        guarded.server.log(),
    )
    assert len(lines) == 1, guarded.tail()

    # Latency and 5xx stayed healthy: no trigger was breaching, the ledger saw no mismatch in
    # the canary answers it compared (an omitted field is not a wrong one).
    samples = _samples(guarded)
    assert _total(samples, "canary_trigger_breached", feature_flag_key=FLAG) == 0
    assert _total(samples, "canary_ledger_comparisons_total", feature_flag_key=FLAG) > 0
    assert _total(samples, "canary_ledger_mismatches_total", feature_flag_key=FLAG) == 0
    # Every dashboard after the rollback takes the old path, complete again.
    after = LOAD.run_load(guarded.url, requests=100, endpoint="dashboard", concurrency=8)
    assert after.count("dashboard", "current") == 100, after.report()


def test_without_the_switch_the_same_run_is_not_rolled_back(
    guarded: GuardedService, ingest: IngestServer
) -> None:
    guarded.start()

    results, served = guarded.run(until_rolled_back=False)

    assert served["status"] == "running" and served["stage"] == 1, guarded.tail()
    assert sum(r.sent for r in results) == BUDGET
    assert _statuses(results) == {200}
    assert sum(r.views[("canary", False)] for r in results) == 0
    # Both cohorts clicked through at about the users' 30 %, and the guard saw it: the
    # tracked events are in both cohorts' counters.
    for path in ("canary", "current"):
        assert abs(_click_through(results, path) - CLICK_THROUGH) < 0.06, path
    samples = _samples(guarded)
    for variant in ("on", "off"):
        for event in ("dashboard_viewed", "provider_detail_opened"):
            counted = _total(
                samples,
                "feature_flag_tracking_events_total",
                feature_flag_key=FLAG,
                feature_flag_result_variant=variant,
                feature_flag_tracking_event=event,
            )
            assert counted > 0, (variant, event)
    assert not [e for e in ingest.named("canary_rollback") if e["properties"]["flag"] == FLAG]


def test_stub_incomplete_switch_keeps_200_and_lowers_the_click_through(
    tmp_path: Path,
) -> None:
    # Every dashboard through DataService (the flag pinned at 100 % by its env_override).
    stub = Server(["-m", "examples.dataservice.stub", "--port", "0"], _env(), tmp_path / "s.log")
    service = Server(
        [
            "-m",
            "examples.dataservice.app",
            "--port",
            "0",
        ],
        _env(
            DATASERVICE_URL=stub.url,
            DATASERVICE_EXAMPLE_STORE=f"file://{tmp_path / 'state.json'}",
            DATASERVICE_EXAMPLE_REPORTS=str(tmp_path / "reports"),
            DATASERVICE_EXAMPLE_SHADOW_RATE="1",
            DATASERVICE_READ_CANARY="100",
        ),
        tmp_path / "service.log",
    )
    try:

        def run() -> Any:
            return LOAD.run_load(
                service.url,
                requests=600,
                endpoint="dashboard",
                seed=5,
                concurrency=16,
                duration_s=120.0,
                timeout_s=30.0,
                click_through=CLICK_THROUGH,
            )

        complete = run()
        httpx.post(f"{stub.url}/admin/faults", json={"incomplete": True}).raise_for_status()
        incomplete = run()
        record = httpx.get(f"{stub.url}/api/v1/providers/7", timeout=5).json()
    finally:
        service.stop()
        stub.stop()

    for result in (complete, incomplete):
        assert result.count("dashboard", "canary") == 600, result.report()
        assert _statuses([result]) == {200}, result.report()
    assert complete.views == {("canary", True): 600}
    assert incomplete.views == {("canary", False): 600}
    assert "rating" not in record and "active_patients" not in record
    assert record["name"] == "Provider 0007"
    # The same seeded users: 30 % of them click through on complete dashboards, half as many
    # on incomplete ones (each rate within ~4 binomial standard deviations).
    assert abs(complete.click_through("canary") - 0.30) < 0.08, complete.report()
    assert abs(incomplete.click_through("canary") - 0.15) < 0.06, incomplete.report()
    assert incomplete.clicks["canary"] < 0.7 * complete.clicks["canary"]
    print(complete.report(), incomplete.report(), sep="\n")  # the latencies, for the record
