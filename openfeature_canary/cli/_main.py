"""The ``openfeature-canary`` command line: check and render plans, drive rollouts by hand.

::

    openfeature-canary plan check --plan canary_plan.toml
    openfeature-canary start dataservice-read-canary --store file:///var/lib/canary/state.json
    openfeature-canary status --json

Every command takes ``--plan`` (default ``canary_plan.toml`` in the current folder) and
``--store`` (default: the plan's ``store``), before or after the command. A command that reads
or changes a flag's rollout needs a shared store: ``memory://`` is refused (it would show or
change a state no service reads). ``start`` records a request that the process running the
policy carries out once the baseline is quiet (stage 0's gate); ``start --force`` starts now,
without that check.

Exit codes: 0 done; 1 refused (the command is not valid in the flag's current status, or the
store could not be written); 2 bad input (missing or invalid plan, unknown flag, bad store
URL, bad arguments). Expected errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Final, NoReturn

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary.bucketing import UnitEncodingError
from openfeature_canary.cli._common import (
    DEFAULT_PLAN,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    PROG,
    Io,
    load_plan_arg,
    open_rollout,
)
from openfeature_canary.cli._controller import add_controller_parser
from openfeature_canary.cli._export import add_export_parser
from openfeature_canary.cli._format import (
    bucket_lines,
    decider_json,
    decider_line,
    flag_summary,
    power_lines,
    rps_value,
    state_line,
    status_json,
    status_table,
)
from openfeature_canary.clock import Clock, SystemClock
from openfeature_canary.errors import (
    CanaryError,
    PlanError,
    StateStoreError,
    TransitionError,
    UnknownFlagError,
    UsageError,
)
from openfeature_canary.events import render_plan_markdown
from openfeature_canary.policy import Controller
from openfeature_canary.state import RolloutState
from openfeature_canary.stores import FleetStore, Lease, StateStore

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "UsageError", "main", "run"]


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage dump) and do not exit."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see '{self.prog} --help')")


Handler = Callable[[argparse.Namespace, Io], int]


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (``sys.argv[1:]`` by default); return the exit code.

    >>> main(["plan", "check", "--plan", "examples/canary_plan.toml"])  # doctest: +SKIP
    dataservice-read-canary: 4 stages (5% for 10m, ...), 5 triggers, ...
    plan OK: 2 flags in examples/canary_plan.toml
    0
    """
    return run(sys.argv[1:] if argv is None else argv)


def run(
    argv: Sequence[str],
    *,
    clock: Clock | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """:func:`main` with an injectable clock and streams (tests, embedding)."""
    io = Io(out or sys.stdout, err or sys.stderr, clock or SystemClock())
    try:
        parser = build_parser()
        args, extras = parser.parse_known_args(list(argv))
        if args.command == "demo":
            return _run_demo(args, extras, io)
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        handler: Handler = args.handler
        return handler(args, io)
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except (UsageError, PlanError, UnknownFlagError) as exc:
        return _fail(io, exc, EXIT_USAGE)
    except TransitionError as exc:
        return _fail(io, exc, EXIT_REFUSED)
    except StateStoreError as exc:
        # Opening/reading a store is mapped to UsageError in _open; this is a failed write.
        return _fail(io, exc, EXIT_REFUSED)
    except CanaryError as exc:  # every other error of ours is about the input: one line
        return _fail(io, exc, EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=io.err)
        return 130


def _fail(io: Io, exc: Exception, code: int) -> int:
    print(f"{PROG}: error: {exc}", file=io.err)
    return code


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    common = _Parser(add_help=False)
    # SUPPRESS: an option given before the command is not overwritten by the subparser's
    # default, so `--plan` works on either side of the command name.
    common.add_argument(
        "--plan",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"plan file, TOML or JSON (default: {DEFAULT_PLAN} in the current folder)",
    )
    common.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="state store, e.g. file:///path/state.json (default: the plan's `store`)",
    )
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="Progressive canary rollouts for OpenFeature flags: check and render the "
        "plan, inspect and drive each flag's rollout.",
        epilog="Exit codes: 0 done, 1 refused in the current status, 2 bad input.",
    )
    from openfeature_canary import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    plan_p = sub.add_parser("plan", parents=[common], help="check or render the plan")
    plan_sub = plan_p.add_subparsers(dest="plan_command", metavar="ACTION", required=True)
    check = plan_sub.add_parser(
        "check", parents=[common], help="validate the plan and summarise each flag"
    )
    check.add_argument(
        "--rps", type=rps_value, metavar="R", help="also print what each stage can detect at R rps"
    )
    check.set_defaults(handler=_cmd_plan_check)
    render = plan_sub.add_parser(
        "render", parents=[common], help="write the plan as markdown (canary_plan.md)"
    )
    render.add_argument(
        "--out",
        metavar="PATH",
        help="where to write (default: canary_plan.md in the plan's [reports].dir)",
    )
    render.set_defaults(handler=_cmd_plan_render)

    status = sub.add_parser(
        "status", parents=[common], help="show each flag's status, stage and last decision"
    )
    status.add_argument("flag", metavar="FLAG", nargs="?", help="only this flag (default: all)")
    status.add_argument("--json", action="store_true", help="machine-readable JSON")
    status.set_defaults(handler=_cmd_status)

    for name, summary in _COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=summary)
        p.add_argument("flag", metavar="FLAG", help="a flag key of the plan")
        if name == "rollback":
            p.add_argument("--reason", required=True, help="why (kept in the state and logs)")
        if name == "start":
            p.add_argument(
                "--force",
                action="store_true",
                help="start now, without waiting for the baseline check of the process "
                "that runs the policy",
            )
        p.set_defaults(handler=_cmd_transition)

    bucket = sub.add_parser(
        "bucket", parents=[common], help="show a unit's bucket and the stages it is in"
    )
    bucket.add_argument("flag", metavar="FLAG", help="a flag key of the plan")
    bucket.add_argument("unit", metavar="UNIT", help="the bucketing unit, e.g. a request id")
    bucket.set_defaults(handler=_cmd_bucket)

    add_export_parser(sub, common)
    add_controller_parser(sub, common)

    # add_help=False: `demo --help` and every other demo option go to the demo itself.
    sub.add_parser(
        "demo", parents=[common], add_help=False, help="run the reference scenario end to end"
    )
    return parser


