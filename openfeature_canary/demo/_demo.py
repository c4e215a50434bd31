"""``openfeature-canary demo``: the reference scenario end to end, in virtual time.

Everything is real except the service and the clock: the OpenFeature client, CanaryProvider,
MetricsHook, the OpenTelemetry SDK and its readers, the in-process signals, the policy, the
durable outbox and a telemetry-ingest server on 127.0.0.1. The simulated service answers
from a latency/error model per cohort; ``--fault`` makes the canary misbehave from
``--fault-at`` on, to show each trigger roll the flag back.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from openfeature import api

from openfeature_canary._format import format_duration
from openfeature_canary.clock import ManualClock
from openfeature_canary.demo._ingest_server import IngestServer
from openfeature_canary.demo._simulation import (
    FAULTS,
    Fault,
    SimulatedService,
    Simulation,
    all_settled,
)
from openfeature_canary.plan import RolloutPlan, load_plan
from openfeature_canary.state import LogEntry, RolloutState, Status
from openfeature_canary.telemetry import setup_telemetry

__all__ = ["main", "run_demo"]

#: Virtual start of the demo: a fixed instant, so that runs are comparable.
START = datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc).timestamp()
_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
#: Window records are reporting, not decisions: shown with --verbose (a failing one always).
_QUIET_ACTIONS = frozenset({"window_pass", "window_inconclusive"})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openfeature-canary demo",
        description="Run the reference rollout plan end to end in virtual time.",
    )
    p.add_argument("--plan", default="canary_plan.toml", help="plan file (default: the example)")
    p.add_argument("--store", default="memory://", help="state store URL (default memory://)")
    p.add_argument("--fault", choices=FAULTS, help="make the canary misbehave")
    p.add_argument("--fault-at", type=int, default=2, metavar="STAGE", help="from this stage")
    p.add_argument("--fault-flag", help="flag whose canary misbehaves (default: the first)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics on 127.0.0.1:PORT")
    p.add_argument("--reports", default=None, help="reports folder (default: the plan's)")
    p.add_argument("--seed", type=int, default=7, help="traffic model seed")
    p.add_argument(
        "--verbose", action="store_true", help="also print passing and inconclusive gate windows"
    )
    return p


def _plan_path(given: str) -> Path:
    path = Path(given)
    if given == "canary_plan.toml" and not path.exists() and _EXAMPLE.exists():
        return _EXAMPLE
    return path


def _clock_text(at: float) -> str:
    return "+" + format_duration(max(0.0, at - START)).ljust(9)


#: The ended stage's evidence goes to canary_results.md; the live line keeps the decision's own.
_REPORTED_ONLY = frozenset(
    {
        "signal",
        "trigger",
        "planned_p95_ms",
        "observed_p95_ms",
        "planned_error_rate",
        "observed_error_rate",
        "samples",
        "windows_passed",
        "windows_failed",
        "windows_inconclusive",
    }
)


def _numbers(entry: LogEntry) -> str:
    shown = []
    for key, value in entry.numbers.items():
        if value is None or key in _REPORTED_ONLY:
            continue
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        shown.append(f"{key}={text}")
    return " ".join(shown)


class _Printer:
    """One line per decision, from the transitions' new log entries."""

    def __init__(self, out: TextIO, verbose: bool) -> None:
        self.out = out
        self.verbose = verbose
        self.lines = 0

    def __call__(self, old: RolloutState, new: RolloutState) -> None:
        for entry in new.entries_after(old):
            if entry.action in _QUIET_ACTIONS and not self.verbose:
                continue
            status = f"{new.status.value} {new.stage} {new.percent:g}%"
            print(
                f"{_clock_text(entry.at)} {new.flag_key:<30} {entry.action:<18} "
                f"{entry.reason:<26} → {status:<16} {_numbers(entry)}",
                file=self.out,
                flush=True,
            )
            self.lines += 1


