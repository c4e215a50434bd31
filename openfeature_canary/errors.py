"""Exception types of openfeature-canary.

The hierarchy::

    CanaryError                 root: catch this to catch everything we raise
    ├── PlanError               the plan file or value is invalid (names the path and rule);
    │                           also a ValueError
    ├── StateStoreError         a state store cannot be read or written
    │   └── StaleStateError     a compare-and-set lost against a newer version
    ├── TransitionError         an operator command is not valid in the current status
    ├── UnknownFlagError        the plan has no such flag; also a KeyError
    ├── SignalSourceError       a signal source failed to produce readings
    ├── UnitEncodingError       a bucketing unit is not valid Unicode text; also a ValueError
    ├── OutboxError             an event could not be made durable in the outbox
    ├── IngestError             a POST to the telemetry ingest failed
    ├── ReportError             a report file could not be written
    └── UsageError              bad command-line input (the CLI exits with 2)

The provider never lets these escape into the OpenFeature SDK: it maps them to
``OpenFeatureError``s at its boundary.
"""

from __future__ import annotations

__all__ = [
    "CanaryError",
    "IngestError",
    "OutboxError",
    "PlanError",
    "ReportError",
    "SignalSourceError",
    "StaleStateError",
    "StateStoreError",
    "TransitionError",
    "UnitEncodingError",
    "UnknownFlagError",
    "UsageError",
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


class UnitEncodingError(CanaryError, ValueError):
    """The bucketing unit is not valid Unicode text (it holds a lone surrogate), so it has no
    UTF-8 bytes to hash and is not bucketed.

    The message is one line naming the flag and the offending code point (escaped); it never
    echoes the unit itself. ``CanaryProvider`` answers the caller's default with error code
    ``INVALID_CONTEXT`` (reason ``ERROR``).
    Also a ``ValueError``, as it was before it joined this tree.
    """


class OutboxError(CanaryError):
    """The outbox file cannot be read or written (the path is in the message).

    Raised by :meth:`Outbox.enqueue` when an event could not be made durable: the caller
    must not assume it will be delivered.
    """


class IngestError(CanaryError):
    """A POST to the telemetry ingest failed: a transport error, a timeout (the attempt's
    deadline) or a non-2xx answer.

    ``status_code`` is the HTTP status, or ``None`` when no answer came. The message names the
    URL only in redacted form (see :func:`redact_url`) and holds none of its secrets.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ReportError(CanaryError):
    """A report file could not be written (the path is in the message)."""
