"""Render a rollout plan as a readable markdown document (``canary_plan.md``).

Used by ``openfeature-canary plan render`` and by the reports: both call
:func:`render_plan_markdown`, a pure function of the plan (no I/O, no clock), so the same
plan always renders to the same bytes. URLs are shown without their secrets: credentials and
a query string in the telemetry URL (or the store URL) become ``***``.

>>> from openfeature_canary import load_plan                    # doctest: +SKIP
>>> print(render_plan_markdown(load_plan("canary_plan.toml")))  # doctest: +SKIP
# Canary rollout plan
...
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from openfeature_canary._format import (
    format_duration,
    format_number,
    format_percent,
    format_rate,
    format_span,
)
from openfeature_canary.events._ingest import INGEST_PATH, IngestError, ingest_url, redact_url
from openfeature_canary.events._markdown import md_table
from openfeature_canary.plan import FlagPlan, RolloutPlan, Stage

__all__ = ["phase_of", "render_plan_markdown"]

_DASH: Final = "\u2013"  # an en dash, as in spec §2
_BASELINE_ROW: Final = ("0", "0 %", _DASH, "baseline", "all triggers quiet on the baseline")


def phase_of(plan: RolloutPlan, key: str) -> int:
    """The flag's phase: 1 without ``after``, else one more than the flag it follows."""
    phase, cur = 1, plan.flags[key].after
    # The plan validator rejects cycles, so this walk ends; the bound guards hand-built plans.
    while cur is not None and phase <= len(plan.flags):
        phase += 1
        cur = plan.flags[cur].after
    return phase


def render_plan_markdown(plan: RolloutPlan) -> str:
    """The whole plan as markdown: one section per flag, with its stage and trigger tables.

    The stage table follows the reference scenario's layout (spec §2): ``Stage | Traffic |
    Duration | Gate window | Go/No-Go``, starting with stage 0, the 0 % baseline. The trigger
    table lists each hard rollback trigger with its rule (:attr:`Trigger.rule`).
    """
    lines = ["# Canary rollout plan", ""]
    lines.append(f"Plan file: `{plan.source}`.")
    lines.append("")
    lines.extend(_preamble(plan))
    for key, flag in plan.flags.items():
        lines.append("")
        lines.extend(_flag_section(plan, key, flag))
    return "\n".join(lines).rstrip("\n") + "\n"


def _preamble(plan: RolloutPlan) -> list[str]:
    tel = plan.telemetry
    if tel.url:
        target = f"`POST {_shown_ingest_url(tel.url)}`"
    elif tel.url_env:
        target = f"`POST {{{tel.url_env}}}/telemetry/ingest` (base URL from `${tel.url_env}`)"
    else:
        target = "nowhere (no telemetry URL configured)"
    out = [
        f"- Flags: {len(plan.flags)} ({', '.join(f'`{k}`' for k in plan.flags)})",
        f"- Rollout events (`canary_rollback`, …): {target}, app `{tel.app}`",
        f"- Reports folder: `{plan.reports.dir}` (`canary_plan.md`, `canary_results.md`, "
        "`canary_abort.md`)",
    ]
    if plan.store:
        out.append(f"- State store: `{_shown_url(plan.store)}`")
    if plan.signals:
        out.append(f"- PromQL overrides for: {', '.join(f'`{s}`' for s in plan.signals)}")
    return out


def _shown_ingest_url(base_url: str) -> str:
    """The ingest endpoint with its credentials and query replaced by ``***``: the rendered
    plan is a report, shared and committed, and must not carry the URL's secrets."""
    try:
        return redact_url(ingest_url(base_url))
    except IngestError:
        return redact_url(base_url.rstrip("/")) + INGEST_PATH


