"""The queries the Prometheus source runs: defaults generated from our instrument names.

:class:`PrometheusNames` holds the names ``/metrics`` exposes for our instruments
(docs/metrics.md); :func:`default_queries` the PromQL template of every signal built from them;
:class:`QueryBook` every query of a source, a plan's ``[signals]`` overrides applied. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from openfeature_canary.plan._promql import Template, compile_template
from openfeature_canary.plan._signals import (
    BASELINE,
    BASELINE_PREFIX,
    CANARY,
    KNOWN_SIGNALS,
    QUANTILES,
    split_signal,
)

__all__ = ["TRACKING_METRICS", "PrometheusNames", "QueryBook", "SignalQueries", "default_queries"]

#: The :class:`PrometheusNames` fields of the four tracking counters, in ``Tracked`` order
#: (count, valued, total, squares).
TRACKING_METRICS: Final = (
    "tracking_events",
    "tracking_valued",
    "tracking_value",
    "tracking_value_squares",
)

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class PrometheusNames:
    """The Prometheus names the default queries use: what ``/metrics`` exposes for our
    instruments (docs/metrics.md), and extra label matchers for every selector.

    ``matchers`` narrows every default query to one service when several share a Prometheus,
    e.g. ``'job="dataservice"'`` (the process-wide signals have no flag label, so without it
    ``telemetry_acceptance`` and ``event_loop_lag_ms`` sum over every job that exports them).

    >>> PrometheusNames(matchers='job="dataservice"').matchers
    'job="dataservice"'
    """

    request_duration: str = "http_server_request_duration_seconds"
    event_loop_lag: str = "canary_event_loop_lag_seconds"
    ledger_mismatches: str = "canary_ledger_mismatches_total"
    telemetry_sent: str = "canary_telemetry_sent_total"
    telemetry_accepted: str = "canary_telemetry_accepted_total"
    tracking_events: str = "feature_flag_tracking_events_total"
    tracking_valued: str = "feature_flag_tracking_valued_total"
    tracking_value: str = "feature_flag_tracking_value_total"
    tracking_value_squares: str = "feature_flag_tracking_value_squares_total"
    flag_label: str = "feature_flag_key"
    variant_label: str = "feature_flag_result_variant"
    status_label: str = "http_response_status_code"
    event_label: str = "feature_flag_tracking_event"
    matchers: str = ""

    def __post_init__(self) -> None:
        for name in ("request_duration", "event_loop_lag", "ledger_mismatches"):
            _check_name(name, getattr(self, name), _METRIC_NAME)
        for name in ("telemetry_sent", "telemetry_accepted", *TRACKING_METRICS):
            _check_name(name, getattr(self, name), _METRIC_NAME)
        for name in ("flag_label", "variant_label", "status_label", "event_label"):
            _check_name(name, getattr(self, name), _LABEL_NAME)
        if "{" in self.matchers or "}" in self.matchers:
            raise ValueError(
                f"PrometheusNames.matchers: give label matchers without braces, got "
                f"{self.matchers!r} (e.g. 'job=\"dataservice\"')"
            )


def _check_name(field_name: str, value: str, pattern: re.Pattern[str]) -> None:
    if not pattern.fullmatch(value):
        raise ValueError(f"PrometheusNames.{field_name}: {value!r} is not a valid Prometheus name")


# ------------------------------------------------------------------------------ defaults


def _selector(metric: str, *matchers: str) -> str:
    inner = ", ".join(m for m in matchers if m)
    return f"{metric}{{{inner}}}" if inner else metric


def _increase(selector: str) -> str:
    return f"increase({selector}[{{window}}])"


def _delta(selector: str) -> str:
    """Per series, the growth of a cumulative value between the last scrapes at or before the
    window's edges; a series that restarted (or appeared) inside counts its value since then."""
    return f"(({selector} - {selector} offset {{window}}) >= 0 or {selector})"


@dataclass(frozen=True)
class _Defaults:
    """The default templates (texts) for one :class:`PrometheusNames`."""

    signals: Mapping[str, str]
    lag_count: str
    sent: str
    latency_buckets: str
    lag_buckets: str
    counts_buckets: str
    counts_errors: str
    tracked: tuple[str, ...]


def _defaults(names: PrometheusNames) -> _Defaults:
    extra = names.matchers
    cohort = (
        f'{names.flag_label}="{{flag}}"',
        f'{names.variant_label}="{{variant}}"',
        extra,
    )
    five = f'{names.status_label}=~"5.."'
    duration = names.request_duration
    count = _selector(f"{duration}_count", *cohort)
    buckets = f"sum by (le) ({_increase(_selector(f'{duration}_bucket', *cohort))})"
    lag_buckets = f"sum by (le) ({_increase(_selector(f'{names.event_loop_lag}_bucket', extra))})"
    sent = f"sum({_increase(_selector(names.telemetry_sent, extra))})"
    accepted = f"sum({_increase(_selector(names.telemetry_accepted, extra))})"
    signals = {
        "requests": f"sum({_increase(count)})",
        **{name: f"histogram_quantile({q}, {buckets}) * 1000" for name, q in QUANTILES.items()},
        "error_rate": (
            f"(sum({_increase(_selector(f'{duration}_count', *cohort, five))}) or vector(0))"
            f" / sum({_increase(count)})"
        ),
        "ledger_mismatches": (
            f"sum({_increase(_selector(names.ledger_mismatches, cohort[0], extra))})"
        ),
        "telemetry_acceptance": f"({accepted} or vector(0)) / {sent}",
        "event_loop_lag_ms": f"histogram_quantile(1, {lag_buckets}) * 1000",
    }
    both = (f'{names.flag_label}="{{flag}}"', f'{names.variant_label}=~"on|off"', extra)
    by = f"le, {names.variant_label}"
    return _Defaults(
        signals=MappingProxyType(signals),
        lag_count=f"sum({_increase(_selector(f'{names.event_loop_lag}_count', extra))})",
        sent=sent,
        latency_buckets=buckets,
        lag_buckets=lag_buckets,
        counts_buckets=f"sum by ({by}) ({_delta(_selector(f'{duration}_bucket', *both))})",
        counts_errors=(
            f"sum by ({names.variant_label}) "
            f"({_delta(_selector(f'{duration}_count', *both, five))})"
        ),
        tracked=tuple(
            f"sum by ({names.variant_label}, {names.event_label}) "
            f"({_delta(_selector(getattr(names, field), *both))})"
            for field in TRACKING_METRICS
        ),
    )


