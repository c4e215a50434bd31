"""The markdown reports of a rollout, for people: results per stage and one section per abort.

Files in the plan's reports folder (``[reports] dir``)::

    canary_plan.md        the plan, rendered before the rollout starts (``write_plan``)
    canary_results.md     one table per flag, one row per completed stage (``record_stage``)
    canary_results.json   the data behind canary_results.md, so that it survives restarts
    canary_abort.md       appended on every rollback (``append_abort``)

``canary_results.md`` is re-rendered from its JSON sidecar on every change and both are
replaced atomically (temp file, ``fsync``, ``os.replace``), so a reader never sees half a
report. ``canary_abort.md`` only ever grows. Writers hold ``fcntl.flock`` on a lock file in
the folder, so two processes cannot interleave their updates.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary._forksafe import hold_locks_across_fork
from openfeature_canary._format import format_duration
from openfeature_canary.errors import ReportError
from openfeature_canary.events._markdown import (
    DASH,
    fmt_count,
    fmt_ms,
    fmt_number,
    fmt_percent,
    fmt_rate,
    fmt_time,
    md_cell,
)
from openfeature_canary.plan._signals import MS_SIGNALS, RATE_SIGNALS
from openfeature_canary.state import LogEntry

__all__ = [
    "ABORT_FILE",
    "PLAN_FILE",
    "RESULTS_DATA_FILE",
    "RESULTS_FILE",
    "AbortRecord",
    "ReportError",
    "ReportSink",
    "ReportWriter",
    "StageResult",
    "render_abort",
    "render_results",
]

log = logging.getLogger("openfeature_canary.reports")

PLAN_FILE: Final = "canary_plan.md"
RESULTS_FILE: Final = "canary_results.md"
RESULTS_DATA_FILE: Final = "canary_results.json"
ABORT_FILE: Final = "canary_abort.md"
_LOCK_FILE: Final = ".canary_reports.lock"
_FORMAT: Final = 1

_RESULTS_COLUMNS: Final = (
    ("Stage", "---:"),
    ("Traffic", "---:"),
    ("Started", "---"),
    ("Ended", "---"),
    ("Planned P95", "---:"),
    ("Observed P95", "---:"),
    ("Planned 5xx", "---:"),
    ("Observed 5xx", "---:"),
    ("Samples", "---:"),
    ("Windows pass/fail/inconclusive", ":---:"),
    ("Would have caught", "---"),
    ("Decision", "---"),
)


@dataclass(frozen=True)
class StageResult:
    """What one completed stage showed and what was decided, one row of ``canary_results.md``.

    Times are seconds since the epoch (the controller's clock); ``planned_*`` are the stage's
    lines and ``observed_*`` the canary's values over the whole stage (``None`` = not judged
    or no data). ``power`` says what the stage's evidence would have caught, e.g.
    ``5xx 5 %: 100 %; 5xx 3x line: 97 %``. ``decision`` is ``advance``, ``complete``,
    ``rollback`` or ``pause``; ``reason`` says why.
    """

    flag_key: str
    stage: int
    percent: float
    started_at: float
    ended_at: float
    planned_p95_ms: float | None
    observed_p95_ms: float | None
    planned_error_rate: float | None
    observed_error_rate: float | None
    samples: int
    windows_passed: int
    windows_failed: int
    windows_inconclusive: int
    decision: str
    reason: str
    power: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON sidecar."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageResult:
        """Inverse of :meth:`to_dict`; ``KeyError``/``TypeError``/``ValueError`` when malformed."""
        return cls(
            flag_key=str(data["flag_key"]),
            stage=int(data["stage"]),
            percent=float(data["percent"]),
            started_at=float(data["started_at"]),
            ended_at=float(data["ended_at"]),
            planned_p95_ms=_opt_float(data.get("planned_p95_ms")),
            observed_p95_ms=_opt_float(data.get("observed_p95_ms")),
            planned_error_rate=_opt_float(data.get("planned_error_rate")),
            observed_error_rate=_opt_float(data.get("observed_error_rate")),
            samples=int(data["samples"]),
            windows_passed=int(data["windows_passed"]),
            windows_failed=int(data["windows_failed"]),
            windows_inconclusive=int(data["windows_inconclusive"]),
            decision=str(data["decision"]),
            reason=str(data.get("reason", "")),
            power=str(data.get("power", "")),
        )


@dataclass(frozen=True)
class AbortRecord:
    """One rollback, a section of ``canary_abort.md``.

    ``trigger`` is the trigger's name (``p95_breach``) or the operator's reason; ``value``,
    ``threshold``, ``window_s`` and ``n`` are the numbers that fired it (``None`` when not
    applicable, e.g. an operator rollback). ``signal`` (optional) picks the unit of value and
    threshold; without it the unit is guessed from the trigger's name. ``last_decisions`` is
    the decision log up to the rollback, newest last.
    """

    flag_key: str
    at: float
    from_pct: float
    from_stage: int
    trigger: str
    value: float | None
    threshold: float | None
    window_s: float | None
    n: int | None
    last_decisions: tuple[LogEntry, ...] = ()
    signal: str | None = None
    #: The rule that acted (``gate:error_ratio``, ``trigger:p95_breach``, ``command:rollback``).
    rule: str = ""
    #: Who decided: a process id, or ``operator:<name>``.
    by: str = ""
    #: An operator's own words, when the rollback was an operator's.
    note: str = ""


class ReportSink(Protocol):
    """Where stage results and aborts are written (:class:`ReportWriter` is the markdown one)."""

    def record_stage(self, result: StageResult) -> None: ...

    def append_abort(self, record: AbortRecord) -> None: ...


class ReportWriter:
    """Writes the reports of a rollout into one folder (created on first write).

    Use one per controller process::

        reports = ReportWriter(plan.reports.dir)
        reports.record_stage(StageResult(...))   # re-renders canary_results.md
        reports.append_abort(AbortRecord(...))   # appends a section to canary_abort.md

    Raises :class:`ReportError` when a file cannot be written.
    """

    def __init__(self, dir: Path | str) -> None:
        self.dir = Path(dir)
        self._thread_lock = threading.Lock()
        # A fork must not happen mid-write: the child would keep the flock held.
        hold_locks_across_fork(self, "_thread_lock")

    def __repr__(self) -> str:
        return f"ReportWriter({str(self.dir)!r})"

    @property
    def plan_path(self) -> Path:
        """``canary_plan.md``."""
        return self.dir / PLAN_FILE

    @property
    def results_path(self) -> Path:
        """``canary_results.md``."""
        return self.dir / RESULTS_FILE

    @property
    def results_data_path(self) -> Path:
        """``canary_results.json``, the data ``canary_results.md`` is rendered from."""
        return self.dir / RESULTS_DATA_FILE

    @property
    def abort_path(self) -> Path:
        """``canary_abort.md``."""
        return self.dir / ABORT_FILE

    def write_plan(self, markdown: str) -> None:
        """Replace ``canary_plan.md`` atomically with ``markdown``."""
        with self._locked():
            self._atomic_write(self.plan_path, markdown)

    def results(self) -> tuple[StageResult, ...]:
        """Every recorded stage, in recording order."""
        with self._locked():
            return tuple(self._load_results())

    def record_stage(self, result: StageResult) -> None:
        """Add a completed stage and re-render ``canary_results.md``.

        Recording the same flag, stage and start time again replaces the row, so a controller
        that retries after a crash does not duplicate it.
        """
        with self._locked():
            rows = [
                r
                for r in self._load_results()
                if (r.flag_key, r.stage, r.started_at)
                != (result.flag_key, result.stage, result.started_at)
            ]
            rows.append(result)
            data = {"format": _FORMAT, "stages": [r.to_dict() for r in rows]}
            self._atomic_write(
                self.results_data_path, json.dumps(data, indent=1, allow_nan=False) + "\n"
            )
            self._atomic_write(self.results_path, render_results(rows))

    def append_abort(self, record: AbortRecord) -> None:
        """Append a section for ``record`` to ``canary_abort.md`` (created with a title)."""
        with self._locked():
            section = render_abort(record)
            path = self.abort_path
            try:
                new = not path.exists() or path.stat().st_size == 0
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(("# Canary aborts\n\n" if new else "\n") + section)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise ReportError(f"{path}: cannot append: {exc.strerror or exc}") from exc

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._thread_lock, open(self.dir / _LOCK_FILE, "a+b") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                yield
        except OSError as exc:
            raise ReportError(f"{self.dir}: {exc.strerror or exc}") from exc

    def _load_results(self) -> list[StageResult]:
        path = self.results_data_path
        try:
            raw = path.read_text("utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(raw)
            if data.get("format") != _FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}")
            return [StageResult.from_dict(r) for r in data["stages"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Keep the reports going, and keep the unreadable data for a person to look at.
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("%s is unreadable (%s); moved to %s, starting afresh", path, exc, aside)
            return []

    def _atomic_write(self, path: Path, text: str) -> None:
        try:
            atomic_write_text(path, text)  # reports follow the umask, like any file a tool writes
        except OSError as exc:
            raise ReportError(f"{path}: cannot write: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------- rendering


def render_results(results: list[StageResult]) -> str:
    """``canary_results.md`` for these stages: a table per flag (first-seen order)."""
    by_flag: dict[str, list[StageResult]] = {}
    for r in results:
        by_flag.setdefault(r.flag_key, []).append(r)
    out = [
        "# Canary results",
        "",
        f"One row per completed stage; rendered from `{RESULTS_DATA_FILE}`. Observed values are",
        "the canary's over the whole stage; *would have caught* is the stage's power against the",
        "stated regressions (docs/decisions.md); times are UTC.",
        "",
    ]
    for flag_key, rows in by_flag.items():
        out += [f"## `{flag_key}`", ""]
        out.append("| " + " | ".join(name for name, _ in _RESULTS_COLUMNS) + " |")
        out.append("|" + "|".join(align for _, align in _RESULTS_COLUMNS) + "|")
        for r in rows:
            cells = (
                str(r.stage),
                fmt_percent(r.percent),
                fmt_time(r.started_at),
                fmt_time(r.ended_at),
                fmt_ms(r.planned_p95_ms),
                fmt_ms(r.observed_p95_ms),
                fmt_rate(r.planned_error_rate),
                fmt_rate(r.observed_error_rate),
                fmt_count(r.samples),
                f"{r.windows_passed} / {r.windows_failed} / {r.windows_inconclusive}",
                r.power or DASH,
                f"**{r.decision}**" + (f" — {r.reason}" if r.reason else ""),
            )
            out.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def render_abort(record: AbortRecord) -> str:
    """One ``canary_abort.md`` section for ``record``."""
    unit = _unit_of(record.signal, record.trigger)
    when = fmt_time(record.at)
    value = _fmt_in(unit, record.value)
    threshold = _fmt_in(unit, record.threshold)
    said = f" ({record.note})" if record.note else ""
    judged = record.value is not None or record.threshold is not None
    numbers = f", {value} vs {threshold}" if judged else ""
    out = [
        f"## {when} — `{record.flag_key}` rolled back from {fmt_percent(record.from_pct)}"
        f" (stage {record.from_stage}): {record.trigger}{said}{numbers}",
        "",
        "| Field | Value |",
        "|---|---|",
        f"| Time | {when} |",
        f"| Flag | `{md_cell(record.flag_key)}` |",
        f"| From | {fmt_percent(record.from_pct)} (stage {record.from_stage}) |",
        f"| Reason | `{md_cell(record.trigger)}`{md_cell(said)} |",
        f"| Rule | {f'`{md_cell(record.rule)}`' if record.rule else DASH} |",
        f"| Decided by | {md_cell(record.by) if record.by else DASH} |",
        f"| Value vs threshold | {value} vs {threshold} |",
        f"| Window | {DASH if record.window_s is None else format_duration(record.window_s)} |",
        f"| Samples (n) | {fmt_count(record.n)} |",
        "",
    ]
    if record.last_decisions:
        out += [
            "Last decisions (newest last):",
            "",
            "| Time | Action | Reason | Numbers |",
            "|---|---|---|---|",
        ]
        for e in record.last_decisions:
            numbers = ", ".join(f"{k}={fmt_number(v)}" for k, v in e.numbers.items())
            cells = (fmt_time(e.at), e.action, e.reason or DASH, numbers or DASH)
            out.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _unit_of(signal: str | None, trigger: str) -> str:
    if signal is not None:
        if signal in MS_SIGNALS:
            return "ms"
        return "rate" if signal in RATE_SIGNALS else ""
    name = trigger.lower()
    if any(word in name for word in ("p50", "p95", "p99", "latency", "lag")):
        return "ms"
    return "rate" if any(word in name for word in ("rate", "acceptance")) else ""


def _fmt_in(unit: str, value: float | None) -> str:
    if unit == "ms":
        return fmt_ms(value)
    if unit == "rate":
        return fmt_rate(value)
    return fmt_number(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
