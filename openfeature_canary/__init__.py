"""openfeature-canary: progressive canary rollouts as an OpenFeature provider plugin.

The engine, by concept (each a subpackage or module):

- ``plan``, ``state``, ``bucketing``, ``clock``, ``errors``: the values and pure helpers;
- ``policy``: pure decisions, the controllers and the one transition pipeline, what a flag
  serves;
- ``signals``: what the policy reads (in-process OpenTelemetry snapshots, histogram math);
- ``events``: what a transition tells the telemetry ingest (durable outbox) and the reports;
- ``stores``: where rollout states live (``memory://``, ``file://``, ``redis://``);
- ``telemetry`` / ``instrumentation``: OpenTelemetry setup and what the application records;
- ``cli``, ``demo``: the command line and the virtual-time demo.

This module exports what the README and the docs have a user touch: loading a plan, the
telemetry set-up and what the service records (:class:`CanaryMiddleware`,
:func:`record_request`, :func:`shadow_compare`, :class:`EventLoopLagMonitor`), the stores and
signal sources one passes to the provider, the values a status or a test reads, and every error.
The engine's parts (``Pipeline``, ``ALLOWED`` …) stay in their subpackages.

The OpenFeature faces live in ``openfeature.contrib.provider.canary`` (``CanaryProvider``) and
``openfeature.contrib.hook.canary`` (``MetricsHook``, ``PolicyHook``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openfeature_canary.bucketing import bucket, in_rollout
from openfeature_canary.clock import Clock, ManualClock, SystemClock
from openfeature_canary.errors import (
    CanaryError,
    IngestError,
    OutboxError,
    PlanError,
    ReportError,
    SignalSourceError,
    StaleStateError,
    StateStoreError,
    TransitionError,
    UnitEncodingError,
    UnknownFlagError,
    UsageError,
)
from openfeature_canary.events import EventSink, ReportSink
from openfeature_canary.events._logging import JsonLogFormatter, configure_logging
from openfeature_canary.evidence import StageEvidence, Tally
from openfeature_canary.instrumentation import (
    CanaryMiddleware,
    EventLoopLagMonitor,
    record_request,
    shadow_compare,
)
from openfeature_canary.plan import (
    DecisionRules,
    FlagPlan,
    RolloutPlan,
    Stage,
    Trigger,
    load_plan,
    parse_plan,
)
from openfeature_canary.policy import (
    Autopilot,
    BackgroundRunner,
    Controller,
    FlagView,
    Policy,
    Rollout,
)
from openfeature_canary.signals import (
    FleetSignalSource,
    InProcessSignalSource,
    PrometheusNames,
    PrometheusSignalSource,
    SignalReading,
    SignalSource,
)
from openfeature_canary.state import LogEntry, RolloutState, Status
from openfeature_canary.stores import (
    FileStateStore,
    FleetStore,
    MemoryStateStore,
    StateStore,
    open_store,
)
from openfeature_canary.telemetry import Telemetry, setup_telemetry

if TYPE_CHECKING:
    from openfeature_canary.stores import RedisStateStore

__all__ = [
    "Autopilot",
    "BackgroundRunner",
    "CanaryError",
    "CanaryMiddleware",
    "Clock",
    "Controller",
    "DecisionRules",
    "EventLoopLagMonitor",
    "EventSink",
    "FileStateStore",
    "FlagPlan",
    "FlagView",
    "FleetSignalSource",
    "FleetStore",
    "InProcessSignalSource",
    "IngestError",
    "JsonLogFormatter",
    "LogEntry",
    "ManualClock",
    "MemoryStateStore",
    "OutboxError",
    "PlanError",
    "Policy",
    "PrometheusNames",
    "PrometheusSignalSource",
    "RedisStateStore",
    "ReportError",
    "ReportSink",
    "Rollout",
    "RolloutPlan",
    "RolloutState",
    "SignalReading",
    "SignalSource",
    "SignalSourceError",
    "Stage",
    "StageEvidence",
    "StaleStateError",
    "StateStore",
    "StateStoreError",
    "Status",
    "SystemClock",
    "Tally",
    "Telemetry",
    "TransitionError",
    "Trigger",
    "UnitEncodingError",
    "UnknownFlagError",
    "UsageError",
    "bucket",
    "configure_logging",
    "in_rollout",
    "load_plan",
    "open_store",
    "parse_plan",
    "record_request",
    "setup_telemetry",
    "shadow_compare",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``RedisStateStore`` on first use (PEP 562), as ``openfeature_canary.stores`` gives it:
    the ``[redis]`` extra's store module is not loaded by ``import openfeature_canary``."""
    if name == "RedisStateStore":
        from openfeature_canary import stores

        return stores.RedisStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