def default_queries(names: PrometheusNames | None = None) -> Mapping[str, str]:
    """The PromQL templates the Prometheus source uses for each signal by default.

    One per base signal (the ``baseline_`` twins use the same template with ``variant="off"``),
    generated from ``names`` (our instruments' names in ``/metrics`` by default): latency
    quantiles are ``histogram_quantile(q, sum by (le) (increase(…_bucket{…}[{window}]))) *
    1000``, ``error_rate`` the 5xx share of ``…_count``, counts are ``sum(increase(…))``. A
    starting point for a ``[signals]`` table.

    >>> default_queries()["requests"]
    'sum(increase(http_server_request_duration_seconds_count{feature_flag_key="{flag}", \
feature_flag_result_variant="{variant}"}[{window}]))'
    """
    return _defaults(names or PrometheusNames()).signals


@dataclass(frozen=True)
class SignalQueries:
    """The PromQL of one read: the value, and the count behind it (``n``).

    ``count`` is ``None`` when the value is itself a count (``requests``,
    ``ledger_mismatches``); ``ms`` marks a value in milliseconds.
    """

    signal: str
    value: str
    count: str | None
    ms: bool


class QueryBook:
    """Every query the Prometheus source runs, from names and a validated ``[signals]`` table.

    For a cohort signal, ``n`` is the cohort's ``requests`` query (an override of
    ``requests`` changes it for every cohort signal); for ``event_loop_lag_ms`` and
    ``telemetry_acceptance`` it is the default count of lag samples and of events sent.
    """

    def __init__(self, names: PrometheusNames, overrides: Mapping[str, str]) -> None:
        defaults = _defaults(names)
        self.names = names
        self._templates: dict[str, Template] = {}
        for signal in sorted(KNOWN_SIGNALS):
            variant, base = split_signal(signal)
            text = overrides.get(signal)
            if text is None and variant == BASELINE:
                text = overrides.get(base)
            self._templates[signal] = compile_template(signal, text or defaults.signals[base])
        self._lag_count = compile_template("event_loop_lag_ms", defaults.lag_count)
        self._sent = compile_template("telemetry_acceptance", defaults.sent)
        self._latency_buckets = compile_template("latency_p95_ms", defaults.latency_buckets)
        self._lag_buckets = compile_template("event_loop_lag_ms", defaults.lag_buckets)
        self._counts_buckets = compile_template("requests", defaults.counts_buckets)
        self._counts_errors = compile_template("error_rate", defaults.counts_errors)
        self._tracked = tuple(compile_template("requests", text) for text in defaults.tracked)

    def templates(self) -> Mapping[str, str]:
        """The value template in effect for every signal (defaults and overrides)."""
        return MappingProxyType({s: t.text for s, t in self._templates.items()})

    def signal(self, flag: str, signal: str, window: str) -> SignalQueries:
        """The value and count queries of ``signal`` for ``flag`` over ``window``."""
        variant, base = split_signal(signal)
        values = {"flag": flag, "variant": variant, "window": window}
        count: Template | None
        if base in ("requests", "ledger_mismatches"):
            count = None
        elif base == "event_loop_lag_ms":
            count = self._lag_count
        elif base == "telemetry_acceptance":
            count = self._sent
        else:
            requests = "requests" if variant == CANARY else f"{BASELINE_PREFIX}requests"
            count = self._templates[requests]
        return SignalQueries(
            signal,
            self._templates[signal].render(**values),
            None if count is None else count.render(**values),
            signal.endswith("_ms"),
        )

    def buckets(self, flag: str, signal: str, window: str) -> str:
        """``sum by (le)`` of a histogram signal's bucket increases (``count_beyond``)."""
        variant, base = split_signal(signal)
        template = self._lag_buckets if base == "event_loop_lag_ms" else self._latency_buckets
        return template.render(flag=flag, variant=variant, window=window)

    def counts(self, flag: str, window: str) -> tuple[str, str]:
        """Bucket growth by ``(le, variant)`` and 5xx growth by variant (``counts_between``)."""
        return (
            self._counts_buckets.render(flag=flag, window=window),
            self._counts_errors.render(flag=flag, window=window),
        )

    def tracked(self, flag: str, window: str) -> tuple[str, ...]:
        """Growth of each tracking counter by ``(variant, event)``, in ``Tracked`` order
        (``counts_between``'s tracked events)."""
        return tuple(t.render(flag=flag, window=window) for t in self._tracked)
