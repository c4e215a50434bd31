"""Exception types of openfeature-canary.

The hierarchy::

    CanaryError                 root: catch this to catch everything we raise
    ├── PlanError               the plan file or value is invalid (names the path and rule)
    ├── StateStoreError         a state store cannot be read or written
    │   └── StaleStateError     a compare-and-set lost against a newer version
    ├── TransitionError         an operator command is not valid in the current status
    ├── UnknownFlagError        the plan has no such flag
    └── SignalSourceError       a signal source failed to produce readings

The provider never lets these escape into the OpenFeature SDK: it maps them to
``OpenFeatureError``s at its boundary.
"""

from __future__ import annotations

__all__ = [
    "CanaryError",
    "PlanError",
    "SignalSourceError",
    "StaleStateError",
    "StateStoreError",
    "TransitionError",
    "UnknownFlagError",
]


class CanaryError(Exception):
    """Root of every error openfeature-canary raises."""


class PlanError(CanaryError, ValueError):
    """The plan is invalid. ``str(error)`` names the file, the path and the rule.

    Example: ``canary_plan.toml: flags.x.stages[2].percent: must be greater than the
    previous stage (50)``.
    """

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.path = path
        self.source = source
        #: The rule alone, without the file and the path.
        self.rule = message
        where = ": ".join(p for p in (source, path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class StateStoreError(CanaryError):
    """A state store could not be read or written (the URL is in the message)."""


class StaleStateError(StateStoreError):
    """A compare-and-set found a newer version than the one the change was based on."""


class TransitionError(CanaryError):
    """An operator command is not valid in the flag's current status.

    Example: ``promote`` on a rolled-back flag.
    """


class UnknownFlagError(CanaryError, KeyError):
    """The plan has no flag with this key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown flag"


class SignalSourceError(CanaryError):
    """A signal source failed (a scrape, a query, a reader); the policy's ``on_error`` decides."""


class UsageError(CanaryError):
    """Bad command-line input (arguments, output path, store): the CLI exits with 2."""
