"""``openfeature-canary export-flagd``: the current state as a flagd flag definition.

::

    openfeature-canary export-flagd --store file:///var/lib/canary/state.json --out flags.json
    openfeature-canary export-flagd --scheme flagd-cbor --out flags.json --watch --interval 1

Without ``--watch`` it writes once (``--out -``, the default, prints it). With ``--watch`` it
keeps ``--out FILE`` current for a flagd fleet: it polls the store's ``change_token()`` every
``--interval`` seconds and rewrites the file (atomically) only when what flagd would serve
changed: a tick that only brings a stage's evidence up to date bumps the state's version but
serves the same, and flagd reloads every write (issue 16 measured 282 writes in 8 minutes). A
store that cannot be read is one line on stderr, and the file keeps the last good definition;
SIGINT or SIGTERM stops it with exit code 0.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Final

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary.bucketing import SCHEMES
from openfeature_canary.cli._common import EXIT_OK, Io, Stopper, load_plan_arg, open_rollout
from openfeature_canary.cli._format import format_pct
from openfeature_canary.errors import StateStoreError, UsageError
from openfeature_canary.flagd_export import export_scheme, flagd_definition, render_flagd
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.policy import Rollout
from openfeature_canary.stores import FileStateStore

__all__ = ["add_export_parser"]

_DEFAULT_INTERVAL_S: Final = 1.0
_STDOUT: Final = "-"


def add_export_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``export-flagd`` on the CLI's subparsers (``common``: --plan and --store)."""
    p = sub.add_parser(
        "export-flagd",
        parents=[common],
        help="write the current state as a flagd flag definition (same cohorts)",
        description="Write every flag's current state as a flagd flag definition whose "
        "fractional rule gives the same cohorts as CanaryProvider. The env override is "
        "process-local and not exported.",
    )
    p.add_argument(
        "--scheme",
        choices=SCHEMES,
        help="the flagd evaluator that reads the file: flagd (flagd >= 0.15, flagd-core 1.x) "
        "or flagd-cbor (flagd-core 2.x); default: the scheme of the plan's flags, which must "
        "all bucket with it",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        default=_STDOUT,
        help="where to write; '-' prints it (default)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep --out FILE current: rewrite it whenever the state changes, until SIGINT/SIGTERM",
    )
    p.add_argument(
        "--interval",
        metavar="S",
        type=float,
        default=None,
        help=f"with --watch: seconds between store polls (default {_DEFAULT_INTERVAL_S:g})",
    )
    p.set_defaults(handler=_cmd_export_flagd)


def _cmd_export_flagd(args: argparse.Namespace, io: Io) -> int:
    target = _target(args)
    interval = _interval(args)
    plan = load_plan_arg(args)
    scheme = export_scheme(plan, args.scheme)  # argparse has checked the name
    rollout, _ = open_rollout(args, plan, io)
    if target is not None:
        _check_target(target, rollout)
    watcher = _Watcher(plan, rollout, scheme, target, io)
    definition, text = watcher.render()
    if target is None:
        io.out.write(text)
        return EXIT_OK
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        raise UsageError(f"export-flagd: cannot write {target}: {exc.strerror or exc}") from exc
    watcher.written = served(definition)
    watcher.report(definition)
    if not args.watch:
        return EXIT_OK
    with Stopper() as stopper:
        while not stopper.wait(interval):
            watcher.poll()
    return EXIT_OK


def _target(args: argparse.Namespace) -> Path | None:
    out: str = args.out
    if not out.strip():
        raise UsageError("export-flagd: --out is empty: give a file or '-' for stdout")
    if out == _STDOUT:
        if args.watch:
            raise UsageError("export-flagd: --watch keeps a file current: give --out FILE")
        return None
    return Path(out)


def _interval(args: argparse.Namespace) -> float:
    value: float | None = args.interval
    if value is None:
        return _DEFAULT_INTERVAL_S
    if not args.watch:
        raise UsageError("export-flagd: --interval is for --watch")
    if not (math.isfinite(value) and value > 0):
        raise UsageError(
            f"export-flagd: --interval must be a positive number of seconds, got {value}"
        )
    return value


def _check_target(target: Path, rollout: Rollout) -> None:
    """Refuse an output that cannot be written or that would overwrite the state store."""
    if not target.parent.is_dir():
        raise UsageError(f"export-flagd: --out {target}: folder {target.parent} does not exist")
    if target.is_dir():
        raise UsageError(f"export-flagd: --out {target} is a folder: give a file name")
    store = rollout.store
    if isinstance(store, FileStateStore) and target.resolve() == store.path.resolve():
        raise UsageError(f"export-flagd: --out {target} is the state store itself")


class _Watcher:
    """Keeps ``target`` equal to the definition of the store's current states.

    :meth:`poll` reads the store's change token first and the states after, so a change that
    lands in between is seen at the next poll; it rewrites the file only when what flagd serves
    changed (:func:`served`). A failure (store unreadable or not fitting the plan, file not
    writable) is one line per distinct error, the file keeps the last good definition, and the
    next poll tries again.
    """

    def __init__(
        self, plan: RolloutPlan, rollout: Rollout, scheme: str, target: Path | None, io: Io
    ) -> None:
        self.plan = plan
        self.rollout = rollout
        self.scheme = scheme
        self.target = target
        self.io = io
        self.token: object = _UNSEEN
        self.written = ""
        self.failing = ""

    def render(self) -> tuple[dict[str, Any], str]:
        """The definition of the states the rollout last read, and its text."""
        states = {ctl.key: ctl.state for ctl in self.rollout.controllers()}
        definition = flagd_definition(self.plan, states, self.scheme)
        return definition, render_flagd(definition)

    def report(self, definition: dict[str, Any]) -> None:
        """One line per write: the file, and what each flag now serves in flagd."""
        served = ", ".join(
            f"{key} {format_pct(float(meta['percent']))} ({meta['status']}, "
            f"v{meta['state_version']})"
            for key, meta in ((k, f["metadata"]) for k, f in definition["flags"].items())
        )
        self.io.print(f"{self.target}: {served}")
        self.io.out.flush()

    def poll(self) -> None:
        """One round: rewrite the file if the store changed what it should say."""
        assert self.target is not None
        try:
            token = self.rollout.store.change_token()
            if token != self.token:
                self.rollout.refresh()
                definition, text = self.render()
                if served(definition) != self.written:
                    atomic_write_text(self.target, text)
                    self.written = served(definition)
                    self.report(definition)
                self.token = token
        except (StateStoreError, OSError) as exc:
            message = f"{exc}; {self.target} keeps the last good definition"
            if message != self.failing:
                self.io.warn(message)
                self.io.err.flush()
            self.failing = message
            return
        if self.failing:
            self.failing = ""
            self.io.warn(f"recovered: {self.target} is current again")
            self.io.err.flush()


_UNSEEN: Final = object()

#: Flag metadata that changes with every persisted state (each tick's evidence) while what
#: flagd serves stays the same: not a reason to rewrite the file (and make flagd reload).
_VOLATILE: Final = frozenset({"state_version"})


def served(definition: dict[str, Any]) -> str:
    """The part of a flagd definition that decides what flagd serves and reports, as text:
    everything but each flag's :data:`_VOLATILE` metadata. The file written carries the state
    version of the last change that mattered."""
    flags = {
        key: {
            **flag,
            "metadata": {k: v for k, v in flag.get("metadata", {}).items() if k not in _VOLATILE},
        }
        for key, flag in definition["flags"].items()
    }
    return json.dumps({**definition, "flags": flags}, sort_keys=True)