_COMMANDS: Final = {
    "start": "ask the policy to start the rollout at stage 1 (from pending)",
    "promote": "advance to the next stage now (completed after the last)",
    "pause": "hold the current stage (triggers still roll back)",
    "resume": "continue a paused stage",
    "rollback": "force the flag to 0 %% until reset (needs --reason)",
    "reset": "return to pending (0 %%), e.g. after a rollback was investigated",
}


# --------------------------------------------------------------------------- commands


def _cmd_plan_check(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    for flag in plan.flags.values():
        io.print(flag_summary(flag))
        for line in power_lines(flag, args.rps) if args.rps else ():
            io.print(line)
    n = len(plan.flags)
    io.print(f"plan OK: {n} flag{'s' if n != 1 else ''} in {plan.source}")
    return EXIT_OK


def _cmd_plan_render(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    target = Path(args.out) if args.out else Path(plan.reports.dir) / "canary_plan.md"
    _write_atomically(target, render_plan_markdown(plan))
    io.print(str(target))
    return EXIT_OK


def _write_atomically(target: Path, text: str) -> None:
    """Replace ``target`` whole: a reader (or a crash) never sees half a report."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _cmd_status(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    flags = [plan.flag(args.flag)] if args.flag else list(plan.flags.values())
    rollout, _ = open_rollout(args, plan, io)
    states = {f.key: rollout.controller(f.key).state for f in flags}
    lease, error = _read_lease(rollout.store)
    if args.json:
        data = status_json(flags, states, plan_source=plan.source, store_url=rollout.store.url)
        data["decider"] = decider_json(lease, io.clock.now(), error=error)
        io.print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        io.print(status_table(flags, states))
        decider = decider_line(lease, io.clock.now(), error=error)
        if decider is not None:
            io.print(decider)
    return EXIT_OK


def _read_lease(store: StateStore) -> tuple[Lease | None, str | None]:
    """The store's decider lease for ``status``, or the error reading it (shown, not fatal)."""
    if not isinstance(store, FleetStore):
        return None, None
    try:
        return store.lease(), None
    except StateStoreError as exc:
        return None, str(exc)


def _cmd_transition(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    flag = plan.flag(args.flag)
    command: str = args.command
    reason: str | None = getattr(args, "reason", None)
    if command == "rollback" and (reason is None or not reason.strip()):
        raise UsageError("rollback: --reason must not be empty")
    # The same pipeline as an automatic decision: persisted, then a telemetry event through
    # the durable outbox and the reports (an operator's rollback lands in canary_abort.md too).
    rollout, sender = open_rollout(args, plan, io, with_effects=True)
    ctl = rollout.controller(flag.key)
    if command == "start":
        state = ctl.start(force=True) if args.force else ctl.request_start()
    else:
        state = _ACTIONS[command](ctl, reason)
    io.print(state_line(flag, state))
    if state.requested == "start":
        io.print(
            "  the process that runs the policy starts it once every trigger is quiet on the "
            "baseline (start --force starts it now, without that check)"
        )
    if sender is not None and sender.client is not None and not sender.flush(_FLUSH_S):
        io.warn("the telemetry event is queued in the outbox; it will be sent later")
    return EXIT_OK


_FLUSH_S: Final = 5.0

_ACTIONS: Final[dict[str, Callable[[Controller, str | None], RolloutState]]] = {
    "promote": lambda ctl, _: ctl.promote(),
    "pause": lambda ctl, _: ctl.pause(),
    "resume": lambda ctl, _: ctl.resume(),
    "rollback": lambda ctl, reason: ctl.rollback(reason or ""),
    "reset": lambda ctl, _: ctl.reset(),
}


def _cmd_bucket(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    flag = plan.flag(args.flag)
    if not args.unit:
        raise UsageError("bucket: UNIT must not be empty (an empty unit counts as missing)")
    state: RolloutState | None = None
    if getattr(args, "store", None) or plan.store:
        state = open_rollout(args, plan, io)[0].controller(flag.key).state
    try:
        lines = bucket_lines(flag, args.unit, state)
    except UnitEncodingError as exc:  # e.g. undecodable bytes in argv
        raise UsageError(f"bucket: {exc}") from exc
    for line in lines:
        io.print(line)
    return EXIT_OK


def _run_demo(args: argparse.Namespace, extras: list[str], io: Io) -> int:
    """Hand over to the demo (``openfeature_canary.demo``), which owns its options;
    ``--plan``/``--store`` given to this CLI are passed on."""
    from openfeature_canary.demo import main as demo_main

    forwarded = [
        *(["--plan", args.plan] if "plan" in vars(args) else []),
        *(["--store", args.store] if "store" in vars(args) else []),
        *extras,
    ]
    return demo_main(forwarded)
