"""``openfeature-canary controller``: a process that only decides, for a fleet.

It holds the store's decider lease (waiting for it while another process has it), reads the
fleet's signals (the records every service process publishes, or Prometheus with
``--prometheus``), runs the policy at each tick and applies its decisions through the same
pipeline as a service: persist, the durable outbox, the reports. It serves nothing. Services
started with ``CanaryProvider(..., decide=False)`` on the same store then only serve and
publish; with the default ``decide=True`` they take the lease over if the controller stops.

What it says: its start and stop lines on stdout; on stderr (the package's log, in
``--log-format``) the engine's one INFO line per transition this controller makes, and, with
``--prometheus``, one line when the reads of a round start failing and one when they answer
again (not one per round: an outage of an hour is two lines).
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any, TypeVar

from openfeature_canary.cli._common import EXIT_OK, Io, Stopper, load_plan_arg, store_url
from openfeature_canary.engine import EngineOptions, build_engine
from openfeature_canary.errors import StateStoreError, UsageError
from openfeature_canary.policy import DEFAULT_LEASE_TTL_S, BackgroundRunner, Rollout
from openfeature_canary.signals import (
    CountsReading,
    PrometheusSignalSource,
    SignalReading,
    SignalSource,
)
from openfeature_canary.web import DEFAULT_HOST, StatusPage, check_address

__all__ = ["add_controller_parser"]

log = logging.getLogger("openfeature_canary")

_R = TypeVar("_R", SignalReading, CountsReading)


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
    p.add_argument(
        "--status-port",
        type=int,
        metavar="N",
        help="serve the read-only live status page on this port (0: a free one)",
    )
    p.add_argument(
        "--status-host",
        default=DEFAULT_HOST,
        metavar="IP",
        help=f"the status page's address (default {DEFAULT_HOST})",
    )
    p.set_defaults(handler=_cmd_controller)


def _cmd_controller(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    if not (args.interval > 0 and args.lease_ttl > args.interval):
        raise UsageError(
            f"--interval must be positive and below --lease-ttl, got {args.interval} and "
            f"{args.lease_ttl}"
        )
    if args.status_port is not None:
        try:
            check_address(args.status_host, args.status_port)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    url = store_url(args, plan)
    source: SourceHealth | None = None
    if args.prometheus:
        try:
            prometheus = PrometheusSignalSource(
                args.prometheus, queries=dict(plan.signals), plan=plan
            )
        except ValueError as exc:
            raise UsageError(f"--prometheus {args.prometheus!r}: {exc}") from exc
        source = SourceHealth(prometheus, f"Prometheus {prometheus.url}")
    options = EngineOptions(
        store=url,
        clock=io.clock,
        signals=source,
        refresh_interval=args.interval,
        fleet=True,
        lease_ttl=args.lease_ttl,
    )
    try:
        engine = build_engine(plan, options)
    except StateStoreError as exc:
        raise UsageError(str(exc)) from exc
    except ValueError as exc:
        raise UsageError(
            f"{url}: the controller needs a store the services share (file://, redis://)"
        ) from exc
    fleet, store, runner = engine.fleet, engine.store, engine.runner
    assert fleet is not None
    runner.read_store()
    engine.reconcile_events()
    engine.start(background=False)  # the sender: this command runs the rounds itself
    io.print(
        f"controller {fleet.process_id}: deciding {len(plan.flags)} flag(s) on {store.url} "
        f"when it holds the lease (ttl {args.lease_ttl:g} s); signals from "
        + (args.prometheus if args.prometheus else "the services' published records")
    )
    page: StatusPage | None = None
    try:
        page = _status_page(engine.rollout, args, io)  # stops the engine if it cannot bind
        with Stopper() as stopper:
            while not stopper.wait(args.interval):
                _round(runner, source)
    finally:
        if page is not None:
            page.stop()
        engine.stop()
    io.print(f"controller {fleet.process_id}: stopped")
    return EXIT_OK


def _status_page(rollout: Rollout, args: argparse.Namespace, io: Io) -> StatusPage | None:
    """The controller's page, served whether or not it holds the lease yet (it says which):
    an operator who started a controller wants to see it waiting, too."""
    if args.status_port is None:
        return None
    try:
        page = StatusPage(rollout, port=args.status_port, host=args.status_host).start()
    except OSError as exc:
        raise UsageError(
            f"--status-port {args.status_port}: cannot bind {args.status_host}: {exc}"
        ) from exc
    io.print(f"controller: status page on {page.url}")
    return page


def _round(runner: BackgroundRunner, source: SourceHealth | None) -> None:
    if source is not None:
        source.begin_round()
    try:
        runner.run_once()
    except Exception as exc:  # one bad round must not stop the controller; the next retries
        log.error("openfeature-canary: controller round failed: %s", exc)
    if source is not None:
        source.end_round()


class SourceHealth:
    """The controller's signal source, noting whether a round's reads failed.

    A failing Prometheus never raises (each reading carries ``error`` and the trigger's
    ``on_error`` decides), so without this the controller would go on silently. After each
    round :meth:`end_round` logs a WARNING when reads start failing and an INFO line when they
    all answer again: once per change, not once per round. A round that read nothing (no
    flag running) changes nothing.
    """

    def __init__(self, inner: SignalSource, name: str) -> None:
        self.inner = inner
        self.name = name
        #: The first error of the last round that read something; ``None``: it answered.
        self.failing: str | None = None
        # The rounds run on the command's thread today; the lock keeps the counts right if
        # reads ever come from the runner's own thread while end_round looks.
        self._lock = threading.Lock()
        self._reads = 0
        self._error: str | None = None

    def begin_round(self) -> None:
        """Forget the previous round's reads."""
        with self._lock:
            self._reads, self._error = 0, None

    def end_round(self) -> None:
        """Log the change of health the round's reads showed, if any."""
        with self._lock:
            reads, error = self._reads, self._error
        if reads == 0:
            return
        if error is not None and self.failing is None:
            log.warning(
                "openfeature-canary: controller: %s is failing: %s (each trigger's on_error "
                "decides; the gates wait for evidence)",
                self.name,
                error,
            )
        elif error is None and self.failing is not None:
            log.info("openfeature-canary: controller: %s answers again", self.name)
        self.failing = error

    def _note(self, reading: _R) -> _R:
        with self._lock:
            self._reads += 1
            if reading.error is not None and self._error is None:
                self._error = reading.error
        return reading

    def snapshot(self, now: float) -> None:
        """The inner source's snapshot (Prometheus keeps the history: a mark only)."""
        self.inner.snapshot(now)

    def read(self, flag_key: str, signal: str, window_s: float, now: float) -> SignalReading:
        """The inner source's read, noted."""
        return self._note(self.inner.read(flag_key, signal, window_s, now))

    def read_between(self, flag_key: str, signal: str, start: float, end: float) -> SignalReading:
        """The inner source's read over a closed window, noted."""
        return self._note(self.inner.read_between(flag_key, signal, start, end))

    def count_beyond(
        self,
        flag_key: str,
        signal: str,
        threshold: float,
        inclusive: bool,
        window_s: float,
        now: float,
    ) -> SignalReading:
        """The inner source's count above a threshold, noted."""
        reading = self.inner.count_beyond(flag_key, signal, threshold, inclusive, window_s, now)
        return self._note(reading)

    def counts_between(self, flag_key: str, start: float, end: float) -> CountsReading:
        """The inner source's cohort counts, noted."""
        return self._note(self.inner.counts_between(flag_key, start, end))
