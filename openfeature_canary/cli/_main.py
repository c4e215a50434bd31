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
store refused a write); 2 bad input (missing or invalid plan, unknown flag, bad store URL, a
corrupt state, bad arguments); 3 the store cannot be reached (connection refused, timeout,
I/O error); ``wait`` only: 4 timed out, 5 the flag ended in another final status; 130
interrupted. Expected errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, NoReturn

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary.bucketing import UnitEncodingError
from openfeature_canary.cli._common import (
    DEFAULT_PLAN,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STORE,
    EXIT_USAGE,
    PROG,
    Io,
    add_log_format,
    load_plan_arg,
    logging_for,
    open_rollout,
    unreachable,
)
from openfeature_canary.cli._controller import add_controller_parser
from openfeature_canary.cli._export import add_export_parser
from openfeature_canary.cli._format import bucket_lines, flag_summary, power_lines, rps_value
from openfeature_canary.cli._ops import add_ops_parsers
from openfeature_canary.cli._outbox import add_outbox_parsers
from openfeature_canary.cli._transition import add_transition_parsers
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
from openfeature_canary.state import RolloutState

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
        with logging_for(args, io):
            return handler(args, io)
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except (UsageError, PlanError, UnknownFlagError) as exc:
        return _fail(io, exc, EXIT_USAGE)
    except TransitionError as exc:
        return _fail(io, exc, EXIT_REFUSED)
    except StateStoreError as exc:
        # An outage (exit 3) is retried, a refused write (exit 1) is looked at; opening a
        # store with a bad URL or a corrupt state is mapped to UsageError in open_rollout.
        return _fail(io, exc, EXIT_STORE if unreachable(exc) else EXIT_REFUSED)
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
    add_log_format(common)
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="Progressive canary rollouts for OpenFeature flags: check and render the "
        "plan, inspect and drive each flag's rollout.",
        epilog="Exit codes: 0 done, 1 refused in the current status, 2 bad input, 3 store "
        "unreachable; wait: 4 timed out, 5 ended in another final status.",
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

    add_ops_parsers(sub, common)
    add_transition_parsers(sub, common)
    add_outbox_parsers(sub, common)

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
