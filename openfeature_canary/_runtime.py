"""Assembles the automatic part of a rollout: autopilot, telemetry sender, reports, metrics.

The provider, the demo and the fleet controller all build the same thing from a plan; this
module is where that happens once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.metrics import MeterProvider

from openfeature_canary._autopilot import Autopilot
from openfeature_canary._controller import Rollout
from openfeature_canary._effects import Effects, EventSink
from openfeature_canary._ingest import IngestClient, IngestError
from openfeature_canary._outbox import Outbox
from openfeature_canary._render import render_plan_markdown
from openfeature_canary._reports import ReportWriter
from openfeature_canary._rollout_metrics import RolloutMetrics
from openfeature_canary._sender import TelemetrySender
from openfeature_canary._store import FileStateStore
from openfeature_canary.signals import SignalSource

__all__ = ["Runtime", "build_effects", "build_runtime", "outbox_path_for"]

log = logging.getLogger("openfeature_canary")


@dataclass
class Runtime:
    """The running automatic parts of one rollout; ``start``/``stop`` the sender thread."""

    autopilot: Autopilot
    reports: ReportWriter
    sender: TelemetrySender | None
    metrics: RolloutMetrics

    def start(self) -> None:
        """Start background delivery of telemetry events."""
        if self.sender is not None:
            self.sender.start()

    def stop(self) -> None:
        """Stop background delivery (pending events stay in the outbox for next time)."""
        if self.sender is not None:
            self.sender.stop()


def outbox_path_for(rollout: Rollout, reports_dir: Path) -> Path:
    """Next to the state file for a ``file://`` store, else in the reports folder."""
    store = rollout.store
    if isinstance(store, FileStateStore):
        return store.path.with_name(store.path.name + ".outbox.jsonl")
    return reports_dir / "telemetry-outbox.jsonl"


def build_effects(
    rollout: Rollout,
    *,
    environ: Mapping[str, str],
    meter_provider: MeterProvider | None = None,
    events: EventSink | None = None,
    reports_dir: str | Path | None = None,
    transport: Any = None,
) -> tuple[Effects, ReportWriter, TelemetrySender | None]:
    """Register the transition effects (telemetry event, reports) on ``rollout``.

    Unless ``events`` is given, telemetry events go through a durable outbox to
    ``POST {url}/telemetry/ingest`` (the plan's ``url`` or ``url_env`` read from ``environ``);
    without a URL they wait in the outbox. The returned sender is not started.
    """
    plan = rollout.plan
    folder = Path(reports_dir or plan.reports.dir)
    reports = ReportWriter(folder)
    sender: TelemetrySender | None = None
    if events is None:
        url = plan.telemetry.resolve_url(environ)
        client = _client(url, plan.telemetry.app, plan.telemetry.timeout_s, transport)
        sender = TelemetrySender(
            Outbox(outbox_path_for(rollout, folder)), client, counters=_counters(meter_provider)
        )
        events = sender
    effects = Effects(events=events, reports=reports)
    rollout.add_listener(effects, local_only=True)
    return effects, reports, sender


def build_runtime(
    rollout: Rollout,
    signals: SignalSource,
    *,
    meter_provider: MeterProvider | None = None,
    environ: Mapping[str, str],
    events: EventSink | None = None,
    reports_dir: str | Path | None = None,
    transport: Any = None,
) -> Runtime:
    """Wire an :class:`Autopilot` for ``rollout`` with the plan's telemetry and reports
    (see :func:`build_effects`) and the controller's metrics; ``canary_plan.md`` is written."""
    effects, reports, sender = build_effects(
        rollout,
        environ=environ,
        meter_provider=meter_provider,
        events=events,
        reports_dir=reports_dir,
        transport=transport,
    )
    reports.write_plan(render_plan_markdown(rollout.plan))
    autopilot = Autopilot(rollout, signals, effects=effects)
    metrics = RolloutMetrics(rollout, autopilot, meter_provider)
    return Runtime(autopilot, reports, sender, metrics)


def _client(url: str | None, app: str, timeout_s: float, transport: Any) -> IngestClient | None:
    """The ingest client, or ``None`` (events wait in the outbox) when the URL is unusable.

    A bad URL must not stop a service from serving its flags: it is logged loudly, and the
    events are kept until the URL is fixed and the process restarted.
    """
    if not url:
        return None
    try:
        client = IngestClient(url, app=app, timeout_s=timeout_s, transport=transport)
    except IngestError as exc:
        log.error("telemetry ingest disabled, events stay in the outbox: %s", exc)
        return None
    log.info("telemetry events go to %s", client.display_url)
    return client


def _counters(meter_provider: MeterProvider | None) -> Any:
    from openfeature_canary.instrumentation import IngestInstruments

    return IngestInstruments(meter_provider=meter_provider)
