"""Log lines as JSON, for a log pipeline: a :class:`logging.Formatter` the user installs.

The provider and the engine only log to the ``openfeature_canary`` logger; they never
configure logging themselves (an application owns its root logger). To get one JSON object
per line::

    import logging
    from openfeature_canary import JsonLogFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.getLogger("openfeature_canary").addHandler(handler)

or :func:`configure_logging` (what the command line does with ``--log-format json`` or
``OPENFEATURE_CANARY_LOG_FORMAT=json``). A transition's line carries its fields (flag, action,
from, to, reason, rule, value, threshold, unit, n, by) as top-level keys.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import IO, Any, Final

__all__ = ["LOG_FORMATS", "LOG_FORMAT_ENV", "JsonLogFormatter", "configure_logging", "log_format"]

#: The environment variable that picks the log format (``text`` or ``json``).
LOG_FORMAT_ENV: Final = "OPENFEATURE_CANARY_LOG_FORMAT"
#: The formats :func:`configure_logging` knows.
LOG_FORMATS: Final = ("text", "json")
#: The text format of the command line's log lines.
_TEXT: Final = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``process``, ``message``, the ``canary`` fields a transition's record carries, and
    ``exc_info`` as text when there is one.

    >>> record = logging.makeLogRecord({"msg": "f: %s", "args": ("rollback",),
    ...     "canary": {"flag": "f", "reason": "p95_breach"}, "created": 0.0})
    >>> JsonLogFormatter().format(record)[:60]
    '{"time": "1970-01-01T00:00:00.000Z", "level": "INFO", "logger'
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (never raises on an odd field: it is shown as text)."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%f"
            )[:-3]
            + "Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "canary", None)
        if isinstance(fields, Mapping):
            out.update({str(k): v for k, v in fields.items() if str(k) not in out})
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, allow_nan=False, ensure_ascii=False)


def log_format(given: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The log format to use: ``given``, else :data:`LOG_FORMAT_ENV`, else ``text``.
    ValueError naming the source when it is not one of :data:`LOG_FORMATS`.

    >>> log_format(None, {"OPENFEATURE_CANARY_LOG_FORMAT": "JSON"})
    'json'
    """
    env = os.environ if environ is None else environ
    source, value = ("--log-format", given) if given else (LOG_FORMAT_ENV, env.get(LOG_FORMAT_ENV))
    fmt = (value or "text").strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"{source}: must be one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return fmt


def configure_logging(
    fmt: str = "text", *, level: int = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Log the ``openfeature_canary`` logger's records at ``level`` and above to ``stream``
    (stderr by default) as ``fmt`` (``text`` or ``json``); returns the handler it added.

    It configures only the package's own logger (not the root logger); records still
    propagate to whatever the application configured. Calling it again replaces the handler
    it added before.
    """
    logger = logging.getLogger("openfeature_canary")
    for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(old)
    handler = _Handler(stream)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` adds (so that a second call replaces it)."""
