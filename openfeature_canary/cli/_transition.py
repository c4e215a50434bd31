"""The commands that change a flag's rollout: ``start``, ``promote``, ``pause``, ``resume``,
``rollback``, ``reset``.

Each goes through the engine's own controller (the same pipeline as an automatic decision:
persisted, then a telemetry event through the durable outbox and the reports). ``--by NAME``
(default: the login name) says who acted; until the decision log has a field for it, it is
written where the command's reason goes (``operator:NAME``), and as ``by`` among a
rollback's numbers (whose reason is the operator's own text).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Final

from openfeature_canary.cli._common import (
    EXIT_OK,
    Io,
    load_plan_arg,
    login_name,
    open_rollout,
)
from openfeature_canary.cli._format import format_pct, state_line
from openfeature_canary.errors import UsageError
from openfeature_canary.plan import FlagPlan
from openfeature_canary.policy import Controller
from openfeature_canary.state import RolloutState

__all__ = ["COMMANDS", "add_transition_parsers"]

COMMANDS: Final = {
    "start": "ask the policy to start the rollout at stage 1 (from pending)",
    "promote": "advance to the next stage now, or --to a later one (the last needs --skip-soak)",
    "pause": "hold the current stage (triggers still roll back)",
    "resume": "continue a paused stage",
    "rollback": "force the flag to 0 %% until reset (needs --reason)",
    "reset": "return to pending (0 %%), e.g. after a rollback was investigated",
}

_FLUSH_S: Final = 5.0


def add_transition_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register the transition commands on the top-level subparsers."""
    for name, summary in COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=summary)
        p.add_argument("flag", metavar="FLAG", help="a flag key of the plan")
        p.add_argument(
            "--by",
            metavar="NAME",
            default=None,
            help="who acts, kept in the decision log (default: the login name)",
        )
        if name == "rollback":
            p.add_argument("--reason", required=True, help="why (kept in the state and logs)")
        if name == "start":
            p.add_argument(
                "--force",
                action="store_true",
                help="start now, without waiting for the baseline check of the process "
                "that runs the policy",
            )
        if name == "promote":
            p.add_argument(
                "--to",
                metavar="STAGE",
                help="go straight to this later stage: its number (1..N) or percent (50%%)",
            )
            p.add_argument(
                "--skip-soak",
                action="store_true",
                help="allow completing from the last stage before its duration (the soak) is over",
            )
        p.set_defaults(handler=_cmd_transition)


def _cmd_transition(args: argparse.Namespace, io: Io) -> int:
    plan = load_plan_arg(args)
    flag = plan.flag(args.flag)
    command: str = args.command
    reason: str | None = getattr(args, "reason", None)
    if command == "rollback" and (reason is None or not reason.strip()):
        raise UsageError("rollback: --reason must not be empty")
    by = _by(args.by)
    to = _stage_arg(flag, args.to) if command == "promote" and args.to is not None else None
    # The same pipeline as an automatic decision: persisted, then a telemetry event through
    # the durable outbox and the reports (an operator's rollback lands in canary_abort.md too).
    rollout, sender = open_rollout(args, plan, io, with_effects=True)
    ctl = rollout.controller(flag.key)
    if command == "start":
        state = ctl.start(force=True, by=by) if args.force else ctl.request_start(by=by)
    elif command == "promote":
        state = ctl.promote(to=to, skip_soak=args.skip_soak, by=by)
    else:
        state = _ACTIONS[command](ctl, reason, by)
    io.print(state_line(flag, state))
    if state.requested == "start":
        io.print(
            "  the process that runs the policy starts it once every trigger is quiet on the "
            "baseline (start --force starts it now, without that check)"
        )
    if sender is not None and sender.client is not None and not sender.flush(_FLUSH_S):
        io.warn("the telemetry event is queued in the outbox; it will be sent later")
    return EXIT_OK


_ACTIONS: Final[dict[str, Callable[[Controller, str | None, str], RolloutState]]] = {
    "pause": lambda ctl, _, by: ctl.pause(by=by),
    "resume": lambda ctl, _, by: ctl.resume(by=by),
    "rollback": lambda ctl, reason, by: ctl.rollback(reason or "", by=by),
    "reset": lambda ctl, _, by: ctl.reset(by=by),
}


def _by(given: str | None) -> str:
    """``--by``, else the login name; one short token (it goes into reasons and labels)."""
    name = login_name() if given is None else given.strip()
    if not name or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        raise UsageError(f"--by {given!r}: give a name without spaces, at most 64 characters")
    return name


def _stage_arg(flag: FlagPlan, text: str) -> int:
    """``--to``: a stage number (1..N) or the percent of one of the flag's stages."""
    raw = text.strip()
    n = len(flag.stages)
    if raw.endswith("%"):
        try:
            percent = float(raw[:-1])
        except ValueError:
            percent = float("nan")
        for i, stage in enumerate(flag.stages, start=1):
            if stage.percent == percent:
                return i
        shown = ", ".join(format_pct(s.percent) for s in flag.stages)
        raise UsageError(
            f"promote --to {text!r}: {flag.key} has no stage at that percent ({shown})"
        )
    if raw.isdigit() and 1 <= int(raw) <= n:
        return int(raw)
    raise UsageError(f"promote --to {text!r}: give a stage number 1..{n} or a percent such as 50%")
