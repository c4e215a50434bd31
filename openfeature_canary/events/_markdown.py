"""Markdown for the reports: how a value reads in a table, and one escaping of a table cell.

Shared by ``canary_results.md`` / ``canary_abort.md`` (``_reports.py``) and ``canary_plan.md``
(``_render.py``); numbers go through :mod:`openfeature_canary._format` like everywhere else.
It also holds what both the live and the regenerated reports say the same way: a value in
its signal's unit (:func:`fmt_in_unit`), what users got during a stage (:func:`users_got`) and
the next step after a rollback (:func:`next_step`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from openfeature_canary._format import format_number, format_percent, iso_utc
from openfeature_canary.plan._signals import MS_SIGNALS, RATE_SIGNALS
from openfeature_canary.state import Number

__all__ = [
    "DASH",
    "fmt_count",
    "fmt_in_unit",
    "fmt_ms",
    "fmt_number",
    "fmt_percent",
    "fmt_rate",
    "fmt_time",
    "md_cell",
    "md_table",
    "next_step",
    "unit_of",
    "users_got",
]

#: An en dash: how the reports show "no value".
DASH: Final = "\u2013"


def fmt_time(at: float | None) -> str:
    """ISO-8601 UTC to the second: ``2025-01-01T00:10:00Z``; an en dash for ``None``."""
    if at is None:
        return DASH
    return iso_utc(at)


def fmt_ms(value: float | None) -> str:
    """Milliseconds with one decimal: ``131.2 ms``; an en dash for ``None``."""
    return DASH if value is None or not math.isfinite(value) else f"{value:.1f} ms"


def fmt_rate(value: float | None) -> str:
    """A ratio as a percentage, two decimals: ``0.001`` → ``0.10 %``; an en dash for ``None``."""
    return DASH if value is None or not math.isfinite(value) else f"{value * 100:.2f} %"


def fmt_percent(value: float | None) -> str:
    """A traffic share already in percent: ``25`` → ``25 %``, ``2.5`` → ``2.5 %``."""
    return DASH if value is None else format_percent(value)


def fmt_count(value: int | None) -> str:
    """A count with thousands separators: ``12034`` → ``12,034``; an en dash for ``None``."""
    return DASH if value is None else f"{value:,}"


def fmt_number(value: Number) -> str:
    """A decision-log number: four significant digits; text as is; an en dash for ``None``."""
    if value is None:
        return DASH
    if isinstance(value, str):
        return value
    return format_number(value, significant=4)


def md_cell(text: str) -> str:
    """Text safe inside a markdown table cell: ``\\`` and ``|`` escaped, one line."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A markdown table's lines: the header, a ``---`` rule, one escaped row per item."""
    head = list(header)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return out


def unit_of(signal: str | None, name: str) -> str:
    """``ms``, ``rate`` or ``""``: the unit of a value about ``signal`` (e.g.
    ``latency_p95_ms``), guessed from ``name`` (a trigger, a reason, a rule) without one."""
    if signal:
        if signal in MS_SIGNALS:
            return "ms"
        return "rate" if signal in RATE_SIGNALS else ""
    low = name.lower()
    if any(word in low for word in ("p50", "p95", "p99", "latency", "lag")):
        return "ms"
    return "rate" if any(word in low for word in ("rate", "acceptance", "5xx")) else ""


def fmt_in_unit(unit: str, value: float | None) -> str:
    """``value`` in ``unit`` (see :func:`unit_of`): ``162.0 ms``, ``1.20 %`` or a number."""
    if unit == "ms":
        return fmt_ms(value)
    if unit == "rate":
        return fmt_rate(value)
    return fmt_number(value)


def users_got(samples: float | None, error_rate: float | None, percent: float | None) -> str:
    """What users got during a stage: its canary requests and how many of them failed."""
    if samples is None:
        return DASH
    got = f"{fmt_count(int(samples))} canary requests"
    if percent is not None:
        got += f" ({fmt_percent(percent)} of traffic)"
    if error_rate == 0:
        got += ", none of them 5xx"
    elif error_rate is not None:
        failed = fmt_count(round(samples * error_rate))
        got += f", about {failed} of them 5xx ({fmt_rate(error_rate)})"
    return got


def next_step(flag_key: str, plan_path: str | None = None) -> str:
    """The commands after a rollback: the flag stays at 0 % until someone resets it."""
    plan = f" --plan {plan_path}" if plan_path else ""
    return (
        f"the flag serves 0 % until reset; once the cause is fixed: "
        f"`openfeature-canary{plan} reset {flag_key}` (back to pending), then "
        f"`openfeature-canary{plan} start {flag_key}` (a new run from stage 1)"
    )
