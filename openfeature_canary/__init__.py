"""openfeature-canary: progressive canary rollouts as an OpenFeature provider plugin.

The engine: bucketing, plan, state stores, controller, policy, signals and reports. The
OpenFeature faces live in ``openfeature.contrib.provider.canary`` (``CanaryProvider``) and
``openfeature.contrib.hook.canary`` (``MetricsHook``, ``PolicyHook``).
"""

from __future__ import annotations

from openfeature_canary._controller import ALLOWED, Controller, Rollout
from openfeature_canary._errors import (
    CanaryError,
    PlanError,
    SignalSourceError,
    StaleStateError,
    StateStoreError,
    TransitionError,
    UnknownFlagError,
)
from openfeature_canary._state import LogEntry, RolloutState, Status
from openfeature_canary._store import FileStateStore, MemoryStateStore, StateStore, open_store
from openfeature_canary.bucketing import bucket, in_rollout
from openfeature_canary.clock import Clock, ManualClock, SystemClock
from openfeature_canary.plan import FlagPlan, RolloutPlan, Stage, Trigger, load_plan, parse_plan
from openfeature_canary.signals import InProcessSignalSource, SignalReading, SignalSource
from openfeature_canary.telemetry import Telemetry, setup_telemetry

__all__ = [
    "ALLOWED",
    "CanaryError",
    "Clock",
    "Controller",
    "FileStateStore",
    "FlagPlan",
    "InProcessSignalSource",
    "LogEntry",
    "ManualClock",
    "MemoryStateStore",
    "PlanError",
    "Rollout",
    "RolloutPlan",
    "RolloutState",
    "SignalReading",
    "SignalSource",
    "SignalSourceError",
    "Stage",
    "StaleStateError",
    "StateStore",
    "StateStoreError",
    "Status",
    "SystemClock",
    "Telemetry",
    "TransitionError",
    "Trigger",
    "UnknownFlagError",
    "bucket",
    "in_rollout",
    "load_plan",
    "open_store",
    "parse_plan",
    "setup_telemetry",
]

__version__ = "0.1.0"
