"""The records the reports are made of, and their markdown: a stage's results row
(:class:`StageResult`, ``canary_results.md``) and a rollback (:class:`AbortRecord`, a section
of ``canary_abort.md``). Pure functions of the records; :mod:`._reports` writes the files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from openfeature_canary._format import format_duration
from openfeature_canary.events._markdown import (
    DASH,
    fmt_count,
    fmt_in_unit,
    fmt_ms,
    fmt_number,
    fmt_percent,
    fmt_rate,
    fmt_time,
    md_cell,
    next_step,
    unit_of,
    users_got,
)
from openfeature_canary.events._runs import entry_field, entry_rule
from openfeature_canary.state import LogEntry

__all__ = [
    "DRY_RUN_SUFFIX",
    "RESULTS_DATA_FILE",
    "AbortRecord",
    "StageResult",
    "render_abort",
    "render_results",
    "split_runs",
]

RESULTS_DATA_FILE: Final = "canary_results.json"

_RESULTS_COLUMNS: Final = (
    ("Stage", "---:"),
    ("Traffic", "---:"),
    ("Started", "---"),
    ("Ended", "---"),
    ("n canary / baseline", "---:"),
    ("P95 canary / baseline (line)", "---:"),
    ("5xx canary / baseline (line)", "---:"),
    ("Could detect", "---"),
    ("Decision", "---"),
)

#: A stage's decisions after which the next recorded stage belongs to a new run.
_ENDS_RUN: Final = frozenset({"rollback", "complete"})

#: How the reason of a dry-run flag's row ends (policy/_announce.py).
DRY_RUN_SUFFIX: Final = "(dry run)"


@dataclass(frozen=True)
class StageResult:
    """What one completed stage showed and what was decided, one row of ``canary_results.md``.

    Times are seconds since the epoch (the controller's clock); ``planned_*`` are the stage's
    lines and ``observed_*`` the canary's values over the whole stage (``None`` = not judged
    or no data). ``power`` says what the stage's evidence would have caught, e.g.
    ``5xx 5 %: 100 %; 5xx 3x line: 97 %``. ``decision`` is ``advance``, ``complete``,
    ``rollback`` or ``pause``; ``reason`` says why. ``baseline_*`` are the baseline's numbers
    over the stage when the caller has them (the decision log's stage-ending entries carry
    them); the windows counts are kept for the JSON sidecar's readers, the report no longer
    shows them (a stage is decided on its accumulated evidence, not on windows).
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
    baseline_samples: int | None = None
    baseline_p95_ms: float | None = None
    baseline_error_rate: float | None = None

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
            baseline_samples=_opt_int(data.get("baseline_samples")),
            baseline_p95_ms=_opt_float(data.get("baseline_p95_ms")),
            baseline_error_rate=_opt_float(data.get("baseline_error_rate")),
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


def render_results(results: list[StageResult]) -> str:
    """``canary_results.md`` for these stages: per flag (first-seen order) a section per run."""
    by_flag: dict[str, list[StageResult]] = {}
    for r in results:
        by_flag.setdefault(r.flag_key, []).append(r)
    out = [
        "# Canary results",
        "",
        "One row per completed stage, one section per run (a rollback, a completion or a reset",
        f"ends one); rendered from `{RESULTS_DATA_FILE}`. Values are over the whole stage, the",
        "canary's against the baseline's and the stage's line; *could detect* is the stage's",
        "power against the stated regressions (docs/decisions.md); times are UTC.",
        "`openfeature-canary report` regenerates the reports, with charts, from the state.",
        "",
    ]
    for flag_key, rows in by_flag.items():
        out += [f"## `{flag_key}`", ""]
        for index, run in enumerate(split_runs(rows), start=1):
            out += _run_table(index, run)
    return "\n".join(out)


def split_runs(rows: list[StageResult]) -> list[list[StageResult]]:
    """A flag's rows grouped by run, in recording order: a run ends with a rollback or a
    completion, and a stage that does not go forward (stage 1 again after a reset) starts
    a new one; a stage recorded again after a pause, or after a dry-run flag's would-be
    rollback (which only restarts the stage's observation), continues its run."""
    runs: list[list[StageResult]] = []
    for r in rows:
        prev = runs[-1][-1] if runs else None
        stays = prev is not None and (
            prev.decision == "pause" or prev.reason.endswith(DRY_RUN_SUFFIX)
        )
        new = (
            prev is None
            or (prev.decision in _ENDS_RUN and not stays)
            or r.stage < prev.stage
            or (r.stage == prev.stage and not stays)
        )
        if new:
            runs.append([r])
        else:
            runs[-1].append(r)
    return runs


