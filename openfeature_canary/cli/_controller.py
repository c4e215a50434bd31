"""``openfeature-canary controller``: a process that only decides, for a fleet.

It holds the store's decider lease (waiting for it while another process has it), reads the
fleet's signals (the records every service process publishes, or Prometheus with
``--prometheus``), runs the policy at each tick and applies its decisions through the same
pipeline as a service: persist, the durable outbox, the reports. It serves nothing. Services
started with ``CanaryProvider(..., decide=False)`` on the same store then only serve and
publish; with the default ``decide=True`` they take the lease over if the controller stops.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from openfeature_canary.cli._common import EXIT_OK, Io, Stopper, load_plan_arg, store_url
from openfeature_canary.errors import StateStoreError, UsageError
from openfeature_canary.events import ReportWriter, outbox_for, sender_for_plan
from openfeature_canary.policy import (
    DEFAULT_LEASE_TTL_S,
    Autopilot,
    BackgroundRunner,
    Fleet,
    Rollout,
)
from openfeature_canary.signals import (
    FleetSignalSource,
    PrometheusSignalSource,
    SignalSource,
    new_process_id,
)
from openfeature_canary.stores import FleetStore, MemoryStateStore, open_store

__all__ = ["add_controller_parser"]

log = logging.getLogger("openfeature_canary")


def add_controller_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``controller`` on the command line's subparsers."""
    p = sub.add_parser(
        "controller",
        parents=[common],
        help="only decide: run the policy for a fleet that serves and publishes",
    )
    p.add_argument(
        "--prometheus",
        metavar="URL",
        help="read the signals from this Prometheus (PromQL from the plan's [signals]) "
        "instead of the records the service processes publish",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between rounds"
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=DEFAULT_LEASE_TTL_S,
        metavar="S",
        help="how long the decider lease lasts without renewal",
    )
    p.set_defaults(handler=_cmd_controller)


def _cmd_controller(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    if not (args.interval > 0 and args.lease_ttl > args.interval):
        raise UsageError(
            f"--interval must be positive and below --lease-ttl, got {args.interval} and "
            f"{args.lease_ttl}"
        )
    url = store_url(args, plan)
    try:
        store = open_store(url)
    except StateStoreError as exc:
        raise UsageError(str(exc)) from exc
    if isinstance(store, MemoryStateStore) or not isinstance(store, FleetStore):
        raise UsageError(
            f"{url}: the controller needs a store the services share (file://, redis://)"
        )
    source: SignalSource
    if args.prometheus:
        try:
            source = PrometheusSignalSource(args.prometheus, queries=dict(plan.signals))
        except ValueError as exc:
            raise UsageError(f"--prometheus {args.prometheus!r}: {exc}") from exc
    else:
        source = FleetSignalSource(store, plan=plan)
    fleet = Fleet(store, new_process_id(), lease_ttl_s=args.lease_ttl)
    reports = ReportWriter(plan.reports.dir)
    sender = sender_for_plan(plan, outbox_for(store, reports.dir), environ=os.environ)
    rollout = Rollout(
        plan,
        store=store,
        clock=io.clock,
        policy=Autopilot(source, may_decide=fleet.round),
        events=sender,
        reports=reports,
    )
    runner = BackgroundRunner(rollout, interval=args.interval)
    runner.read_store()
    rollout.reconcile_events()
    sender.start()
    io.print(
        f"controller {fleet.process_id}: deciding {len(plan.flags)} flag(s) on {store.url} "
        f"when it holds the lease (ttl {args.lease_ttl:g} s); signals from "
        + (args.prometheus if args.prometheus else "the services' published records")
    )
    try:
        with Stopper() as stopper:
            while not stopper.wait(args.interval):
                _round(runner)
    finally:
        fleet.release()
        sender.stop()
    io.print(f"controller {fleet.process_id}: stopped")
    return EXIT_OK


def _round(runner: BackgroundRunner) -> None:
    try:
        runner.run_once()
    except Exception as exc:  # one bad round must not stop the controller; the next retries
        log.error("openfeature-canary: controller round failed: %s", exc)
