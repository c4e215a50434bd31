"""The reports regenerated from the rollout state: one section per run, charts beside them.

:func:`write_reports` is what ``openfeature-canary report`` runs: plan + states → files, at any
time, by any process. ``canary_results.md`` gets a section per flag and per run (a ``reset``
starts a new one) with the evidence that decided each stage; ``canary_abort.md`` a section per
rollback with its onset, what users got and the next step; ``charts/`` the SVGs the results
link to (when pygal is installed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from openfeature_canary._format import format_duration
from openfeature_canary.events._charts import CHARTS_DIR, MISSING_NOTE, Chart, draw_run
from openfeature_canary.events._history import with_history
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
    md_table,
    next_step,
    unit_of,
    users_got,
)
from openfeature_canary.events._render import render_plan_markdown
from openfeature_canary.events._reports import (
    ABORT_FILE,
    PLAN_FILE,
    RESULTS_FILE,
    ReportWriter,
)
from openfeature_canary.events._runs import (
    Run,
    StageRun,
    entry_field,
    entry_number,
    entry_rule,
    runs_of,
)
from openfeature_canary.plan import FlagPlan, RolloutPlan
from openfeature_canary.state import LogEntry, RolloutState

__all__ = ["render_run", "write_reports"]

log = logging.getLogger("openfeature_canary.reports")

_STAGE_COLUMNS: Final = (
    "Stage",
    "Traffic",
    "Started",
    "Ended",
    "n canary / baseline",
    "P95 canary / baseline (line)",
    "5xx canary / baseline (line)",
    "Could detect",
    "Decision",
)

_OUTCOME: Final = {
    "completed": "completed",
    "rolled_back": "rolled back",
    "reset": "reset by an operator",
    "running": "still running",
    "paused": "paused",
    "pending": "pending",
}


def write_reports(
    plan: RolloutPlan, states: Iterable[RolloutState], folder: Path | str
) -> list[Path]:
    """Regenerate every report of ``plan`` from ``states`` into ``folder``: the plan, the
    results, the aborts and the charts. Returns the paths written.

    Files are replaced atomically under the folder's lock (a live writer waits), and follow
    the umask like any report. Raises :class:`~openfeature_canary.errors.ReportError` when
    one cannot be written.
    """
    writer = ReportWriter(folder)
    recorded = writer.results()  # the stages the states' logs may no longer hold
    by_key = {s.flag_key: s for s in states}
    runs = {key: runs_of(state, with_history(state, recorded)) for key, state in by_key.items()}
    charts: dict[tuple[str, int], list[Chart] | str] = {
        (key, run.index): _draw_safely(run, plan.flags.get(key))
        for key, flag_runs in runs.items()
        for run in flag_runs
    }
    files: dict[str, str] = {
        PLAN_FILE: render_plan_markdown(plan),
        RESULTS_FILE: render_results_from_runs(plan, runs, charts),
        ABORT_FILE: render_aborts_from_runs(plan, runs),
    }
    for drawn in charts.values():
        for chart in drawn if isinstance(drawn, list) else ():
            files[f"{CHARTS_DIR}/{chart.name}"] = chart.svg
    return writer.write_files(files)


def _draw_safely(run: Run, flag: FlagPlan | None) -> list[Chart] | str:
    """The run's charts, or the note the report shows instead: charts are an extra, and a
    failure to draw them must not cost the reports."""
    try:
        drawn = draw_run(run, flag)
    except Exception as exc:  # pygal's own errors are not ours to list; the markdown goes on
        log.warning("%s run %d: charts not drawn: %r", run.flag_key, run.index, exc)
        return f"Charts not drawn: {type(exc).__name__}: {exc}".replace("\n", " ")
    return MISSING_NOTE if drawn is None else drawn


def render_results_from_runs(
    plan: RolloutPlan,
    runs: Mapping[str, list[Run]],
    charts: Mapping[tuple[str, int], list[Chart] | str],
) -> str:
    """``canary_results.md``: per flag, one section per run, oldest first."""
    out = [
        "# Canary results",
        "",
        "Regenerated from the rollout state (`openfeature-canary report`). One section per run",
        "(a `reset` starts a new one); per stage the evidence that decided it: requests judged in",
        "the canary and the baseline, their P95 and 5xx share against the stage's line, and what",
        "the stage could detect (docs/decisions.md). Times are UTC.",
        "",
    ]
    for key, flag_runs in runs.items():
        out += [f"## `{key}`", ""]
        if not flag_runs:
            out += ["No run yet.", ""]
        for run in flag_runs:
            out += render_run(run, plan.flags.get(key), charts.get((key, run.index)))
    return "\n".join(out).rstrip("\n") + "\n"


def render_run(run: Run, flag: FlagPlan | None, charts: list[Chart] | str | None) -> list[str]:
    """The lines of one run's section; ``charts`` are the run's drawn charts, or the note
    saying why there are none."""
    started = fmt_time(run.started_at) if run.started_at is not None else "before the log"
    how = _OUTCOME.get(run.outcome, run.outcome)
    head = f"### Run {run.index} — started {started}, {how}"
    if run.end is not None:
        head += f" at {fmt_time(run.end.at)}"
    out = [head, ""]
    if run.start is not None:
        out.append(f"- Started by: {_who(run.start)}")
    if run.end is not None:
        out.append(f"- Ended: {_decision(run.end)}")
    if run.end is not None and run.end.action == "rollback":
        out += _rollback_lines(run)
    out.append("")
    rows = [_stage_row(s, flag) for s in run.stages]
    out += md_table(_STAGE_COLUMNS, rows) if rows else ["No stage ran."]
    out.append("")
    if isinstance(charts, str):
        out += [charts, ""]
    for chart in charts if isinstance(charts, list) else ():
        out += [f"![{md_cell(chart.title)}]({CHARTS_DIR}/{chart.name})", ""]
    return out


def _rollback_lines(run: Run) -> list[str]:
    end = run.end
    assert end is not None
    onset, exact = run.onset_or_bound()
    if onset is None:
        return [f"- Onset: {DASH} (an operator's decision); detected {fmt_time(end.at)}"]
    after = format_duration(max(0.0, end.at - onset))
    if not exact:
        return [
            f"- Onset: at or after {fmt_time(onset)}, the start of the stage whose evidence "
            "decided (no judged window showed it before)",
            f"- Detected: {fmt_time(end.at)}, at most {after} after onset",
        ]
    return [
        f"- Onset: {fmt_time(onset)} (the first judged window that showed it)",
        f"- Detected: {fmt_time(end.at)}, {after} after onset",
    ]


def _stage_row(s: StageRun, flag: FlagPlan | None) -> tuple[str, ...]:
    e = s.ended
    plan_stage = (
        flag.stage(s.stage) if flag is not None and 1 <= s.stage <= len(flag.stages) else None
    )
    p95_line = entry_number(e, "planned_p95_ms")
    err_line = entry_number(e, "planned_error_rate")
    if plan_stage is not None:
        p95_line = plan_stage.max_p95_ms if p95_line is None else p95_line
        err_line = plan_stage.max_error_rate if err_line is None else err_line
    last = s.windows[-1] if s.windows else None
    n_c = entry_number(e, "samples")
    n_b = entry_number(e, "baseline_samples")
    p95_c = entry_number(e, "observed_p95_ms")
    p95_b = entry_number(e, "baseline_p95_ms")
    err_c = entry_number(e, "observed_error_rate")
    err_b = entry_number(e, "baseline_error_rate")
    if e is None and last is not None:  # a running stage: its newest window
        n_c, n_b = float(last.n), float(last.baseline_n)
        p95_c, p95_b, err_c, err_b = (
            last.p95_ms,
            last.baseline_p95_ms,
            last.error_rate,
            last.baseline_error_rate,
        )
    percent = s.percent
    if percent is None and plan_stage is not None:
        percent = plan_stage.percent
    return (
        str(s.stage),
        fmt_percent(percent),
        fmt_time(s.started_at),
        fmt_time(s.ended_at),
        f"{_count(n_c)} / {_count(n_b)}",
        f"{fmt_ms(p95_c)} / {fmt_ms(p95_b)} ({_line(fmt_ms(p95_line))})",
        f"{fmt_rate(err_c)} / {fmt_rate(err_b)} ({_line(fmt_rate(err_line))})",
        power_text(e) or DASH,
        _decision(e) if e is not None else "running (numbers: its newest window)",
    )


def _count(value: float | None) -> str:
    return fmt_count(None if value is None else int(value))


def _line(text: str) -> str:
    return "no line" if text == DASH else f"line {text}"


def power_text(entry: LogEntry | None) -> str:
    """What a stage could detect, from its ending entry: ``5xx 5.00 %: 97 %; ...``."""
    if entry is None:
        return ""
    recorded = entry_field(entry, "power")
    if isinstance(recorded, str):  # a stage taken back from canary_results.json
        return recorded
    parts = []
    for name, what in (("error_line", "5xx"), ("p95_line", "over P95"), ("p99_line", "over P99")):
        power = entry_number(entry, f"power_{name}")
        if power is None:
            continue
        detect = entry_number(entry, f"detect_{name}")
        target = f"{what} {fmt_rate(detect)}" if detect is not None else what
        parts.append(f"{target}: {power * 100:.3g} % power")
    power_3x = entry_number(entry, "power_error_line_3x")
    if power_3x is not None:
        parts.append(f"5xx 3x line: {power_3x * 100:.3g} % power")
    return "; ".join(parts)


def _decision(e: LogEntry) -> str:
    """``**rollback** — error_rate_breach (gate:error_ratio, 2.10 vs 1.25) by pid 42``."""
    text = f"**{e.action}**"
    if e.reason:
        text += f" — {e.reason}"
    note = e.numbers.get("note")
    if note:  # an operator's own words
        text += f": {note}"
    details = []
    rule = entry_rule(e)
    if rule is not None:
        details.append(rule)
    value, threshold = entry_number(e, "value"), entry_number(e, "threshold")
    if value is not None or threshold is not None:
        unit = _unit(e)
        details.append(f"{fmt_in_unit(unit, value)} vs {fmt_in_unit(unit, threshold)}")
    n = entry_number(e, "n")
    if n is not None:
        details.append(f"n={fmt_count(int(n))}")
    if details:
        text += f" ({', '.join(details)})"
    return text + _by(e)


def _unit(e: LogEntry) -> str:
    """The unit of an entry's value and threshold: its signal's; a gate test without one
    judged a share or a ratio (no unit); else guessed from the reason."""
    signal = entry_field(e, "signal")
    if signal:
        return unit_of(str(signal), "")
    if entry_field(e, "test") is not None:
        return ""
    return unit_of(None, f"{e.reason} {entry_field(e, 'rule') or ''}")


def _by(e: LogEntry) -> str:
    by = entry_field(e, "by")
    return f" by {by}" if by is not None else ""


def _who(e: LogEntry) -> str:
    by = entry_field(e, "by")
    return str(by) if by is not None else (e.reason or DASH)


# ---------------------------------------------------------------------- canary_abort.md


def render_aborts_from_runs(plan: RolloutPlan, runs: Mapping[str, list[Run]]) -> str:
    """``canary_abort.md``: a section per rolled-back run, oldest first."""
    rolled = [r for flag_runs in runs.values() for r in flag_runs if r.outcome == "rolled_back"]
    rolled.sort(key=lambda r: r.ended_at or 0.0)
    out = ["# Canary aborts", ""]
    if not rolled:
        out += ["No rollback in the rollout state.", ""]
    for run in rolled:
        out += _abort_section(run, plan.source)
    return "\n".join(out).rstrip("\n") + "\n"


def _abort_section(run: Run, plan_path: str) -> list[str]:
    end = run.end
    assert end is not None
    stage = run.stages[-1] if run.stages else None
    pct = stage.percent if stage is not None else entry_number(end, "from_pct")
    from_stage = stage.stage if stage is not None else entry_number(end, "from_stage")
    unit = _unit(end)
    onset, exact = run.onset_or_bound()
    note = end.numbers.get("note")
    said = f" ({note})" if note else ""  # an operator's own words
    rows = [
        ("Time", fmt_time(end.at)),
        ("Flag", f"`{run.flag_key}`"),
        ("From", f"{fmt_percent(pct)} (stage {fmt_number(from_stage)}), run {run.index}"),
        ("Reason", (f"`{end.reason}`" if end.reason else DASH) + said),
        ("Rule", entry_rule(end) or DASH),
        (
            "Value vs threshold",
            f"{fmt_in_unit(unit, entry_number(end, 'value'))} vs "
            f"{fmt_in_unit(unit, entry_number(end, 'threshold'))}",
        ),
        ("Decided by", str(entry_field(end, "by") or DASH)),
        ("Onset", fmt_time(onset) if exact or onset is None else f"≥ {fmt_time(onset)}"),
        (
            "Detected after",
            DASH
            if onset is None
            else ("" if exact else "≤ ") + format_duration(max(0.0, end.at - onset)),
        ),
        (
            "What users got",
            users_got(entry_number(end, "samples"), entry_number(end, "observed_error_rate"), pct),
        ),
        ("Next step", next_step(run.flag_key, plan_path)),
    ]
    out = [
        f"## {fmt_time(end.at)} — `{run.flag_key}` rolled back from {fmt_percent(pct)}: "
        f"{end.reason or DASH}{said}",
        "",
    ]
    out += md_table(("Field", "Value"), rows)
    return [*out, ""]
