"""The commands that read a rollout as it goes: ``status`` (and ``status --watch``),
``history FLAG`` and ``wait FLAG --until STATUS --timeout T``.

Each reads the shared store only (never writes it), so that any number of operators and CI
jobs can watch a rollout without touching it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any, Final

from openfeature_canary._format import format_span, iso_utc, parse_duration
from openfeature_canary.cli._common import (
    EXIT_OK,
    EXIT_WAIT_OTHER,
    EXIT_WAIT_TIMEOUT,
    PROG,
    Io,
    Stopper,
    load_plan_arg,
    open_rollout,
    unreachable,
)
from openfeature_canary.cli._format import (
    decider_json,
    decider_line,
    status_json,
    status_table,
)
from openfeature_canary.cli._views import history_json, history_lines, watch_lines
from openfeature_canary.errors import StateStoreError, UsageError
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy import Rollout
from openfeature_canary.state import RolloutState, Status
from openfeature_canary.stores import FleetStore, Lease, StateStore

__all__ = ["WAIT_TARGETS", "add_ops_parsers"]

#: What ``wait --until`` accepts.
WAIT_TARGETS: Final = ("completed", "rolled_back", "paused", "running")

#: Statuses a flag stays in until an operator acts (a reset): waiting on past them is futile.
_FINAL: Final = frozenset({Status.COMPLETED, Status.ROLLED_BACK})

# ANSI: cursor home, clear the screen; only on a terminal (a pipe gets plain frames).
_CLEAR: Final = "\x1b[H\x1b[2J"


def add_ops_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``status``, ``history`` and ``wait`` on the top-level subparsers."""
    status = sub.add_parser(
        "status", parents=[common], help="show each flag's status, stage and last decision"
    )
    status.add_argument("flag", metavar="FLAG", nargs="?", help="only this flag (default: all)")
    status.add_argument("--json", action="store_true", help="machine-readable JSON")
    status.add_argument(
        "--watch", action="store_true", help="redraw every --interval until Ctrl-C (SIGINT/TERM)"
    )
    status.add_argument(
        "--interval", metavar="DURATION", default="2s", help="--watch's period (default 2s)"
    )
    status.set_defaults(handler=_cmd_status)

    history = sub.add_parser(
        "history", parents=[common], help="a flag's transitions and decisions, oldest first"
    )
    history.add_argument("flag", metavar="FLAG", help="a flag key of the plan")
    history.add_argument("--json", action="store_true", help="machine-readable JSON")
    history.add_argument(
        "--transitions", action="store_true", help="only the transitions (no windows, extends)"
    )
    history.set_defaults(handler=_cmd_history)

    wait = sub.add_parser(
        "wait",
        parents=[common],
        help="wait until a flag reaches a status (exit 0), times out (4) or ends otherwise (5)",
    )
    wait.add_argument("flag", metavar="FLAG", help="a flag key of the plan")
    wait.add_argument("--until", required=True, choices=WAIT_TARGETS, help="the awaited status")
    wait.add_argument(
        "--timeout", metavar="DURATION", required=True, help="give up after this long, e.g. 30m"
    )
    wait.add_argument(
        "--interval", metavar="DURATION", default="1s", help="how often to read the store"
    )
    wait.set_defaults(handler=_cmd_wait)


# --------------------------------------------------------------------------- status