def _run_table(index: int, rows: list[StageResult]) -> list[str]:
    last = rows[-1]
    how = {"rollback": "rolled back", "complete": "completed"}.get(last.decision)
    ended = f", {how} at {fmt_time(last.ended_at)}" if how else ""
    out = [f"### Run {index} — started {fmt_time(rows[0].started_at)}{ended}", ""]
    out.append("| " + " | ".join(name for name, _ in _RESULTS_COLUMNS) + " |")
    out.append("|" + "|".join(align for _, align in _RESULTS_COLUMNS) + "|")
    for r in rows:
        cells = (
            str(r.stage),
            fmt_percent(r.percent),
            fmt_time(r.started_at),
            fmt_time(r.ended_at),
            f"{fmt_count(r.samples)} / {fmt_count(r.baseline_samples)}",
            f"{fmt_ms(r.observed_p95_ms)} / {fmt_ms(r.baseline_p95_ms)}"
            f" ({_line_of(fmt_ms(r.planned_p95_ms))})",
            f"{fmt_rate(r.observed_error_rate)} / {fmt_rate(r.baseline_error_rate)}"
            f" ({_line_of(fmt_rate(r.planned_error_rate))})",
            r.power or DASH,
            f"**{r.decision}**" + (f" — {r.reason}" if r.reason else ""),
        )
        out.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    out.append("")
    return out


def _line_of(text: str) -> str:
    return "no line" if text == DASH else f"line {text}"


def render_abort(record: AbortRecord) -> str:
    """One ``canary_abort.md`` section for ``record``."""
    unit = unit_of(record.signal, record.trigger)
    when = fmt_time(record.at)
    value = fmt_in_unit(unit, record.value)
    threshold = fmt_in_unit(unit, record.threshold)
    # The rollback's own entry (the newest) carries the stage's evidence and who decided.
    last = record.last_decisions[-1] if record.last_decisions else None
    entry = last if last is not None and last.action == "rollback" else None
    said = f" ({record.note})" if record.note else ""
    judged = record.value is not None or record.threshold is not None
    numbers = f", {value} vs {threshold}" if judged else ""
    rule = record.rule or (entry_rule(entry) if entry is not None else None)
    found = entry_field(entry, "by") if entry is not None else None
    by = record.by or (None if found is None else str(found))
    out = [
        # The heading already says what broke: the reason, and its value against the threshold.
        f"## {when} — `{record.flag_key}` rolled back from {fmt_percent(record.from_pct)}"
        f" (stage {record.from_stage}): {record.trigger}{said}{numbers}",
        "",
        "| Field | Value |",
        "|---|---|",
        f"| Time | {when} |",
        f"| Flag | `{md_cell(record.flag_key)}` |",
        f"| From | {fmt_percent(record.from_pct)} (stage {record.from_stage}) |",
        f"| Reason | `{md_cell(record.trigger)}`{md_cell(said)} |",
        f"| Value vs threshold | {value} vs {threshold} |",
        f"| Window | {DASH if record.window_s is None else format_duration(record.window_s)} |",
        f"| Samples (n) | {fmt_count(record.n)} |",
        f"| Rule | {f'`{md_cell(rule)}`' if rule else DASH} |",
        f"| Decided by | {md_cell(by) if by else DASH} |",
        f"| What users got | {md_cell(_users_got(entry, record.from_pct))} |",
        f"| Next step | {md_cell(next_step(record.flag_key))} |",
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


def _users_got(entry: LogEntry | None, percent: float) -> str:
    if entry is None:
        return DASH
    samples, rate = entry.numbers.get("samples"), entry.numbers.get("observed_error_rate")
    return users_got(
        float(samples) if isinstance(samples, int | float) else None,
        float(rate) if isinstance(rate, int | float) else None,
        percent,
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
