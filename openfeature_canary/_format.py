"""The one place numbers, percentages, durations and instants are turned into text.

The CLI, the plan renderer, the reports and the demo all format through these functions, so
the same value reads the same everywhere (``5 %``, ``0.1 %``, ``1h30m``, ``24h``).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

__all__ = [
    "format_duration",
    "format_number",
    "format_percent",
    "format_rate",
    "format_span",
    "iso_utc",
    "parse_duration",
]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ``ValueError`` naming the text when malformed.

    >>> parse_duration("1h30m")
    5400.0
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as '10m', got {text!r}")
    compact = text.strip()
    pos, total = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact) or not compact:
        raise ValueError(
            f"malformed duration {text!r}: use forms like '90s', '10m', '1h30m', '24h'"
        )
    return total


def format_duration(seconds: float) -> str:
    """Render seconds compactly: ``5400`` → ``"1h30m"``, ``0.5`` → ``"500ms"``."""
    if seconds < 1 and seconds > 0:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            count, rest = divmod(rest, size)
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds as ISO-8601 UTC to the second: ``"2025-01-02T03:04:05Z"``."""
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_span(seconds: float) -> str:
    """Like :func:`format_duration`, but a day-long span stays in hours (``"24h"``, ``"36h"``).

    Plans and runbooks say "24 h soak"; ``"1d"`` would read as a different number.
    """
    if 86400 <= seconds < 2 * 86400:
        hours, rest = divmod(round(seconds), 3600)
        return f"{hours}h" + (format_duration(rest) if rest else "")
    return format_duration(seconds)


def format_number(value: float, significant: int = 6) -> str:
    """``5.0`` → ``"5"``, ``12.5`` → ``"12.5"``: whole numbers without a trailing ``.0``, others
    to ``significant`` digits; ``nan``/``inf`` as Python writes them."""
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{significant}g}"


def format_percent(percent: float, sep: str = " ") -> str:
    """Traffic share as people write it: ``5`` → ``"5 %"``, ``12.5`` → ``"12.5 %"``
    (``sep=""`` gives the compact ``"5%"`` of aligned columns)."""
    return f"{format_number(percent)}{sep}%"


def format_rate(rate: float) -> str:
    """A ratio in [0, 1] as a percentage: ``0.001`` → ``"0.1 %"``."""
    return format_percent(round(rate * 100, 6))