def _shown_url(url: str) -> str:
    """``url`` as written, unless it carries credentials or a query (then redacted)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_url(url)
    return redact_url(url) if "@" in parts.netloc or parts.query else url


def _flag_section(plan: RolloutPlan, key: str, flag: FlagPlan) -> list[str]:
    out = [f"## `{key}`", ""]
    if flag.description:
        out += [flag.description, ""]
    phase = phase_of(plan, key)
    if flag.after:
        out.append(f"- Phase {phase}: starts only after `{flag.after}` has completed")
    else:
        out.append(f"- Phase {phase}: starts first (follows no other flag)")
    if flag.env_override:
        out.append(
            f"- Operator override: environment variable `{flag.env_override}` "
            f"(a percentage from 0 to 100; `{flag.env_override}=0` pins the flag off; a rollback "
            "wins over it)"
        )
    else:
        out.append("- Operator override: none")
    out.append(
        f"- Bucketing: by evaluation-context attribute `{flag.bucket_by}`, "
        f"scheme `{flag.scheme}` (murmur3, flag key as salt; same cohorts as flagd)"
    )
    out.append(f"- Policy tick: every {format_duration(flag.tick_s)}")
    if flag.dry_run:
        out.append("- Dry run: decisions are logged, never applied")
    out += ["", "### Stages", ""]
    out += md_table(
        ("Stage", "Traffic", "Duration", "Gate window", "Go/No-Go"),
        [_BASELINE_ROW, *(_stage_row(flag, i) for i in range(1, len(flag.stages) + 1))],
    )
    out += ["", *_gate_notes(flag)]
    out += ["", "### Hard rollback triggers (any one → immediately 0 %)", ""]
    if flag.triggers:
        out += md_table(
            ("Trigger", "Rule"),
            [(f"`{t.name}`", t.rule + _on_error_note(t.on_error)) for t in flag.triggers],
        )
        out += [
            "",
            f"A signal source failing for {format_duration(flag.source_error_for_s)} counts "
            "as a trigger (the safe side is 0 %) unless the trigger ignores source errors.",
        ]
    else:
        out.append("None: only the stage gates and operators move this flag.")
    out += _guard_section(flag)
    out += [
        "",
        "Rollback: the flag goes to 0 % and stays there until an operator resets it.",
    ]
    return out


def _guard_section(flag: FlagPlan) -> list[str]:
    """The flag's guards (business events from ``track()``), when it has any."""
    if not flag.guards:
        return []
    out = ["", "### Guards (what users do, from OpenFeature `track()`; docs/guards.md)", ""]
    out += md_table(
        ("Guard", "Judged", "Healthy", "A stage goes once it could catch"),
        [
            (
                f"`{g.rule}`",
                g.judged,
                f"canary at most {100 * g.max_drop:.3g} % "
                f"{'below' if g.higher_is_better else 'above'} the baseline",
                f"a {'drop' if g.higher_is_better else 'rise'} of {100 * g.detect_drop:.3g} %",
            )
            for g in flag.guards
        ],
    )
    out += [
        "",
        "Judged like the gates, against the baseline of the same tick, in every stage with a "
        "live baseline; a breach acts with the stage's on_no_go and says `guard_breach`.",
    ]
    return out


def _stage_row(flag: FlagPlan, index: int) -> tuple[str, ...]:
    stage = flag.stage(index)
    duration = format_span(stage.duration_s)
    if index == len(flag.stages):
        duration += " soak"
    return (
        str(index),
        format_percent(stage.percent),
        duration,
        format_span(stage.window_s),
        _gate(stage),
    )


def _gate(stage: Stage) -> str:
    parts: list[str] = []
    if stage.max_p95_ms is not None:
        parts.append(f"P95 ≤ {format_number(stage.max_p95_ms)} ms")
    if stage.max_p99_ms is not None:
        parts.append(f"P99 ≤ {format_number(stage.max_p99_ms)} ms")
    if stage.max_error_rate is not None:
        parts.append(f"5xx ≤ {format_rate(stage.max_error_rate)}")
    return ", ".join(parts) or "canary against baseline only"


def _gate_notes(flag: FlagPlan) -> list[str]:
    """How the gates decide (docs/decisions.md), in two sentences."""
    rules = flag.decisions
    no_go = {s.on_no_go for s in flag.stages}
    action = " or ".join(sorted(no_go))
    lines = [
        "Gates are judged on the evidence each stage accumulates, with sequential tests that "
        "may be read at every tick: a false-rollback budget of "
        f"{format_rate(rules.false_rollback_budget)} per rollout is shared by every line and "
        "canary-against-baseline comparison "
        f"(5xx ratio margin {format_number(rules.error_ratio_margin)}x, latency tail margin "
        f"{format_number(rules.latency_ratio_margin)}x); a breach acts at once ({action}).",
        "A stage goes after its duration once it could have caught, with "
        f"{format_rate(rules.power)} power, a canary with a 5xx share of "
        + (
            format_rate(rules.detect_error_rate)
            if rules.detect_error_rate is not None
            else "5 % (or 3x a higher line)"
        )
        + f" and {format_rate(rules.detect_slow_share)} of requests over a latency line; with "
        "less information it extends, then pauses after its duration again.",
    ]
    if rules.holdback:
        lines.append(
            f"The final stage keeps {format_percent(rules.holdback)} of units on the old path "
            "as a live baseline; completing serves 100 %."
        )
    return lines


def _on_error_note(on_error: str) -> str:
    return " (source errors ignored)" if on_error == "ignore" else ""