def _cmd_status(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    flags = [plan.flag(args.flag)] if args.flag else list(plan.flags.values())
    interval = _duration("status --interval", args.interval)
    if args.watch and args.json:
        raise UsageError("status: --watch draws for a terminal; use --json without --watch")
    rollout, _ = open_rollout(args, plan, io)
    if not args.watch:
        states = {f.key: rollout.controller(f.key).state for f in flags}
        io.print(_status_text(args, rollout, flags, states, io))
        return EXIT_OK
    clear = _CLEAR if io.out.isatty() else ""
    with Stopper() as stopper:
        while True:
            now = io.clock.now()
            header = f"Every {format_span(interval)}: {PROG} status  {iso_utc(now)}"
            frame = _frame(args, rollout, flags, io, interval)
            io.out.write(clear + "\n".join([header, "", *frame]))
            io.out.write("\n\n")
            io.out.flush()
            if stopper.wait(interval):
                return EXIT_OK


def _frame(
    args: argparse.Namespace,
    rollout: Rollout,
    flags: Sequence[FlagPlan],
    io: Io,
    interval: float,
) -> list[str]:
    """One ``--watch`` frame; a store that went away is shown (and read again next time)
    rather than ending the view an operator is watching an outage through."""
    try:
        states = {f.key: _read(rollout.store, f.key) for f in flags}
    except StateStoreError as exc:
        if not unreachable(exc):
            raise
        return [f"store unreachable: {exc}; reading it again in {format_span(interval)}"]
    now = io.clock.now()
    text = _status_text(args, rollout, flags, states, io)
    return [text, "", *watch_lines(flags, states, now)]


def _status_text(
    args: argparse.Namespace,
    rollout: Rollout,
    flags: Sequence[FlagPlan],
    states: dict[str, RolloutState],
    io: Io,
) -> str:
    now = io.clock.now()
    lease, error = _read_lease(rollout.store)
    if args.json:
        data = status_json(
            flags, states, plan_source=rollout.plan.source, store_url=rollout.store.url, now=now
        )
        data["decider"] = decider_json(lease, now, error=error)
        return json.dumps(data, indent=2, ensure_ascii=False)
    text = status_table(flags, states, now)
    decider = decider_line(lease, now, error=error)
    return text if decider is None else f"{text}\n{decider}"


def _read_lease(store: StateStore) -> tuple[Lease | None, str | None]:
    """The store's decider lease for ``status``, or the error reading it (shown, not fatal)."""
    if not isinstance(store, FleetStore):
        return None, None
    try:
        return store.lease(), None
    except StateStoreError as exc:
        return None, str(exc)


def _read(store: StateStore, key: str) -> RolloutState:
    return store.load(key) or RolloutState(flag_key=key)


# --------------------------------------------------------------------------- history


def _cmd_history(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    flag = plan.flag(args.flag)
    rollout, _ = open_rollout(args, plan, io)
    state = rollout.controller(flag.key).state
    if args.json:
        data = history_json(flag, state, transitions_only=args.transitions)
        io.print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        for line in history_lines(flag, state, transitions_only=args.transitions):
            io.print(line)
    return EXIT_OK


# --------------------------------------------------------------------------- wait


def _cmd_wait(args: argparse.Namespace, io: Io) -> int:
    """Poll the store until the flag is in ``--until`` (0), ``--timeout`` passes (4), or the
    flag ends in another final status (5): e.g. rolled back while waiting for ``completed``.

    The timeout runs on the monotonic clock of this process (a CI job's wall time), not on
    the rollout's clock.
    """
    plan = load_plan_arg(args)
    flag = plan.flag(args.flag)
    timeout = _duration("wait --timeout", args.timeout, allow_zero=True)
    interval = _duration("wait --interval", args.interval)
    target = Status(args.until)
    rollout, _ = open_rollout(args, plan, io)
    started = time.monotonic()
    deadline = started + timeout
    outage = _Outage(io)
    with Stopper() as stopper:
        while True:
            state = outage.read(rollout.store, flag.key, deadline)
            if state is None:
                if stopper.wait(min(interval, max(0.0, deadline - time.monotonic()))):
                    raise KeyboardInterrupt
                continue
            waited = format_span(round(time.monotonic() - started))
            if state.status is target:
                io.print(f"{flag.key}: {_where(flag, state)} (after {waited})")
                return EXIT_OK
            if state.status in _FINAL:
                return _wait_failed(
                    io,
                    EXIT_WAIT_OTHER,
                    f"{flag.key}: {_where(flag, state)} while waiting "
                    f"for {target.value}; it stays so until a reset",
                )
            left = deadline - time.monotonic()
            if left <= 0:
                return _wait_failed(
                    io,
                    EXIT_WAIT_TIMEOUT,
                    f"{flag.key}: still {_where(flag, state)} after "
                    f"{format_span(timeout)} (waiting for {target.value})",
                )
            if stopper.wait(min(interval, left)):
                raise KeyboardInterrupt


class _Outage:
    """``wait``'s reads of the store, riding out an outage until the deadline (a Redis
    failover must not fail a CI job that waits for hours); past the deadline the outage is
    the answer (exit 3). One warning when the store goes away, one when it is back."""

    def __init__(self, io: Io) -> None:
        self.io = io
        self.down = False

    def read(self, store: StateStore, key: str, deadline: float) -> RolloutState | None:
        """The flag's stored state, or ``None`` while the store cannot be reached."""
        try:
            state = _read(store, key)
        except StateStoreError as exc:
            if not unreachable(exc) or time.monotonic() >= deadline:
                raise
            if not self.down:
                self.io.warn(f"store unreachable: {exc}; reading it again until the timeout")
                self.down = True
            return None
        if self.down:
            self.io.warn(f"{store.url}: reachable again")
            self.down = False
        return state


def _where(flag: FlagPlan, state: RolloutState) -> str:
    text = f"{state.status.value}, stage {state.stage}/{len(flag.stages)}"
    if state.status in (Status.ROLLED_BACK, Status.PAUSED) and state.reason:
        text += f" (reason: {state.reason})"
    return text


def _wait_failed(io: Io, code: int, message: str) -> int:
    print(f"{PROG}: error: {message}", file=io.err)
    return code


def _duration(what: str, text: str, *, allow_zero: bool = False) -> float:
    try:
        seconds = parse_duration(text)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{what} {text!r}: {exc}") from exc
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise UsageError(f"{what} {text!r}: must be more than 0")
    return seconds
