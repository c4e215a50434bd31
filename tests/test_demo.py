"""`openfeature-canary demo`: the reference plan end to end, as a user runs it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "canary_plan.toml"


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
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
        timeout=300,
        cwd=tmp_path,
    )


def _decisions(out: str) -> list[tuple[str, str, str, str]]:
    """(virtual time, flag, action, reason) of every decision line the demo printed."""
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("+") and len(parts) >= 4:
            rows.append((parts[0], parts[1], parts[2], parts[3]))
    return rows


# Two days of virtual time through the real SDK and OpenTelemetry: ~1 min of CPU on a quiet
# machine, several under a loaded one; the default 300 s timeout is for hangs, not for this.
@pytest.mark.timeout(900)
def test_demo_healthy_advances_both_flags_at_the_planned_times(tmp_path: Path) -> None:
    done = run_demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    f1, f2 = "dataservice-read-canary", "dataservice-user-read-canary"
    # Each stage is held for its duration (10m, 30m, 60m, 24h), then its gate passes; phase 2
    # starts when phase 1 completes, on a quiet baseline.
    assert _decisions(done.stdout) == [
        ("+0s", f1, "start", "operator"),
        ("+10m", f1, "advance", "gate_passed"),
        ("+40m", f1, "advance", "gate_passed"),
        ("+1h40m", f1, "advance", "gate_passed"),
        ("+1d1h40m", f1, "complete", "gate_passed"),
        ("+1d1h40m", f2, "start", "dataservice-read-canary"),
        ("+1d1h50m", f2, "advance", "gate_passed"),
        ("+1d2h20m", f2, "advance", "gate_passed"),
        ("+1d3h20m", f2, "advance", "gate_passed"),
        ("+2d3h20m", f2, "complete", "gate_passed"),
    ]
    assert "result: as expected" in done.stdout
    reports = tmp_path / "reports"
    assert (reports / "canary_plan.md").exists()
    results = (reports / "canary_results.md").read_text()
    assert results.count("gate_passed") == 8
    assert not (reports / "canary_abort.md").exists()


@pytest.mark.parametrize(
    ("fault", "trigger"),
    [
        # The stage's sequential gate may see a latency or 5xx regression before the hard
        # trigger's rule has run its course (5 min, 2 min): either names the signal.
        ("latency", "p95_breach"),
        ("errors", "error_rate_breach"),
        ("mismatch", "ledger_mismatch"),
        ("lag", "event_loop_lag"),
        ("ingest", "telemetry_acceptance"),
        ("slow-gate", "p95_breach"),
    ],
)
def test_demo_fault_rolls_back_by_its_trigger_and_reports_it(
    tmp_path: Path, fault: str, trigger: str
) -> None:
    done = run_demo(tmp_path, "--fault", fault)
    assert done.returncode == 0, done.stdout + done.stderr
    rollback_lines = [line for line in done.stdout.splitlines() if " rollback " in line]
    assert len(rollback_lines) == 1
    named = [t for t in trigger.split("|") if t in rollback_lines[0]]
    assert named, rollback_lines
    assert "canary_rollback" in done.stdout  # the ingest server received it
    abort = (tmp_path / "reports" / "canary_abort.md").read_text()
    assert named[0] in abort and "dataservice-read-canary" in abort


def test_demo_metrics_port_serves_prometheus_exposition_on_loopback(tmp_path: Path) -> None:
    done = run_demo(tmp_path, "--fault", "mismatch", "--metrics-port", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "metrics at http://127.0.0.1:" in done.stdout


def test_engine_imports_nothing_from_the_plugins_except_the_demo() -> None:
    """Spec §3: providers/ and hooks/ import the engine, never the other way round. The demo
    (outside the engine's import path) is the one place that assembles the plugins."""
    offenders = []
    engine = ROOT / "openfeature_canary"
    for path in engine.rglob("*.py"):
        if path.relative_to(engine).parts[0] == "demo":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("openfeature.contrib")]
    assert offenders == []


def test_engine_import_does_not_load_the_demo_or_the_cli() -> None:
    code = (
        "import sys, openfeature_canary; "
        "print(sorted(m for m in sys.modules if m.startswith(('openfeature_canary.demo', "
        "'openfeature_canary.cli'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr
