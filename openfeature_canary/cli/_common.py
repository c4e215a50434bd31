"""What the commands of ``openfeature-canary`` share: exit codes, the output and clock a command
gets (:class:`Io`), the plan and store it works on, and the signal-aware wait of the long-running
commands (``export-flagd --watch``, ``controller``).

``cli/_main.py`` (the parser and the one-shot commands), ``cli/_export.py`` and
``cli/_controller.py`` import from here and never from each other.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

from openfeature_canary.clock import Clock
from openfeature_canary.engine import EngineOptions, build_engine
from openfeature_canary.errors import StateStoreError, UsageError
from openfeature_canary.events import TelemetrySender
from openfeature_canary.events._logging import (
    LOG_FORMAT_ENV,
    LOG_FORMATS,
    configure_logging,
    log_format,
)
from openfeature_canary.plan import RolloutPlan, load_plan
from openfeature_canary.policy import Rollout

__all__ = [
    "DEFAULT_PLAN",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_STORE",
    "EXIT_USAGE",
    "EXIT_WAIT_OTHER",
    "EXIT_WAIT_TIMEOUT",
    "PROG",
    "Io",
    "Stopper",
    "StoreUnreachableError",
    "add_log_format",
    "load_plan_arg",
    "logging_for",
    "login_name",
    "open_rollout",
    "store_url",
    "unreachable",
]

PROG: Final = "openfeature-canary"
DEFAULT_PLAN: Final = "canary_plan.toml"

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
#: The store could not be reached or read (redis down, a file store's folder unreadable).
EXIT_STORE: Final = 3
#: ``wait``: the timeout ran out before the flag reached the awaited status.
EXIT_WAIT_TIMEOUT: Final = 4
#: ``wait``: the flag ended in another final status (e.g. rolled back while waiting for
#: ``completed``), so the awaited one cannot come without an operator.
EXIT_WAIT_OTHER: Final = 5


class StoreUnreachableError(StateStoreError):
    """The state store named by the URL could not be reached or read: not bad input (exit 2)
    but an outage (exit 3), which an operator or a CI job retries."""


class Io:
    """Where a command writes, and the clock it acts at (every command takes one)."""

    def __init__(self, out: IO[str], err: IO[str], clock: Clock) -> None:
        self.out = out
        self.err = err
        self.clock = clock

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def warn(self, text: str) -> None:
        print(f"{PROG}: warning: {text}", file=self.err)


# --------------------------------------------------------------------------- loading


def load_plan_arg(args: argparse.Namespace) -> RolloutPlan:
    """The plan of ``--plan`` (default ``canary_plan.toml`` here); :class:`UsageError` if absent."""
    path: str | None = getattr(args, "plan", None)
    if path is None and not Path(DEFAULT_PLAN).exists():
        raise UsageError(
            f"{DEFAULT_PLAN}: plan file not found in the current folder ({Path.cwd()}); "
            "give --plan PATH"
        )
    return load_plan(path or DEFAULT_PLAN)


def store_url(args: argparse.Namespace, plan: RolloutPlan) -> str:
    """The store URL of ``--store`` or the plan; :class:`UsageError` naming what is missing."""
    url: str | None = getattr(args, "store", None)
    if url == "":
        raise UsageError("--store is empty: give --store file:///path/state.json")
    if url is None:
        url = plan.store
    if not url:
        raise UsageError(
            f"no store: give --store file:///path/state.json (the one the service uses) or set "
            f"`store` in {plan.source}"
        )
    if url.startswith("/"):
        raise UsageError(f"--store {url!r}: a store is a URL; did you mean file://{url}?")
    return url


def open_rollout(
    args: argparse.Namespace,
    plan: RolloutPlan,
    io: Io,
    *,
    with_effects: bool = False,
) -> tuple[Rollout, TelemetrySender | None]:
    """The rollout over the plan's shared store (``memory://`` refused), read from the store.

    ``with_effects``: transitions go through the same pipeline as the service's (telemetry
    event through the durable outbox, reports).
    """
    url = store_url(args, plan)
    if url.startswith("memory:"):
        raise UsageError(
            "the store is memory://, which no service shares: give --store "
            "file:///path/state.json (the one the service uses) or set `store` in the plan"
        )
    options = EngineOptions(store=url, clock=io.clock, effects=with_effects)
    try:
        engine = build_engine(plan, options)
        rollout, sender = engine.rollout, engine.sender
        rollout.load()
    except StateStoreError as exc:
        if unreachable(exc):
            raise StoreUnreachableError(f"store unreachable: {exc}") from exc
        raise UsageError(str(exc)) from exc  # a bad URL, a missing folder, a corrupt state
    if sender is not None:
        # Events a killed process persisted but never queued go out with this command's.
        rollout.reconcile_events()
    return rollout, sender


def unreachable(exc: BaseException) -> bool:
    """Whether a store error is an outage (connection refused, timeout, I/O error) rather
    than bad input (a bad URL, a corrupt state): the exit code tells a retry from a fix.

    The stores keep the library's error as the cause; redis-py's connection errors are not
    :class:`OSError`, so they are recognised by their class names.
    """
    seen: BaseException | None = exc.__cause__
    while seen is not None:
        names = {c.__name__ for c in type(seen).__mro__}
        if isinstance(seen, OSError) or names & {"ConnectionError", "TimeoutError"}:
            return not isinstance(seen, FileNotFoundError)
        seen = seen.__cause__
    return isinstance(exc, StoreUnreachableError)


def login_name() -> str:
    """Who runs the command, for ``--by``'s default: the login name, else ``"operator"``."""
    try:
        return getpass.getuser() or "operator"
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (a bare container)
        return "operator"


