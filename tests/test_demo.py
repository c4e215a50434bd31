"""`openfeature-canary demo`: the reference plan end to end, as a user runs it."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "canary_plan.toml"


def run_demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "openfeature_canary",
            "demo",
            "--plan",
            str(PLAN),
            "--reports",
            str(tmp_path / "reports"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    return done, time.perf_counter() - started


def test_demo_healthy_completes_both_flags_in_under_a_minute(tmp_path: Path) -> None:
    done, wall = run_demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert wall < 60
    out = done.stdout
    assert out.count(" complete ") == 2 and "rollback" not in out
    assert "result: as expected" in out
    reports = tmp_path / "reports"
    assert (reports / "canary_plan.md").exists()
    results = (reports / "canary_results.md").read_text()
    assert results.count("gate_passed") == 8
    assert not (reports / "canary_abort.md").exists()


@pytest.mark.parametrize(
    ("fault", "trigger"),
    [
        ("latency", "p95_breach"),
        ("errors", "error_rate_breach"),
        ("mismatch", "ledger_mismatch"),
        ("lag", "event_loop_lag"),
        ("ingest", "telemetry_acceptance"),
        ("slow-gate", "gate_no_go"),
    ],
)
def test_demo_fault_rolls_back_by_its_trigger_and_reports_it(
    tmp_path: Path, fault: str, trigger: str
) -> None:
    done, _ = run_demo(tmp_path, "--fault", fault)
    assert done.returncode == 0, done.stdout + done.stderr
    rollback_lines = [line for line in done.stdout.splitlines() if " rollback " in line]
    assert len(rollback_lines) == 1 and trigger in rollback_lines[0]
    assert "canary_rollback" in done.stdout  # the ingest server received it
    abort = (tmp_path / "reports" / "canary_abort.md").read_text()
    assert trigger in abort and "dataservice-read-canary" in abort


def test_demo_metrics_port_serves_prometheus_exposition_on_loopback(tmp_path: Path) -> None:
    done, _ = run_demo(tmp_path, "--fault", "mismatch", "--metrics-port", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "metrics at http://127.0.0.1:" in done.stdout


def test_engine_imports_nothing_from_the_plugins_except_the_demo() -> None:
    """Spec §3: providers/ and hooks/ import the engine, never the other way round. The demo
    is the one engine module that assembles the plugins, at run time."""
    offenders = []
    for path in (ROOT / "openfeature_canary").glob("*.py"):
        if path.name == "_demo.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("openfeature.contrib")]
    assert offenders == []
