"""The Prometheus signal source, for a fleet whose processes Prometheus scrapes.

- ``_source.py``: :class:`PrometheusSignalSource`, the built-in signals read as instant queries;
- ``_queries.py``: :class:`PrometheusNames` (what ``/metrics`` calls our instruments) and
  :func:`default_queries`, the PromQL every signal runs unless the plan's ``[signals]`` table
  overrides it (the template grammar is the plan's: ``plan/_promql.py``);
- ``_client.py``: Prometheus' HTTP API, each query under one total deadline.

``docs/signals.md`` ("Prometheus source") has the rules.
"""

from __future__ import annotations

from openfeature_canary.signals.prometheus._queries import PrometheusNames, default_queries
from openfeature_canary.signals.prometheus._source import (
    DEFAULT_PROMETHEUS_TIMEOUT_S,
    PrometheusSignalSource,
)

__all__ = [
    "DEFAULT_PROMETHEUS_TIMEOUT_S",
    "PrometheusNames",
    "PrometheusSignalSource",
    "default_queries",
]