class Stopper:
    """Waits between polls and wakes at once on SIGINT or SIGTERM.

    The handlers only append to a list: a handler that took a lock (``threading.Event.set``)
    could deadlock the very code it interrupted. The signal's wake-up byte on a socket ends
    the ``select`` of :meth:`wait` early. Outside the main thread no handler can be set; the
    wait is then a plain sleep and Ctrl-C ends the command through ``KeyboardInterrupt``.
    """

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._previous: dict[signal.Signals, Any] = {}
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._old_fd = -1

    def __enter__(self) -> Stopper:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            return self
        self._wake = socket.socketpair()
        for end in self._wake:
            end.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._wake[1].fileno(), warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._wake is not None:
            signal.set_wakeup_fd(self._old_fd)
            for end in self._wake:
                end.close()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True once SIGINT or SIGTERM arrived."""
        if not self.signals:
            if self._wake is None:
                time.sleep(timeout)
            else:
                select.select([self._wake[0]], [], [], timeout)
                with contextlib.suppress(OSError):
                    self._wake[0].recv(4096)
        return bool(self.signals)


# --------------------------------------------------------------------------- logging


def add_log_format(parser: argparse.ArgumentParser) -> None:
    """``--log-format text|json`` (every command; default :data:`LOG_FORMAT_ENV`, else text)."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS,
        help=f"log lines as text or one JSON object each (default: ${LOG_FORMAT_ENV}, or text)",
    )


@contextlib.contextmanager
def logging_for(args: argparse.Namespace, io: Io) -> Iterator[None]:
    """The package's log lines on ``io.err`` while a command runs, in ``--log-format`` (or
    :data:`LOG_FORMAT_ENV`): for ``controller`` always, for other commands when a format was
    asked for. Only the ``openfeature_canary`` logger is configured, and only meanwhile."""
    given: str | None = getattr(args, "log_format", None)
    try:
        fmt = log_format(given)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.command != "controller" and given is None and LOG_FORMAT_ENV not in os.environ:
        yield
        return
    logger = logging.getLogger("openfeature_canary")
    level = logger.level
    handler = configure_logging(fmt, stream=io.err)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
