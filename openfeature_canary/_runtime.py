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

from openfeature_canary._autopilot import Autopilot, SignalReader
from openfeature_canary._controller import Rollout
from openfeature_canary._effects import Effects, EventSink
from openfeature_canary._ingest import IngestClient, TelemetrySender, redact_url
from openfeature_canary._outbox import Outbox
from openfeature_canary._render import render_plan_markdown
from openfeature_canary._reports import ReportWriter
from openfeature_canary._rollout_metrics import RolloutMetrics
from openfeature_canary._store import FileStateStore

__all__ = ["Runtime", "build_runtime", "outbox_path_for"]

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


def build_runtime(
    rollout: Rollout,
    signals: SignalReader,
    *,
    meter_provider: MeterProvider | None = None,
    environ: Mapping[str, str],
    events: EventSink | None = None,
    reports_dir: str | Path | None = None,
    transport: Any = None,
) -> Runtime:
    """Wire an :class:`Autopilot` for ``rollout`` with the plan's telemetry and reports.

    Unless ``events`` is given, telemetry events go through a durable outbox to
    ``POST {url}/telemetry/ingest`` (the plan's ``url`` or ``url_env`` read from ``environ``);
    without a URL they wait in the outbox. ``canary_plan.md`` is written at once.
    """
    plan = rollout.plan
    folder = Path(reports_dir or plan.reports.dir)
    reports = ReportWriter(folder)
    reports.write_plan(render_plan_markdown(plan))
    sender: TelemetrySender | None = None
    if events is None:
        url = plan.telemetry.resolve_url(environ)
        client = (
            IngestClient(
                url, app=plan.telemetry.app, timeout_s=plan.telemetry.timeout_s, transport=transport
            )
            if url
            else None
        )
        if url:
            log.info("telemetry events go to %s/telemetry/ingest", redact_url(url))
        sender = TelemetrySender(
            Outbox(outbox_path_for(rollout, folder)), client, counters=_counters(meter_provider)
        )
        events = sender
    effects = Effects(events=events, reports=reports)
    rollout.add_listener(effects)
    autopilot = Autopilot(rollout, signals, effects=effects)
    metrics = RolloutMetrics(rollout, autopilot, meter_provider)
    return Runtime(autopilot, reports, sender, metrics)


def _counters(meter_provider: MeterProvider | None) -> Any:
    from openfeature_canary.instrumentation import IngestInstruments

    return IngestInstruments(meter_provider=meter_provider)
