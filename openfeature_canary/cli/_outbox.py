"""``outbox list|flush`` (what waits for the telemetry ingest; deliver it now) and ``report``
(regenerate the markdown reports from the store's states).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from openfeature_canary._format import format_span, iso_utc, parse_duration
from openfeature_canary.cli._common import (
    EXIT_OK,
    EXIT_REFUSED,
    PROG,
    Io,
    load_plan_arg,
    open_rollout,
)
from openfeature_canary.errors import CanaryError, OutboxError, UsageError
from openfeature_canary.events import (
    EventQueue,
    OutboxEvent,
    outbox_for,
    write_reports,
)
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.state import RolloutState

__all__ = ["add_outbox_parsers", "regenerate_reports"]

#: The files ``report`` rebuilds whole (``canary_plan.md`` is rewritten in place).


def add_outbox_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``outbox list|flush`` and ``report`` on the top-level subparsers."""
    outbox = sub.add_parser(
        "outbox", parents=[common], help="list or deliver the events waiting for the ingest"
    )
    actions = outbox.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="the events waiting, oldest first")
    listing.add_argument("--json", action="store_true", help="machine-readable JSON")
    listing.set_defaults(handler=_cmd_outbox_list)
    flush = actions.add_parser(
        "flush", parents=[common], help="deliver the waiting events now (exit 1 if some remain)"
    )
    flush.add_argument(
        "--timeout", metavar="DURATION", default="30s", help="give up after this long (30s)"
    )
    flush.set_defaults(handler=_cmd_outbox_flush)

    report = sub.add_parser(
        "report", parents=[common], help="regenerate the reports from the store's states"
    )
    report.add_argument(
        "--out", metavar="DIR", help="where to write (default: the plan's [reports].dir)"
    )
    report.set_defaults(handler=_cmd_report)


# --------------------------------------------------------------------------- outbox


def _queue(args: argparse.Namespace, plan: RolloutPlan, io: Io) -> EventQueue:
    rollout, _ = open_rollout(args, plan, io)
    return outbox_for(rollout.store, Path(plan.reports.dir))


def _pending(queue: EventQueue) -> list[OutboxEvent]:
    try:
        return queue.pending()
    except OutboxError as exc:
        raise UsageError(f"outbox {queue!r}: {exc}") from exc


def _cmd_outbox_list(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    queue = _queue(args, plan, io)
    events = sorted(_pending(queue), key=lambda e: e.created_at)
    if args.json:
        data = {"outbox": repr(queue), "pending": [e.to_dict() for e in events]}
        io.print(json.dumps(data, indent=2, ensure_ascii=False))
        return EXIT_OK
    io.print(f"{len(events)} event{'s' if len(events) != 1 else ''} waiting in {queue!r}")
    for e in events:
        flag = e.properties.get("flag", "-")
        line = f"{iso_utc(e.created_at)}  {e.event_name}  {flag}  id={e.id}"
        if e.attempts:
            line += f"  attempts={e.attempts} next={iso_utc(e.next_attempt_at)}"
            if e.last_error:
                line += f" last_error={e.last_error}"
        io.print(line)
    return EXIT_OK


def _cmd_outbox_flush(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        raise UsageError(f"outbox flush --timeout: {exc}") from exc
    url = plan.telemetry.resolve_url(os.environ)
    if not url:
        where = f"${plan.telemetry.url_env}" if plan.telemetry.url_env else "[telemetry].url"
        raise UsageError(f"outbox flush: no telemetry ingest URL: set {where}")
    _, sender = open_rollout(args, plan, io, with_effects=True)
    if sender is None or sender.client is None:
        raise UsageError(f"outbox flush: the telemetry ingest URL {url!r} is not usable")
    before = len(_pending(sender.outbox))
    started = time.monotonic()
    done = sender.flush(timeout)
    left = _pending(sender.outbox)
    took = format_span(round(time.monotonic() - started))
    delivered = max(0, before - len(left))
    io.print(
        f"delivered {delivered}, {len(left)} waiting, to {sender.client.display_url} in {took}"
    )
    if done:
        return EXIT_OK
    last = next((e.last_error for e in left if e.last_error), None)
    print(
        f"{PROG}: error: outbox flush: {len(left)} event(s) still waiting after "
        f"{format_span(timeout)}" + (f" (last error: {last})" if last else ""),
        file=io.err,
    )
    return EXIT_REFUSED


# --------------------------------------------------------------------------- report


def _cmd_report(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    rollout, _ = open_rollout(args, plan, io)
    states = {key: rollout.controller(key).state for key in plan.flags}
    target = Path(args.out) if args.out else Path(plan.reports.dir)
    written = regenerate_reports(plan, states, target)
    names = ", ".join(sorted(str(path.relative_to(target)) for path in written))
    io.print(f"{target}: {names}")
    return EXIT_OK


def regenerate_reports(
    plan: RolloutPlan, states: dict[str, RolloutState], target: Path
) -> list[Path]:
    """The reports of ``plan`` rebuilt in ``target`` from ``states`` (the one place the command
    calls the report writer, :func:`~openfeature_canary.events.write_reports`): the files
    written. The results and abort files are replaced whole; stages whose entries have left
    the store's log come back from the folder's ``canary_results.json`` when it has them.
    """
    try:
        target.mkdir(parents=True, exist_ok=True)
        return write_reports(plan, states.values(), target)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except CanaryError as exc:  # ReportError: a file could not be written
        raise UsageError(str(exc)) from exc
