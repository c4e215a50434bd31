"""openfeature-canary: progressive canary rollouts as an OpenFeature provider plugin.

The engine, by concept (each a subpackage or module):

- ``plan``, ``state``, ``bucketing``, ``clock``, ``errors``: the values and pure helpers;
- ``policy``: pure decisions, the controllers and the one transition pipeline, what a flag
  serves;
- ``signals``: what the policy reads (in-process OpenTelemetry snapshots, histogram math);
- ``events``: what a transition tells the telemetry ingest (durable outbox) and the reports;
- ``stores``: where rollout states live (``memory://``, ``file://``);
- ``telemetry`` / ``instrumentation``: OpenTelemetry setup and what the application records;
- ``cli``, ``demo``: the command line and the virtual-time demo.

The OpenFeature faces live in ``openfeature.contrib.provider.canary`` (``CanaryProvider``) and
``openfeature.contrib.hook.canary`` (``MetricsHook``, ``PolicyHook``).
"""

from __future__ import annotations

from openfeature_canary.bucketing import UnitEncodingError, bucket, in_rollout
from openfeature_canary.clock import Clock, ManualClock, SystemClock
from openfeature_canary.errors import (
    CanaryError,
    PlanError,
    SignalSourceError,
    StaleStateError,
    StateStoreError,
    TransitionError,
    UnknownFlagError,
)
from openfeature_canary.events import EventSink, ReportSink
from openfeature_canary.evidence import StageEvidence, Tally
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
    ALLOWED,
    Autopilot,
    BackgroundRunner,
    Controller,
    FlagView,
    Pipeline,
    Policy,
    Rollout,
)
from openfeature_canary.signals import InProcessSignalSource, SignalReading, SignalSource
from openfeature_canary.state import LogEntry, RolloutState, Status
from openfeature_canary.stores import FileStateStore, MemoryStateStore, StateStore, open_store
from openfeature_canary.telemetry import Telemetry, setup_telemetry

__all__ = [
    "ALLOWED",
    "Autopilot",
    "BackgroundRunner",
    "CanaryError",
    "Clock",
    "Controller",
    "DecisionRules",
    "EventSink",
    "FileStateStore",
    "FlagPlan",
    "FlagView",
    "InProcessSignalSource",
    "LogEntry",
    "ManualClock",
    "MemoryStateStore",
    "Pipeline",
    "PlanError",
    "Policy",
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
    "bucket",
    "in_rollout",
    "load_plan",
    "open_store",
    "parse_plan",
    "setup_telemetry",
]

__version__ = "0.1.0"
