"""Loading and validating a plan from TOML, JSON or plain data."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from openfeature_canary.bucketing import SCHEMES, percent_to_basis_points
from openfeature_canary.errors import PlanError
from openfeature_canary.plan._decisions import DecisionRules, parse_decisions
from openfeature_canary.plan._guards import parse_guards
from openfeature_canary.plan._model import (
    DEFAULT_MIN_EVENTS,
    MIN_PERCENT,
    OPERATORS,
    FlagPlan,
    OnBaselineBreach,
    ReportsConfig,
    RolloutPlan,
    Stage,
    TelemetryConfig,
    Trigger,
    _num,
)
from openfeature_canary.plan._promql import validate_queries
from openfeature_canary.plan._reader import (
    Reader,
    fail_on_repeated_key,
    json_object,
    show,
    show_key,
)
from openfeature_canary.plan._signals import COHORT_SIGNALS, KNOWN_SIGNALS, RATE_SIGNALS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_plan", "parse_plan"]


def load_plan(path: str | Path) -> RolloutPlan:
    """Load and validate a plan from a ``.toml`` or ``.json`` file.

    Raises :class:`PlanError` when the file is missing, unreadable, malformed or invalid; the
    message starts with the file name.
    """
    p = Path(path)
    source = str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise PlanError("plan file not found", source=source) from None
    except OSError as exc:
        raise PlanError(f"cannot read plan file: {exc.strerror}", source=source) from exc
    except ValueError as exc:  # a NUL byte in the path
        raise PlanError(f"cannot read plan file: {exc}", source=repr(source)) from exc
    repeated: list[bool] = []
    try:
        text = raw.decode("utf-8")
        if p.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=lambda pairs: json_object(pairs, repeated))
        else:
            data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise PlanError("not UTF-8 text", source=source) from exc
    except RecursionError:
        raise PlanError("nested too deeply to be a plan", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"malformed TOML: {exc}", source=source) from exc
    except ValueError as exc:  # JSONDecodeError; an integer beyond Python's digits limit
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise PlanError(f"malformed {kind}: {exc}", source=source) from exc
    if repeated:
        fail_on_repeated_key(data, source)
    return parse_plan(data, source=source)


def parse_plan(data: Mapping[str, Any], *, source: str = "<plan>") -> RolloutPlan:
    """Validate a plan given as plain data (what TOML or JSON decode to)."""
    r = Reader(source)
    top = r.table(data, "", {"telemetry", "reports", "flags", "store", "signals", "decisions"})
    flags_data = r.table(top.get("flags"), "flags", None, required=True)
    if not flags_data:
        r.fail("flags", "must define at least one flag")
    rules = parse_decisions(r, top.get("decisions"), "decisions")
    flags = {key: _flag(r, key, value, rules) for key, value in flags_data.items()}
    _check_after(r, flags)
    store = r.opt_str(top, "", "store")
    if store is not None and not store.strip():
        r.fail("store", "must be a store URL such as file:///var/lib/canary/state.json, got ''")
    signals = _signals(r, top.get("signals"))
    return RolloutPlan(
        flags=MappingProxyType(flags),
        telemetry=_telemetry(r, top.get("telemetry")),
        reports=_reports(r, top.get("reports")),
        store=store,
        signals=MappingProxyType(signals),
        source=source,
    )


def _flag(r: Reader, key: str, data: Any, rules: DecisionRules) -> FlagPlan:
    path = f"flags.{show_key(key)}"
    if not key.isprintable():
        r.fail(path, "flag key must be printable text (no control characters)")
    _refuse_replaced(r, data, path)
    t = r.table(
        data,
        path,
        {
            "description",
            "env_override",
            "bucket_by",
            "scheme",
            "tick",
            "after",
            "dry_run",
            "stages",
            "triggers",
            "on_no_go",
            "source_error_for",
            "decisions",
            "guards",
        },
    )
    if not key.strip():
        r.fail(path, "flag key must not be empty")
    defaults = {
        "on_no_go": r.choice(t, path, "on_no_go", ("rollback", "pause"), "rollback"),
    }
    stages_data = r.array(t.get("stages"), f"{path}.stages", required=True)
    if not stages_data:
        r.fail(f"{path}.stages", "must list at least one stage")
    stages: list[Stage] = []
    for i, s in enumerate(stages_data):
        prev = stages[-1].percent if stages else None
        stages.append(_stage(r, f"{path}.stages[{i}]", s, prev, defaults))
    triggers: list[Trigger] = []
    for i, tr in enumerate(r.array(t.get("triggers"), f"{path}.triggers")):
        trigger = _trigger(r, f"{path}.triggers[{i}]", tr)
        if any(x.name == trigger.name for x in triggers):
            r.fail(f"{path}.triggers[{i}].name", f"duplicate trigger name {show(trigger.name)}")
        triggers.append(trigger)
    scheme = r.choice(t, path, "scheme", SCHEMES, "flagd")
    bucket_by = r.opt_str(t, path, "bucket_by")
    if bucket_by is not None and not bucket_by.strip():
        r.fail(f"{path}.bucket_by", "must name the targeting key or a context attribute")
    bucket_by = bucket_by or "targetingKey"
    env = r.opt_str(t, path, "env_override")
    if env is not None and not env.strip():
        r.fail(f"{path}.env_override", "must be a non-empty environment variable name")
    decisions = parse_decisions(r, t.get("decisions"), f"{path}.decisions", rules)
    # Name the table the value came from: the flag's own, or the plan's.
    where = f"{path}.decisions" if "decisions" in t else "decisions"
    _check_decisions(r, where, decisions, stages)
    return FlagPlan(
        key=key,
        stages=tuple(stages),
        triggers=tuple(triggers),
        description=r.opt_str(t, path, "description") or "",
        env_override=env,
        bucket_by=bucket_by,
        scheme=scheme,
        tick_s=r.duration(t, path, "tick", "10s"),
        after=r.opt_str(t, path, "after"),
        dry_run=r.bool_(t, path, "dry_run", False),
        source_error_for_s=r.duration(t, path, "source_error_for", "1m"),
        decisions=decisions,
        guards=parse_guards(r, t.get("guards"), f"{path}.guards"),
    )


def _refuse_replaced(r: Reader, data: Any, path: str) -> None:
    """Name the keys that sequential gates replaced, rather than calling them unknown."""
    if not isinstance(data, Mapping):
        return
    for key in ("min_samples", "max_failed_windows"):
        if key in data:
            r.fail(
                f"{path}.{key}",
                "was replaced by evidence accumulated over the stage: set how much a stage must "
                "be able to detect in a [decisions] table instead (docs/decisions.md)",
            )


def _check_decisions(r: Reader, where: str, rules: DecisionRules, stages: list[Stage]) -> None:
    """A detectable regression must lie beyond every line it is measured against."""
    for i, stage in enumerate(stages):
        line = stage.max_error_rate
        detect = rules.detect_error_rate
        if detect is not None and line is not None and detect <= line:
            r.fail(
                f"{where}.detect_error_rate",
                f"must be above stage {i + 1}'s max_error_rate ({_num(line)}), got {_num(detect)}",
            )
        slowest = 0.05 if stage.max_p95_ms is not None else 0.0
        slowest = 0.01 if stage.max_p99_ms is not None and not slowest else slowest
        if slowest and rules.detect_slow_share <= slowest:
            r.fail(
                f"{where}.detect_slow_share",
                f"must be above the {slowest:.0%} of requests stage {i + 1}'s latency line "
                f"allows, got {_num(rules.detect_slow_share)}",
            )


def _stage(
    r: Reader, path: str, data: Any, prev: float | None, defaults: Mapping[str, Any]
) -> Stage:
    _refuse_replaced(r, data, path)
    t = r.table(
        data,
        path,
        {
            "percent",
            "duration",
            "window",
            "max_p95_ms",
            "max_p99_ms",
            "max_error_rate",
            "on_no_go",
        },
    )
    percent = r.number(t, path, "percent", required=True)
    assert percent is not None
    if not 0 < percent <= 100:
        r.fail(f"{path}.percent", f"must be in (0, 100], got {_num(percent)}")
    if percent < MIN_PERCENT:
        r.fail(
            f"{path}.percent",
            f"must be at least {MIN_PERCENT} (one basis point, the bucketing resolution: a "
            f"smaller share would serve 0 %), got {_num(percent)}",
        )
    if prev is not None and percent <= prev:
        r.fail(f"{path}.percent", f"must be greater than the previous stage ({_num(prev)})")
    if prev is not None and percent_to_basis_points(percent) <= percent_to_basis_points(prev):
        r.fail(
            f"{path}.percent",
            f"must be at least 0.01 greater than the previous stage ({_num(prev)}): traffic is "
            f"split in basis points (0.01 %), so {_num(percent)} would serve the same share",
        )
    duration = r.duration(t, path, "duration", None)
    window = r.duration(t, path, "window", None) if "window" in t else duration
    if window > duration:
        r.fail(f"{path}.window", "must not be longer than the stage's duration")
    max_rate = r.number(t, path, "max_error_rate")
    if max_rate is not None and not 0 <= max_rate <= 1:
        r.fail(f"{path}.max_error_rate", f"must be a rate in [0, 1], got {_num(max_rate)}")
    p95 = r.number(t, path, "max_p95_ms")
    p99 = r.number(t, path, "max_p99_ms")
    for name, v in (("max_p95_ms", p95), ("max_p99_ms", p99)):
        if v is not None and v <= 0:
            r.fail(f"{path}.{name}", f"must be positive, got {_num(v)}")
    return Stage(
        percent=percent,
        duration_s=duration,
        window_s=window,
        max_p95_ms=p95,
        max_p99_ms=p99,
        max_error_rate=max_rate,
        on_no_go=r.choice(t, path, "on_no_go", ("rollback", "pause"), defaults["on_no_go"]),
    )


def _trigger(r: Reader, path: str, data: Any) -> Trigger:
    t = r.table(
        data,
        path,
        {
            "name",
            "signal",
            *OPERATORS,
            "for",
            "window",
            "occurrences",
            "min_samples",
            "min_events",
            "on_error",
            "if_baseline_breaches",
        },
    )
    name = r.opt_str(t, path, "name")
    if not name:
        r.fail(f"{path}.name", "is required")
    signal = r.opt_str(t, path, "signal")
    if not signal:
        r.fail(f"{path}.signal", "is required")
    assert name is not None and signal is not None
    if signal not in KNOWN_SIGNALS:
        r.fail(
            f"{path}.signal",
            f"unknown signal {signal!r} (known: {', '.join(sorted(KNOWN_SIGNALS))})",
        )
    ops = [op for op in OPERATORS if op in t]
    if len(ops) != 1:
        r.fail(path, f"needs exactly one of {', '.join(OPERATORS)} (found {len(ops)})")
    op = ops[0]
    threshold = r.number(t, path, op, required=True)
    assert threshold is not None
    if signal in RATE_SIGNALS and not 0 <= threshold <= 1:
        r.fail(f"{path}.{op}", f"{signal} is a rate: must be in [0, 1], got {_num(threshold)}")
    occurrences = r.int_(t, path, "occurrences", 1, minimum=1)
    for_s = r.duration(t, path, "for", None) if "for" in t else None
    if for_s is not None and occurrences > 1:
        r.fail(path, "use either 'for' (sustained) or 'occurrences' (Nth breach), not both")
    return Trigger(
        name=name,
        signal=signal,
        op=op,
        threshold=threshold,
        window_s=r.duration(t, path, "window", "1m"),
        for_s=for_s,
        occurrences=occurrences,
        min_samples=r.int_(t, path, "min_samples", 1, minimum=1),
        on_error=r.choice(t, path, "on_error", ("rollback", "ignore"), "rollback"),
        if_baseline_breaches=_baseline_option(r, t, path, signal),
        min_events=_min_events(r, t, path, signal),
    )


def _min_events(r: Reader, t: Mapping[str, Any], path: str, signal: str) -> int:
    if "min_events" in t and signal not in RATE_SIGNALS:
        r.fail(
            f"{path}.min_events",
            f"counts the events behind a rate; {signal} is not one "
            f"({', '.join(sorted(RATE_SIGNALS))} are)",
        )
    return r.int_(t, path, "min_events", DEFAULT_MIN_EVENTS, minimum=1)


def _baseline_option(r: Reader, t: Mapping[str, Any], path: str, signal: str) -> OnBaselineBreach:
    option: OnBaselineBreach = r.choice(
        t, path, "if_baseline_breaches", ("rollback", "pause"), "rollback"
    )
    if option == "pause" and signal not in COHORT_SIGNALS:
        r.fail(
            f"{path}.if_baseline_breaches",
            f"{signal} has no baseline cohort to compare with (only "
            f"{', '.join(COHORT_SIGNALS)} do)",
        )
    return option


def _telemetry(r: Reader, data: Any) -> TelemetryConfig:
    if data is None:
        return TelemetryConfig()
    t = r.table(data, "telemetry", {"url", "url_env", "app", "timeout"})
    url, url_env = r.opt_str(t, "telemetry", "url"), r.opt_str(t, "telemetry", "url_env")
    if url and url_env:
        r.fail("telemetry", "give either url or url_env, not both")
    if url is not None and not url.startswith(("http://", "https://")):
        r.fail("telemetry.url", f"must start with http:// or https://, got {show(url)}")
    return TelemetryConfig(
        app=r.opt_str(t, "telemetry", "app") or "openfeature_canary",
        url=url,
        url_env=url_env,
        timeout_s=r.duration(t, "telemetry", "timeout", "5s"),
    )


def _reports(r: Reader, data: Any) -> ReportsConfig:
    if data is None:
        return ReportsConfig()
    t = r.table(data, "reports", {"dir"})
    return ReportsConfig(dir=r.opt_str(t, "reports", "dir") or "canary-reports")


def _signals(r: Reader, data: Any) -> dict[str, str]:
    if data is None:
        return {}
    t = r.table(data, "signals", None)
    out: dict[str, str] = {}
    for name, query in t.items():
        if name not in KNOWN_SIGNALS:
            r.fail(f"signals.{show_key(name)}", "unknown signal")
        if not isinstance(query, str) or not query.strip():
            r.fail(f"signals.{name}", "must be a non-empty PromQL string")
        out[name] = query
    try:
        validate_queries(out)  # placeholders, quoting: what the Prometheus source needs
    except PlanError as exc:
        r.fail(exc.path or "signals", exc.rule)
    return out


def _check_after(r: Reader, flags: Mapping[str, FlagPlan]) -> None:
    # Every name first: the cycle walk below may then follow any chain without a KeyError.
    for key, flag in flags.items():
        if flag.after is not None and flag.after not in flags:
            r.fail(f"flags.{show_key(key)}.after", f"names an unknown flag {show(flag.after)}")
    for key, flag in flags.items():
        if flag.after is None:
            continue
        seen: list[str] = [key]
        cur: str | None = flag.after
        while cur is not None:
            if cur in seen:
                cycle = " -> ".join([*seen, cur])
                r.fail(f"flags.{show_key(key)}.after", f"forms a cycle ({cycle})")
            seen.append(cur)
            cur = flags[cur].after