def run_demo(
    plan: RolloutPlan,
    *,
    store: str = "memory://",
    fault: Fault | None = None,
    metrics_port: int | None = None,
    reports_dir: str | Path | None = None,
    seed: int = 7,
    verbose: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Run the plan in virtual time; return 0 when it ended as expected.

    Healthy: every flag completes. With a fault: the faulty flag is rolled back.
    """
    from openfeature.contrib.provider.canary import CanaryProvider

    clock = ManualClock(start=START)
    telemetry = setup_telemetry(plan, prometheus_port=metrics_port)
    server = IngestServer().start()
    env_name = plan.telemetry.url_env or "A8_URL"
    environ = {env_name: server.url}
    provider = CanaryProvider(
        plan,
        store=store,
        clock=clock,
        telemetry=telemetry,
        environ=environ,
        reports_dir=reports_dir,
        background=False,
    )
    printer = _Printer(out, verbose)
    provider.rollout.add_observer(printer)
    try:
        api.set_provider_and_wait(provider)  # it brings its MetricsHook
        client = api.get_client("openfeature-canary-demo")
        service = SimulatedService(
            client,
            provider.rollout,
            meter_provider=telemetry.meter_provider,
            fault=fault,
            seed=seed,
        )
        sim = Simulation(provider.rollout, clock, service)
        first = next(iter(plan.flags))
        print(
            f"openfeature-canary demo: {len(plan.flags)} flag(s) from {plan.source}; "
            f"fault: {fault.kind + ' at stage ' + str(fault.at_stage) if fault else 'none'}; "
            f"ingest at {server.url}"
            + (f"; metrics at {telemetry.metrics_url}" if telemetry.metrics_url else ""),
            file=out,
        )
        wall = time.perf_counter()
        provider.controller(first).start()
        max_virtual = sum(
            2 * sum(s.duration_s for s in f.stages) + 3600 for f in plan.flags.values()
        )
        sim.run_until(all_settled(provider.rollout), max_virtual)
        elapsed = time.perf_counter() - wall
        delivered = provider.flush_events(10.0)
        return _summary(plan, provider, server, sim, elapsed, delivered, fault, out)
    finally:
        api.clear_hooks()
        api.shutdown()
        server.stop()
        telemetry.shutdown()


def _summary(
    plan: RolloutPlan,
    provider: object,
    server: IngestServer,
    sim: Simulation,
    elapsed: float,
    delivered: bool,
    fault: Fault | None,
    out: TextIO,
) -> int:
    rollout = sim.rollout
    print("", file=out)
    for ctl in rollout.controllers():
        s = ctl.state
        print(
            f"  {ctl.key:<30} {s.status.value:<12} stage {s.stage}/{len(ctl.flag.stages)} "
            f"{s.percent:g}%  {s.reason}",
            file=out,
        )
    events = [e.get("event_name") for e in server.events]
    print(
        f"  virtual {format_duration(sim.clock.now() - START)} in {elapsed:.1f} s wall, "
        f"{sim.service.requests} requests, {sim.ticks} ticks; ingest received "
        f"{len(events)} event(s): {', '.join(sorted(set(str(e) for e in events))) or 'none'}"
        f"{'' if delivered else ' (some still in the outbox)'}",
        file=out,
    )
    reports = getattr(provider, "reports", None)
    if reports is not None:
        print(f"  reports in {reports.dir}/", file=out)
    states = {c.key: c.state for c in rollout.controllers()}
    if fault is None:
        ok = all(s.status is Status.COMPLETED for s in states.values())
    else:
        ok = states[fault.flag_key].status is Status.ROLLED_BACK
    print(f"  result: {'as expected' if ok else 'NOT as expected'}", file=out)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``openfeature-canary demo``."""
    args = _parser().parse_args(argv)
    plan = load_plan(_plan_path(args.plan))
    fault = None
    if args.fault:
        flag = args.fault_flag or next(iter(plan.flags))
        plan.flag(flag)
        stages = len(plan.flag(flag).stages)
        if not 1 <= args.fault_at <= stages:
            print(f"demo: --fault-at must be within 1..{stages}", file=sys.stderr)
            return 2
        fault = Fault(args.fault, flag, args.fault_at)
    return run_demo(
        plan,
        store=args.store,
        fault=fault,
        metrics_port=args.metrics_port,
        reports_dir=args.reports,
        seed=args.seed,
        verbose=args.verbose,
    )
