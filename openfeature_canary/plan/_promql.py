"""PromQL templates of the plan's ``[signals]`` table: names, escaping, placeholders, validation.

Pure: no I/O. A *template* is PromQL with up to three placeholders, substituted per read:

* ``{flag}`` — the flag key, inserted as the content of the double-quoted string it stands in
  (escaped for PromQL, and for RE2 too inside a ``=~`` / ``!~`` matcher), so a key holding a
  quote can never change the query's meaning;
* ``{variant}`` — ``on`` (canary) or ``off`` (baseline), inserted the same way;
* ``{window}`` — the window as a PromQL duration (``60s``, ``1500ms``).

Every other brace is PromQL's own (``metric{label="x"}``). :func:`validate_queries` checks a
plan's ``[signals]`` table of such templates; the Prometheus source has the default ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from openfeature_canary.errors import PlanError
from openfeature_canary.plan._signals import (
    BASELINE,
    BASELINE_PREFIX,
    CANARY,
    FLAG_SIGNALS,
    KNOWN_SIGNALS,
    split_signal,
)

__all__ = [
    "BASELINE",
    "CANARY",
    "Template",
    "compile_template",
    "promql_duration",
    "promql_string",
    "split_signal",
    "validate_queries",
]

_PLACEHOLDERS: Final = ("flag", "variant", "window")
_PLACEHOLDER: Final = re.compile(r"\{\s*([A-Za-z_]\w*)\s*\}")
_RE2_SPECIAL: Final = frozenset("\\.+*?()|[]{}^$")


def promql_string(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal (Go escaping).

    >>> print(promql_string('a"b\\\\c'))
    "a\\"b\\\\c"
    """
    return f'"{_escape(value)}"'


def _escape(value: str) -> str:
    out: list[str] = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def promql_duration(seconds: float) -> str:
    """A window in seconds as a PromQL duration, to the millisecond (``60s``, ``1500ms``).

    >>> promql_duration(60), promql_duration(1.5)
    ('60s', '1500ms')
    """
    ms = round(seconds * 1000)
    if ms < 1:
        raise ValueError(f"a PromQL window must be at least 1 ms, got {seconds} s")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


# ------------------------------------------------------------------------------ templates


@dataclass(frozen=True)
class Template:
    """A parsed query template: literal PromQL and placeholders, in order.

    ``parts`` holds strings (literal PromQL) and ``(placeholder, in_regex)`` pairs.
    """

    key: str
    text: str
    parts: tuple[str | tuple[str, bool], ...]
    names: frozenset[str] = field(default_factory=frozenset)

    def render(self, *, flag: str = "", variant: str = "", window: str = "") -> str:
        """The PromQL for one read: placeholders substituted, flag and variant escaped."""
        values = {"flag": flag, "variant": variant, "window": window}
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, in_regex = part
            value = values[name]
            if name != "window":
                if in_regex:
                    value = "".join("\\" + c if c in _RE2_SPECIAL else c for c in value)
                value = _escape(value)
            out.append(value)
        return "".join(out)


def _fail(key: str, message: str) -> PlanError:
    return PlanError(message, path=f"signals.{key}")


def _scan(key: str, text: str) -> tuple[str | tuple[str, bool], ...]:
    """Split ``text`` into literals and placeholders, noting where each placeholder stands:
    ``{flag}`` and ``{variant}`` must sit inside a double-quoted string (the only place where
    escaping makes a value safe); comments (``#`` to the end of the line) are literal text."""
    parts: list[str | tuple[str, bool]] = []
    i, start, quote, regex = 0, 0, "", False
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote != "`":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
            regex = text[:i].rstrip().endswith(("=~", "!~"))
        elif ch == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        match = _PLACEHOLDER.match(text, i) if ch == "{" else None
        if match is None or (quote and quote != '"' and match.group(1) not in _PLACEHOLDERS):
            i += 1
            continue
        name = match.group(1)
        if name not in _PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in _PLACEHOLDERS)
            raise _fail(key, f"unknown placeholder {{{name}}} (known: {known})")
        if name != "window" and quote != '"':
            raise _fail(
                key,
                f"{{{name}}} must stand inside a double-quoted PromQL string, "
                f'e.g. label="{{{name}}}" (it is escaped there)',
            )
        parts.extend((text[start:i], (name, regex and quote == '"')))
        i = start = match.end()
    if quote:
        raise _fail(key, f"unterminated {quote} string")
    parts.append(text[start:])
    return tuple(p for p in parts if p != "")


def compile_template(key: str, text: object) -> Template:
    """Parse ``text`` as the template of signal ``key`` (``PlanError`` naming the key)."""
    if not isinstance(text, str) or not text.strip():
        raise _fail(key, "must be a non-empty PromQL string")
    parts = _scan(key, text)
    names = frozenset(p[0] for p in parts if not isinstance(p, str))
    return Template(key, text, parts, names)


def _required(key: str, table: Mapping[str, object]) -> tuple[set[str], set[str]]:
    """(required, allowed) placeholders of ``key``'s template."""
    variant, base = split_signal(key)
    if base in FLAG_SIGNALS:
        # Process-wide signals have no cohort; the mismatch counter is per flag.
        required = {"window", "flag"} if base == "ledger_mismatches" else {"window"}
        return required, {"window", "flag"}
    required = {"window", "flag"}
    # One template serves both cohorts unless the baseline has its own.
    if variant == CANARY and f"{BASELINE_PREFIX}{base}" not in table:
        required.add("variant")
    return required, {"window", "flag", "variant"}


def validate_queries(table: Mapping[str, object]) -> Mapping[str, str]:
    """Check a ``[signals]`` table (signal name -> PromQL template) and return it, read-only.

    Keys are built-in signal names (``latency_p95_ms``, ``error_rate``, ``requests``,
    ``ledger_mismatches``, ``telemetry_acceptance``, ``event_loop_lag_ms`` …, and the
    ``baseline_`` twins). A cohort signal's template serves both cohorts through
    ``{variant}``; a ``baseline_<name>`` key gives the baseline cohort its own (then
    ``<name>`` may leave ``{variant}`` out). Every template needs ``{window}``; cohort signals
    and ``ledger_mismatches`` need ``{flag}``; ``{variant}`` has no meaning for the
    process-wide ``telemetry_acceptance`` and ``event_loop_lag_ms``. Raises ``PlanError`` (a
    ``ValueError``) naming the key: ``signals.error_rate: missing placeholder {window}``.

    >>> validate_queries({"requests": 'sum(increase(hits{f="{flag}",v="{variant}"}[{window}]))'})
    mappingproxy({'requests': 'sum(increase(hits{f="{flag}",v="{variant}"}[{window}]))'})
    """
    if not isinstance(table, Mapping):
        kind = type(table).__name__
        raise PlanError(f"must be a table of signal = PromQL, got {kind}", path="signals")
    out: dict[str, str] = {}
    for key, text in table.items():
        if not isinstance(key, str) or key not in KNOWN_SIGNALS:
            raise _fail(str(key), f"unknown signal (known: {', '.join(sorted(KNOWN_SIGNALS))})")
        template = compile_template(key, text)
        required, allowed = _required(key, table)
        missing, extra = sorted(required - template.names), sorted(template.names - allowed)
        if missing:
            raise _fail(key, f"missing placeholder {{{missing[0]}}}")
        if extra:
            raise _fail(key, f"placeholder {{{extra[0]}}} has no meaning for a process-wide signal")
        out[key] = template.text
    return MappingProxyType(out)
